"""The projector process under crashes: SIGKILL mid-batch, again and again, then a restart, loses
and duplicates nothing, and the read models equal a clean rebuild; SIGTERM shuts down gracefully.

These tests run the real `studbook-server projector` command as a subprocess against the real
Kafka and PostgreSQL, and kill it with signals: the effectively-once guarantee (events, read-model
changes and consumer offsets in one PostgreSQL transaction) is only proven when the process dies
at an arbitrary instant, not when a coroutine is cancelled politely.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
from aiokafka import AIOKafkaProducer

from studbook_server.adapters import postgres
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import at, dump_read_models, ev, migrated, produce, wait_consumed

Factory = Callable[..., Coroutine[Any, Any, str]]

MODEL = "churn-clf"
METRIC_KEYS = ("train/loss", "val/accuracy")

# ------------------------------------------------------------------------------ the stream


@dataclass
class Stream:
    """Builds a realistic event stream and remembers what it produced, to check against."""

    rng: random.Random
    events: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    points: Counter[tuple[str, str]] = field(default_factory=Counter)  # (run id, key) -> points
    steps: dict[str, int] = field(default_factory=dict)  # run id -> next step
    model_versions: int = 0
    day: float = 0.0

    @property
    def total_points(self) -> int:
        return sum(self.points.values())

    def _tick(self) -> str:
        self.day += 0.01
        return at(self.day)

    def _metrics(self, run_id: str) -> dict[str, Any]:
        """One `run.metrics.logged` with 50-200 points; (run, key, step) never repeats."""
        n = self.rng.randint(50, 200)
        base = self.steps.get(run_id, 0)
        metrics: list[dict[str, Any]] = []
        for i in range(n):
            key = METRIC_KEYS[i % 2]
            point: dict[str, Any] = {"key": key, "value": self.rng.random(), "step": base + i // 2}
            if key == "val/accuracy" and i % 4 == 1:
                point["timestamp"] = at(self.day, hours=i / 1000)
            metrics.append(point)
            self.points[(run_id, key)] += 1
        self.steps[run_id] = base + (n + 1) // 2
        return ev("run.metrics.logged", f"run:{run_id}", {"metrics": metrics}, when=self._tick())

    def _run(self, metric_events: int) -> list[dict[str, Any]]:
        run_id = str(uuid.uuid4())
        self.runs.append(run_id)
        subject = f"run:{run_id}"
        out = [
            ev("run.started", subject,
               {"name": f"trial-{len(self.runs)}", "experiment": "sweep",
                "code": {"git_repo": "git@x:churn.git", "git_commit": f"{self.rng.getrandbits(40):010x}"},
                "environment": {"python_version": "3.11.7", "host": f"gpu-{self.rng.randint(1, 8)}"}},
               when=self._tick()),
            ev("run.params.logged", subject,
               {"params": {"lr": self.rng.choice([0.3, 0.1, 0.03]), "depth": self.rng.randint(2, 12)}},
               when=self._tick()),
            ev("run.tags.set", subject, {"tags": {"team": "growth", "seed": str(self.rng.randint(0, 99))}},
               when=self._tick()),
        ]  # fmt: skip
        out += [self._metrics(run_id) for _ in range(metric_events)]
        if self.rng.random() < 0.2:
            finished = {"status": "failed", "error": {"type": "ValueError", "message": "bad shape"}}
        else:
            finished = {"status": "completed"}
        out.append(ev("run.finished", subject, finished, when=self._tick()))
        return out

    def _model(self, new_runs: list[str]) -> list[dict[str, Any]]:
        """Versions trained by some of the new runs, reviews, alias moves, deployments."""
        subject = f"model:{MODEL}"
        out: list[dict[str, Any]] = []
        if self.model_versions == 0:
            out.append(ev("model.created", subject, {"name": MODEL}, when=self._tick()))
        for run_id in new_runs[:: max(1, len(new_runs) // 4)]:
            out.append(
                ev("model.version.registered", subject,
                   {"run": run_id, "artifact_uri": f"s3://m/{run_id}.pkl", "framework": "xgboost"},
                   when=self._tick())
            )  # fmt: skip
            self.model_versions += 1
            v = self.model_versions
            decision = "model.version.approved" if v % 3 else "model.version.rejected"
            out.append(ev(decision, subject, {"version": v}, when=self._tick(), actor="bob"))
            out.append(
                ev("model.alias.set", subject, {"alias": "staging", "version": v},
                   when=self._tick())
            )  # fmt: skip
            if v % 3:
                past = at(self.day - 0.005)  # recorded late: corrects a stretch of the past
                out.append(
                    ev("model.alias.set", subject, {"alias": "production", "version": v},
                       when=self._tick()),
                )  # fmt: skip
                out.append(
                    ev("model.alias.set", subject, {"alias": "champion", "version": v}, when=past)
                )
                out.append(
                    ev("model.version.deployed", subject,
                       {"version": v, "environment": "prod", "target": "k8s/churn"},
                       when=self._tick())
                )  # fmt: skip
        out.append(ev("model.alias.removed", subject, {"alias": "staging"}, when=self._tick()))
        if new_runs:
            out.append(
                ev("annotation.added", f"run:{new_runs[0]}", {"text": "check the split"},
                   when=self._tick())
            )  # fmt: skip
        return out

    def chunk(self, runs: int, metric_events: int, late_metrics: int = 0) -> list[dict[str, Any]]:
        """New runs, model activity and late metrics of earlier runs, interleaved (each subject's
        events stay in order, so they stay in order in their partition too)."""
        earlier = list(self.runs)
        lanes = [self._run(metric_events) for _ in range(runs)]
        lanes.append(self._model(self.runs[len(earlier) :]))
        lanes += [
            [self._metrics(self.rng.choice(earlier))] for _ in range(late_metrics if earlier else 0)
        ]
        out: list[dict[str, Any]] = []
        while lanes:
            lane = self.rng.choice(lanes)
            out.append(lane.pop(0))
            if not lane:
                lanes.remove(lane)
        self.events += out
        return out


# ------------------------------------------------------------------------------ the process


def _command() -> list[str]:
    script = Path(sys.executable).with_name("studbook-server")
    if script.exists():
        return [str(script), "projector"]
    return [sys.executable, "-m", "studbook_server.cli", "projector"]


class Projector:
    """One `studbook-server projector` process; its stdout and stderr go to a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            _command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def tail(self, chars: int = 4000) -> str:
        self._out.flush()
        text = self.log.read_bytes()[-chars:].decode(errors="replace")
        return f"--- {self.log.name} (exit code {self.proc.poll()}) ---\n{text}"

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def stop(self, sig: signal.Signals, timeout: float = 10.0) -> tuple[int | None, float]:
        """Send ``sig``; return the exit code (None: still running after ``timeout``) and the
        seconds it took to exit."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = await self.wait(timeout)
        return code, time.monotonic() - t0

    def close(self) -> None:
        """Never leave a process behind, whatever the test did."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()


def _env(url: str, bootstrap: str, topic: str, group: str, batch: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STUDBOOK_DATABASE_URL=url,
        STUDBOOK_KAFKA_BOOTSTRAP=bootstrap,
        STUDBOOK_EVENTS_TOPIC=topic,
        STUDBOOK_CONSUMER_GROUP=group,
        STUDBOOK_BATCH_MAX_RECORDS=str(batch),
        STUDBOOK_BATCH_TIMEOUT_MS="100",
        STUDBOOK_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


# ------------------------------------------------------------------------------ observing it


@dataclass(frozen=True)
class Snapshot:
    events: int
    offsets: int  # sum of the stored next_offset over the partitions
    dead_letters: int


class Watch:
    """A plain connection (not named `studbook`, so it never counts as the projector's own)."""

    def __init__(self, con: asyncpg.Connection, group: str, topic: str) -> None:
        self.con, self.group, self.topic = con, group, topic

    async def snapshot(self) -> Snapshot:
        # One statement, one MVCC snapshot: the three numbers are mutually consistent.
        row = await self.con.fetchrow(
            """SELECT (SELECT count(*) FROM public.events) AS events,
                      (SELECT coalesce(sum(next_offset), 0) FROM public.consumer_offsets
                        WHERE group_id = $1 AND topic = $2) AS offsets,
                      (SELECT count(*) FROM public.dead_letters) AS dead""",
            self.group, self.topic,
        )  # fmt: skip
        return Snapshot(row["events"], row["offsets"], row["dead"])

    async def projector_backends(self, *, in_transaction: bool = False) -> int:
        """The projector's connections to this database (optionally: only those in a transaction)."""
        n: int = await self.con.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND application_name = 'studbook'
                 AND (NOT $1 OR (xact_start IS NOT NULL AND state <> 'idle'))""",
            in_transaction,
        )
        return n

    async def until(
        self, what: str, check: Callable[[], Coroutine[Any, Any, bool]], proj: Projector | None,
        timeout: float,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while not await check():
            if proj is not None and proj.exited():
                raise AssertionError(
                    f"the projector exited while waiting for {what}\n{proj.tail()}"
                )
            if time.monotonic() > deadline:
                tail = proj.tail() if proj is not None else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
            await asyncio.sleep(0.01)

    async def progress_since(self, proj: Projector, before: int, timeout: float) -> None:
        async def advanced() -> bool:
            return (await self.snapshot()).offsets > before

        # A restart after SIGKILL waits for Kafka to expire the dead member's session (10 s).
        await self.until("the projector to store a batch", advanced, proj, timeout)

    async def open_transaction(self, timeout: float) -> bool:
        """Wait (briefly) until the projector is inside a transaction; say whether it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.projector_backends(in_transaction=True):
                return True
            await asyncio.sleep(0.002)
        return False

    async def no_projector_backends(self, proj: Projector | None = None) -> None:
        """After the process died, PostgreSQL ends its sessions (rolling back an open batch)."""

        async def gone() -> bool:
            return await self.projector_backends() == 0

        await self.until("the dead projector's sessions to end", gone, None, 10.0)


async def _until_consumed(
    proj: Projector, url: str, group: str, topic: str, total: int, limit_s: float
) -> None:
    """`wait_consumed`, failing at once (with the log) if the projector dies meanwhile."""
    waiter = asyncio.create_task(wait_consumed(url, group, topic, total, limit_s))
    try:
        while not waiter.done():
            if proj.exited():
                raise AssertionError(
                    f"the projector exited before consuming all {total} records\n{proj.tail()}"
                )
            await asyncio.wait({waiter}, timeout=0.1)
        try:
            waiter.result()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{proj.tail()}") from None
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


async def _fresh(
    services: Services, database_factory: Factory, topic_factory: Factory
) -> tuple[str, str, str]:
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=4)
    return url, topic, f"g-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ the tests

KILLS = 5
SEED = 20260301


async def test_sigkill_mid_batch_repeatedly_loses_and_duplicates_nothing(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer, tmp_path: Path,
) -> None:  # fmt: skip
    rng = random.Random(SEED)
    url, topic, group = await _fresh(services, database_factory, topic_factory)
    stream = Stream(rng)
    await produce(kafka_producer, topic, stream.chunk(runs=48, metric_events=50))
    env = _env(url, services.kafka_bootstrap, topic, group, batch=200)

    watch = Watch(await asyncpg.connect(url), group, topic)
    procs: list[Projector] = []
    kills: list[str] = []  # one line per kill, for failure messages
    try:
        for life in range(KILLS):
            before = (await watch.snapshot()).offsets
            proj = Projector(env, tmp_path / f"projector-{life}.log")
            procs.append(proj)
            await watch.progress_since(proj, before, timeout=30)
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            in_batch = await watch.open_transaction(timeout=1.0)
            code, _ = await proj.stop(signal.SIGKILL)
            assert code == -signal.SIGKILL, proj.tail()
            await watch.no_projector_backends()
            snap = await watch.snapshot()
            total = len(stream.events)
            kills.append(
                f"kill {life}: after {time.monotonic() - proj.started:.1f}s, "
                f"{'inside' if in_batch else 'between'} batches, {before} -> {snap.offsets} of "
                f"{total} records stored"
            )
            # Whatever the instant of death, what is stored is whole batches with their offsets.
            assert snap.events == snap.offsets, "\n".join(kills) + f"\n{snap}\n{proj.tail()}"
            assert snap.dead_letters == 0, proj.tail()
            assert snap.offsets < total, (
                "the projector finished before it was killed: the stream is too short to test "
                "a crash mid-way\n" + "\n".join(kills)
            )
            if life in (1, 3):
                # More events arrive while the projector is down.
                await produce(kafka_producer, topic, stream.chunk(8, 40, late_metrics=20))
        report = "\n".join(kills)
        print(report)  # TEMP
        assert sum("inside" in k for k in kills) >= 2, f"too few kills hit a batch:\n{report}"

        total = len(stream.events)
        last = Projector(env, tmp_path / "projector-final.log")
        procs.append(last)
        await _until_consumed(last, url, group, topic, total, limit_s=60)
        code, took = await last.stop(signal.SIGTERM)
        assert code == 0, f"SIGTERM: exit code {code} after {took:.1f}s\n{last.tail()}"
    finally:
        await watch.con.close()
        for p in procs:
            p.close()

    ids = {e["event_id"] for e in stream.events}
    assert len(ids) == len(stream.events)
    con = await postgres.connect(url)
    try:
        n, distinct, low, high = await con.fetchrow(
            "SELECT count(*), count(DISTINCT event_id), min(position), max(position) FROM public.events"
        )
        assert (n, distinct) == (len(ids), len(ids)), report
        assert (low, high) == (1, n), f"positions are not 1..{n}: {low}..{high}"
        stored = {r[0] for r in await con.fetch("SELECT event_id::text FROM public.events")}
        assert stored == ids, (
            f"{len(ids - stored)} lost, {len(stored - ids)} unknown event ids\n{report}"
        )
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        assert (await watch_offsets(con, group, topic)) == total

        points, distinct_points = await con.fetchrow(
            """SELECT count(*), count(DISTINCT (run_id, key, step)) FROM run_metric_points"""
        )
        assert (points, distinct_points) == (stream.total_points, stream.total_points), report
        summaries = {
            (r["run_id"], r["key"]): r["points"]
            for r in await con.fetch("SELECT run_id, key, points FROM run_metrics")
        }
        assert sum(summaries.values()) == stream.total_points
        wrong = {
            k: (summaries.get(k), v) for k, v in stream.points.items() if summaries.get(k) != v
        }
        assert not wrong, f"run_metrics.points (stored, produced) differ: {list(wrong.items())[:5]}"
        assert await con.fetchval("SELECT count(*) FROM runs") == len(stream.runs)
        assert await con.fetchval("SELECT count(*) FROM model_versions") == stream.model_versions
        report_verify = await postgres.verify(con)
        assert report_verify.checked == n
        checkpoint = await con.fetchval("SELECT position FROM checkpoint")
        assert checkpoint == n
    finally:
        await con.close()

    projected = await dump_read_models(url)
    assert await rebuild(url) == n
    rebuilt = await dump_read_models(url)
    assert projected.keys() == rebuilt.keys()
    differ = [t for t in projected if projected[t] != rebuilt[t]]
    assert not differ, f"read models differ from a clean rebuild in {differ}\n{report}"


async def watch_offsets(con: asyncpg.Connection, group: str, topic: str) -> int:
    n: int = await con.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM public.consumer_offsets WHERE group_id = $1 AND topic = $2",
        group, topic,
    )  # fmt: skip
    return n

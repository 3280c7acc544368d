"""The projector process under crashes: SIGKILL mid-batch, again and again, then a restart, loses
and duplicates nothing, and the read models equal a clean rebuild; SIGTERM shuts down gracefully.

These tests run the real `studbook-server projector` command as a subprocess against the real
Kafka and PostgreSQL and stop it with signals: the effectively-once guarantee (events, read-model
changes and consumer offsets in one PostgreSQL transaction) is only proven when the process dies
at an arbitrary instant, not when a coroutine is cancelled politely. Each process's output goes to
a log file under tmp_path, whose tail failure messages show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
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
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import LeaveGroupRequest

from studbook_server import integrity
from studbook_server.adapters import postgres
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import (
    assert_same_read_models,
    at,
    attestation_key,
    dump_read_models,
    ev,
    migrated,
    produce,
    wait_consumed,
)

Factory = Callable[..., Coroutine[Any, Any, str]]

MODEL = "churn-clf"
METRIC_KEYS = ("train/loss", "val/accuracy")

# ---------------------------------------------------------------------------------- the stream


@dataclass
class Stream:
    """Builds a realistic event stream and remembers what it produced, to check against."""

    rng: random.Random
    events: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    points: Counter[tuple[str, str]] = field(default_factory=Counter)  # (run id, key) -> points
    steps: dict[str, int] = field(default_factory=dict)  # run id -> its next step
    model_versions: int = 0
    day: float = 0.0

    @property
    def total_points(self) -> int:
        return sum(self.points.values())

    @property
    def ids(self) -> set[str]:
        return {e["event_id"] for e in self.events}

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
            if i % 4 == 1:
                point["timestamp"] = at(self.day, hours=i / 1000)
            metrics.append(point)
            self.points[(run_id, key)] += 1
        self.steps[run_id] = base + (n + 1) // 2
        return ev("run.metrics.logged", f"run:{run_id}", {"metrics": metrics}, when=self._tick())

    def _run(self, metric_events: int) -> list[dict[str, Any]]:
        run_id = str(uuid.uuid4())
        self.runs.append(run_id)
        subject = f"run:{run_id}"
        rng = self.rng
        out = [
            ev("run.started", subject,
               {"name": f"trial-{len(self.runs)}", "experiment": "sweep",
                "code": {"git_repo": "git@x:churn.git", "git_commit": f"{rng.getrandbits(40):010x}"},
                "environment": {"python_version": "3.11.7", "host": f"gpu-{rng.randint(1, 8)}"}},
               when=self._tick()),
            ev("run.params.logged", subject,
               {"params": {"lr": rng.choice([0.3, 0.1, 0.03]), "depth": rng.randint(2, 12)}},
               when=self._tick()),
            ev("run.tags.set", subject, {"tags": {"team": "growth", "seed": str(rng.randint(0, 99))}},
               when=self._tick()),
        ]  # fmt: skip
        out += [self._metrics(run_id) for _ in range(metric_events)]
        if rng.random() < 0.2:
            finished = {"status": "failed", "error": {"type": "ValueError", "message": "bad shape"}}
        else:
            finished = {"status": "completed"}
        out.append(ev("run.finished", subject, finished, when=self._tick()))
        if rng.random() < 0.1:
            out.append(
                ev("subject.redacted", subject, {"reason": "GDPR", "fields": ["environment.host"]},
                   when=self._tick())
            )  # fmt: skip
        return out

    def _model(self, new_runs: list[str]) -> list[dict[str, Any]]:
        """Versions trained by some of the new runs, reviews, alias moves (one of them recorded
        late, so it corrects the past), deployments."""
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
                past = at(self.day - 0.005)
                out += [
                    ev("model.alias.set", subject, {"alias": "production", "version": v},
                       when=self._tick()),
                    ev("model.alias.set", subject, {"alias": "champion", "version": v}, when=past),
                    ev("model.version.deployed", subject,
                       {"version": v, "environment": "prod", "target": "k8s/churn"},
                       when=self._tick()),
                ]  # fmt: skip
        out.append(ev("model.alias.removed", subject, {"alias": "staging"}, when=self._tick()))
        if new_runs:
            out.append(
                ev("annotation.added", f"run:{new_runs[0]}", {"text": "check the split"},
                   when=self._tick())
            )  # fmt: skip
        return out

    def chunk(self, runs: int, metric_events: int, late_metrics: int = 0) -> list[dict[str, Any]]:
        """New runs, model activity and late metrics of earlier runs, interleaved at random. Each
        subject's events keep their order, so they keep it in their partition too."""
        earlier = list(self.runs)
        lanes = [self._run(metric_events) for _ in range(runs)]
        lanes.append(self._model(self.runs[len(earlier) :]))
        if earlier:
            lanes += [[self._metrics(self.rng.choice(earlier))] for _ in range(late_metrics)]
        out: list[dict[str, Any]] = []
        while lanes:
            lane = self.rng.choice(lanes)
            out.append(lane.pop(0))
            if not lane:
                lanes.remove(lane)
        self.events += out
        return out


# --------------------------------------------------------------------------------- the process


def _command() -> list[str]:
    script = Path(sys.executable).with_name("studbook-server")
    if script.exists():
        return [str(script), "projector"]
    return [sys.executable, "-m", "studbook_server.cli", "projector"]


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
    )
    return env


class Projector:
    """One `studbook-server projector` process; its stderr (and stdout) go to a log file."""

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

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log} (exit code {self.proc.poll()}) ---\n{self.output()[-chars:]}"

    async def stop(self, sig: signal.Signals, limit_s: float = 10.0) -> tuple[int | None, float]:
        """Send ``sig``; return the exit code (None: still running after ``limit_s`` seconds) and
        how long the process took to exit."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proc.wait, limit_s)
        return self.proc.poll(), time.monotonic() - t0

    def close(self) -> None:
        """Leave no process behind, whatever happened in the test."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()


async def _members(admin: AIOKafkaAdminClient, group: str) -> tuple[int, list[str]]:
    """The coordinator of ``group`` and the ids of its members."""
    node = await admin.find_coordinator(group)
    [described] = await admin.describe_consumer_groups([group], group_coordinator_id=node)
    return node, [m["member_id"] for g in described.to_object()["groups"] for m in g["members"]]


async def _group_members(bootstrap: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return (await _members(admin, group))[1]
    finally:
        await admin.close()


async def _evict_dead_members(bootstrap: str, group: str) -> int:
    """Send the LeaveGroup a SIGKILLed consumer could not send; return how many members left.

    Kafka otherwise notices a dead member only when its session expires (10 s), and a restarted
    projector gets no partitions until then. Call only while no projector of ``group`` runs.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        node, members = await _members(admin, group)
        for member in members:
            # The admin client has no call for this, but its request plumbing carries it.
            response = await admin._send_request(LeaveGroupRequest(group, member), node)
            assert response.error_code == 0, f"LeaveGroup for {member}: {response}"
        return len(members)
    finally:
        await admin.close()


# ------------------------------------------------------------------------------- watching it


@dataclass(frozen=True)
class Snapshot:
    events: int
    offsets: int  # the stored next_offset, summed over the partitions: records consumed
    dead_letters: int


class Watch:
    """Observes the store through a plain connection (not named `studbook`, so it is never taken
    for one of the projector's own)."""

    def __init__(self, con: asyncpg.Connection, group: str, topic: str) -> None:
        self.con, self.group, self.topic = con, group, topic

    async def snapshot(self) -> Snapshot:
        # One statement sees one MVCC snapshot: the three numbers are mutually consistent.
        row = await self.con.fetchrow(
            """SELECT (SELECT count(*) FROM public.events) AS events,
                      (SELECT coalesce(sum(next_offset), 0)::int8 FROM public.consumer_offsets
                        WHERE group_id = $1 AND topic = $2) AS offsets,
                      (SELECT count(*) FROM public.dead_letters) AS dead""",
            self.group, self.topic,
        )  # fmt: skip
        return Snapshot(row["events"], row["offsets"], row["dead"])

    async def projector_sessions(self, *, in_transaction: bool = False) -> int:
        """The projector's sessions on this database (optionally only those inside a transaction)."""
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
        limit_s: float,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + limit_s
        while not await check():
            if proj is not None and proj.exited():
                raise AssertionError(f"the projector exited while awaiting {what}\n{proj.tail()}")
            if time.monotonic() > deadline:
                tail = proj.tail() if proj is not None else ""
                raise AssertionError(f"{what}: not within {limit_s}s\n{tail}")
            await asyncio.sleep(0.01)

    async def progress_since(self, proj: Projector, before: int, limit_s: float) -> None:
        async def advanced() -> bool:
            return (await self.snapshot()).offsets > before

        await self.until("the projector storing a batch", advanced, proj, limit_s)

    async def open_transaction(self, limit_s: float) -> bool:
        """Wait (briefly) until the projector is inside a transaction; say whether it was."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if await self.projector_sessions(in_transaction=True):
                return True
            await asyncio.sleep(0.002)
        return False

    async def sessions_gone(self) -> None:
        """Once the process is dead, PostgreSQL ends its sessions (rolling back an open batch)."""

        async def gone() -> bool:
            return await self.projector_sessions() == 0

        await self.until("the dead projector's sessions ending", gone, None, 10.0)


async def _until_consumed(proj: Projector, url: str, group: str, topic: str, total: int) -> None:
    """`wait_consumed`, failing at once (with the log) if the projector dies meanwhile."""
    waiter = asyncio.create_task(wait_consumed(url, group, topic, total, limit_s=60))
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


async def _check_store(url: str, stream: Stream, group: str, topic: str, context: str) -> int:
    """Everything produced is stored exactly once and projected once; return the event count."""
    ids = stream.ids
    assert len(ids) == len(stream.events), "the test produced an event id twice"
    con = await postgres.connect(url)
    try:
        n, distinct, low, high = await con.fetchrow(
            "SELECT count(*), count(DISTINCT event_id), min(position), max(position) FROM public.events"
        )
        assert (n, distinct) == (len(ids), len(ids)), (
            f"{n} events ({distinct} distinct ids) stored, {len(ids)} produced\n{context}"
        )
        assert (low, high) == (1, n), f"positions are not 1..{n} but {low}..{high}\n{context}"
        stored = {r[0] for r in await con.fetch("SELECT event_id::text FROM public.events")}
        assert stored == ids, f"{len(ids - stored)} lost, {len(stored - ids)} unknown\n{context}"
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        offsets = await con.fetchval(
            "SELECT sum(next_offset)::int8 FROM public.consumer_offsets WHERE group_id = $1 AND topic = $2",
            group, topic,
        )  # fmt: skip
        assert offsets == n, f"stored offsets cover {offsets} records, {n} events stored"
        assert await con.fetchval("SELECT position FROM checkpoint") == n

        points, distinct_points = await con.fetchrow(
            "SELECT count(*), count(DISTINCT (s.run_id, s.key, u.step)) FROM "
            "metric_series s JOIN metric_chunks c ON c.series_id = s.id, unnest(c.steps) AS u(step)"
        )
        assert (points, distinct_points) == (stream.total_points, stream.total_points), (
            f"{points} metric points ({distinct_points} distinct) stored, "
            f"{stream.total_points} produced\n{context}"
        )
        summaries = {
            (r["run_id"], r["key"]): r["points"]
            for r in await con.fetch("SELECT run_id, key, points FROM run_metrics")
        }
        assert sum(summaries.values()) == stream.total_points, context
        wrong = [
            (k, summaries.get(k), v) for k, v in stream.points.items() if summaries.get(k) != v
        ]
        assert not wrong, f"run_metrics.points (run, key, stored, produced): {wrong[:5]}\n{context}"
        assert await con.fetchval("SELECT count(*) FROM runs") == len(stream.runs)
        assert await con.fetchval("SELECT count(*) FROM model_versions") == stream.model_versions

        report = await integrity.verify(con)  # raises ChainBroken naming the first bad position
        assert report.checked == n
    finally:
        await con.close()
    return n


# ----------------------------------------------------------------------------------- the tests

KILLS = 5
# Restarts that wait for Kafka to expire the killed member's session, as in production; before
# the others the test sends the LeaveGroup the dead process could not (see _evict_dead_members).
WAIT_FOR_SESSION_EXPIRY = frozenset({1})
SEED = 20260301


@dataclass(frozen=True)
class Kill:
    life: int
    restart: str
    alive_s: float
    in_batch: bool
    before: int  # records stored when this process started
    after: int  # records stored once it was dead
    total: int  # records in the topic at the kill

    def __str__(self) -> str:
        where = "inside a batch transaction" if self.in_batch else "between batches"
        return (
            f"kill {self.life} ({self.restart}): after {self.alive_s:.1f}s, {where}; "
            f"records stored {self.before} -> {self.after} of {self.total}"
        )


async def test_sigkill_mid_batch_repeatedly_loses_and_duplicates_nothing(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer, tmp_path: Path,
) -> None:  # fmt: skip
    rng = random.Random(SEED)
    url, topic, group = await _fresh(services, database_factory, topic_factory)
    stream = Stream(rng)
    await produce(
        kafka_producer,
        topic,
        stream.chunk(runs=48, metric_events=50),
        key=await attestation_key(url),
    )
    env = _env(url, services.kafka_bootstrap, topic, group, batch=200)

    watch = Watch(await asyncpg.connect(url), group, topic)
    procs: list[Projector] = []
    kills: list[Kill] = []
    history = ""
    try:
        for life in range(KILLS + 1):
            if life == 0:
                restart = "first start"
            elif life in WAIT_FOR_SESSION_EXPIRY:
                restart = "restart waits for Kafka's session expiry"
            else:
                evicted = await _evict_dead_members(services.kafka_bootstrap, group)
                restart = f"dead member evicted ({evicted})"
            before = (await watch.snapshot()).offsets
            proj = Projector(env, tmp_path / f"projector-{life}.log")
            procs.append(proj)
            if life == KILLS:
                break  # the last life runs to the end
            await watch.progress_since(proj, before, limit_s=30)
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            in_batch = await watch.open_transaction(limit_s=1.0)
            code, _ = await proj.stop(signal.SIGKILL)
            assert code == -signal.SIGKILL, proj.tail()
            await watch.sessions_gone()
            snap = await watch.snapshot()
            alive = time.monotonic() - proj.started
            kills.append(
                Kill(life, restart, alive, in_batch, before, snap.offsets, len(stream.events))
            )
            history = "\n".join(map(str, kills))
            # Whatever the instant of death, the store holds whole batches and their offsets.
            assert snap.events == snap.offsets, f"{snap}\n{history}\n{proj.tail()}"
            assert snap.dead_letters == 0, proj.tail()
            assert before < snap.offsets < len(stream.events), (
                f"kill {life} was not mid-stream (is the stream too short?)\n{history}"
            )
            if life in (1, 3):
                # More events arrive while the projector is down.
                await produce(
                    kafka_producer,
                    topic,
                    stream.chunk(8, 40, late_metrics=20),
                    key=await attestation_key(url),
                )
        assert sum(k.in_batch for k in kills) >= 2, f"too few kills hit a batch:\n{history}"

        last = procs[-1]
        await _until_consumed(last, url, group, topic, len(stream.events))
        code, took = await last.stop(signal.SIGTERM)
        assert code == 0, f"SIGTERM: exit code {code} after {took:.1f}s\n{last.tail()}"
    finally:
        await watch.con.close()
        for p in procs:
            p.close()

    n = await _check_store(url, stream, group, topic, history)
    projected = await dump_read_models(url)
    assert await rebuild(url) == n
    assert_same_read_models(projected, await dump_read_models(url))


_STOPPED = re.compile(r"projector stopped: Stats\((.*)\)")


async def test_sigterm_while_consuming_finishes_the_batch_and_exits_0(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer, tmp_path: Path,
) -> None:  # fmt: skip
    rng = random.Random(SEED + 1)
    url, topic, group = await _fresh(services, database_factory, topic_factory)
    stream = Stream(rng)
    await produce(
        kafka_producer,
        topic,
        stream.chunk(runs=16, metric_events=30),
        key=await attestation_key(url),
    )
    total = len(stream.events)
    env = _env(url, services.kafka_bootstrap, topic, group, batch=100)

    watch = Watch(await asyncpg.connect(url), group, topic)
    procs: list[Projector] = []
    try:
        proj = Projector(env, tmp_path / "projector-0.log")
        procs.append(proj)
        await watch.progress_since(proj, 0, limit_s=30)
        await asyncio.sleep(rng.uniform(0.05, 0.2))
        in_batch = await watch.open_transaction(limit_s=1.0)
        code, took = await proj.stop(signal.SIGTERM)
        assert (code, took < 5) == (0, True), (
            f"SIGTERM {'inside' if in_batch else 'between'} batches: exit code {code} after "
            f"{took:.1f}s\n{proj.tail()}"
        )
        await watch.sessions_gone()
        snap = await watch.snapshot()
        assert snap.events == snap.offsets, f"{snap}\n{proj.tail()}"
        assert snap.dead_letters == 0, proj.tail()
        assert 0 < snap.offsets < total, f"SIGTERM was not mid-stream: {snap}, {total} records"
        # The batch in hand was stored before exiting: every record the process took was stored
        # (a rebalance while a batch is in flight can hand it records again: those are no-ops).
        found = _STOPPED.search(proj.output())
        assert found, f"no final stats logged\n{proj.tail()}"
        stats = dict(kv.split("=") for kv in found.group(1).split(", "))
        assert int(stats["appended"]) == snap.events, f"{stats}, {snap}\n{proj.tail()}"
        assert int(stats["records"]) == int(stats["appended"]) + int(stats["duplicates"]), (
            f"{stats}, {snap}\n{proj.tail()}"
        )

        # A graceful stop leaves the consumer group, so a restart gets its partitions at once
        # instead of after the old member's session expired; it resumes at the stored offsets.
        members = await _group_members(services.kafka_bootstrap, group)
        assert members == [], f"still in the group after SIGTERM: {members}\n{proj.tail()}"
        again = Projector(env, tmp_path / "projector-1.log")
        procs.append(again)
        await _until_consumed(again, url, group, topic, total)
        code, took = await again.stop(signal.SIGTERM)
        assert code == 0, f"SIGTERM: exit code {code} after {took:.1f}s\n{again.tail()}"
    finally:
        await watch.con.close()
        for p in procs:
            p.close()

    await _check_store(url, stream, group, topic, "")


REBALANCES = 4


async def test_rebalances_under_traffic_lose_and_duplicate_nothing(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer, tmp_path: Path,
) -> None:  # fmt: skip
    """A second projector joins the group and leaves it again, over and over, while records
    keep arriving: every join and every leave revokes the first projector's partitions while it
    is gathering or storing a batch, and gives them back at the offsets PostgreSQL holds.
    Everything is stored exactly once."""
    rng = random.Random(SEED + 2)
    url, topic, group = await _fresh(services, database_factory, topic_factory)
    stream = Stream(rng)
    key = await attestation_key(url)
    env = _env(url, services.kafka_bootstrap, topic, group, batch=50)
    stop = asyncio.Event()

    async def feed() -> None:
        while not stop.is_set():
            await produce(
                kafka_producer, topic, stream.chunk(runs=1, metric_events=4, late_metrics=1),
                key=key,
            )  # fmt: skip
            await asyncio.sleep(0.01)

    procs: list[Projector] = []
    history = ""
    feeder = asyncio.create_task(feed())
    try:
        first = Projector(env, tmp_path / "projector-0.log")
        procs.append(first)
        for n in range(1, REBALANCES + 1):
            other = Projector(env, tmp_path / f"projector-{n}.log")
            procs.append(other)
            await asyncio.sleep(rng.uniform(3.0, 5.0))  # long enough for the join to complete
            code, _ = await other.stop(signal.SIGTERM)
            assert code == 0, other.tail()
            history += (
                f"projector {n}: {other.output().count('projector assigned')} assignment(s)\n"
            )
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        stop.set()
        await feeder
        await _until_consumed(first, url, group, topic, len(stream.events))
        code, _ = await first.stop(signal.SIGTERM)
        assert code == 0, first.tail()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await feeder
        for p in procs:
            p.close()
    # The joins and leaves really took partitions away from the first projector mid-stream.
    revoked = first.output().count("Revoking previously assigned partitions frozenset")
    assert revoked >= REBALANCES, f"{revoked} revocations\n{history}{first.tail()}"
    await _check_store(url, stream, group, topic, history + first.tail())

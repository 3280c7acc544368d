"""How fresh the read models are under a steady load through Kafka: per-event projection lag.

A steady stream at `--rate` events/s (run lifecycles: `run.started`, `run.params.logged`,
`run.tags.set`, `run.metrics.logged` x 16 with `--points` points each, `run.finished`) is
published for `--seconds` through the gateway's own `KafkaPublisher` (its producer settings, its
signed sender headers, one publish of `rate / 100` events every 10 ms, as concurrent gateway
requests would) to a fresh topic, and projected by a real `studbook-server projector` into a fresh
database. Each publish returns the gateway's consistency token; an event's lag is the time from
its publish call to the first poll (every `--poll-ms`) of `public.consumer_offsets` that shows the
token caught up, which is when a read model query sees it (the offsets are stored in the same
transaction as the read models).

Each configuration of `--configs` (projector environment variables) is measured in turn, A B A B,
`--repeat` times, in one invocation, so old and new settings compare side by side. Read-your-writes
is measured as a client would: for a sample of publishes, `consistency.wait_until` (what a GraphQL
query with a consistency token awaits) beside the fixed-backoff poll it replaced (10 ms doubling
to 200 ms).

ONE JSON object on stdout (p50/p95/p99/max in ms per configuration, medians over repeats and
ratios to the first configuration); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from _common import (
    PROJECT,
    SERVER,
    BenchError,
    Service,
    add_service_args,
    fresh_database,
    fresh_topic,
    guarded,
    loadavg_1m,
    log,
    machine_info,
    median,
    parse_with_tiny,
    run_bench,
    service_defaults,
    service_env,
)
from studbook_server import consistency
from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Incoming
from studbook_server.adapters.publish import PRODUCER_MAX_BATCH_BYTES, KafkaPublisher
from studbook_server.auth import Principal
from studbook_server.consistency import KafkaToken
from studbook_server.domain import attestation

TICK_S = 0.01
METRICS_PER_RUN = 16  # run.metrics.logged events in one run's lifecycle (of 20 events)
SENDER = Principal("tok-bench", "bench", frozenset({"write"}), frozenset({PROJECT}))

# Configurations measured by default: as it was (a batch is what one poll of the consumer
# returns; aiokafka's 500 ms fetch wait; the gateway's producer with aiokafka's 16 KiB batches),
# and as it is now (the defaults). The variables are described in docs/operations.md#freshness;
# BENCH_PRODUCER_MAX_BATCH_BYTES sets the publisher's max_batch_bytes, here in the benchmark.
DEFAULT_CONFIGS = {
    "old": {
        "STUDBOOK_BATCH_LATENCY_MS": "0",
        "STUDBOOK_FETCH_MAX_WAIT_MS": "500",
        "BENCH_PRODUCER_MAX_BATCH_BYTES": "16384",
    },
    "new": {},
}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Stream:
    """The steady stream: run lifecycles, `concurrent` runs interleaved, in order per run."""

    def __init__(self, points: int, concurrent: int) -> None:
        self.points = points
        self.concurrent = concurrent
        self.runs = 0
        self._lives: list[list[dict[str, Any]]] = []

    def _event(self, type_: str, run: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "type": type_,
            "schema_version": 2 if type_ == "run.started" else 1,
            "occurred_at": _iso(time.time()),
            "actor": "bench",
            "project": PROJECT,
            "subject": f"run:{run}",
            "payload": payload,
            "producer": {"name": "studbook-bench", "version": "1"},
        }

    def _life(self) -> list[dict[str, Any]]:
        self.runs += 1
        run = f"fresh-{self.runs}-{uuid.uuid4().hex[:8]}"
        life = [
            self._event("run.started", run, {"name": run, "experiment": "freshness"}),
            self._event("run.params.logged", run, {"params": {"lr": 0.1, "depth": 6}}),
            self._event("run.tags.set", run, {"tags": {"bench": "freshness"}}),
        ]
        for step in range(METRICS_PER_RUN):
            metrics = [
                {"key": f"m{k}", "value": 1.0 / (step + k + 1), "step": step}
                for k in range(self.points)
            ]
            life.append(self._event("run.metrics.logged", run, {"metrics": metrics}))
        life.append(self._event("run.finished", run, {"status": "completed"}))
        life.reverse()  # popped from the end
        return life

    def take(self, n: int) -> list[Incoming]:
        out = []
        while len(self._lives) < self.concurrent:
            self._lives.append(self._life())
        i = 0
        while len(out) < n:
            life = self._lives[i % len(self._lives)]
            doc = life.pop()
            # Not validated again here: the gateway's validation is not what this measures,
            # and the publisher reads only the subject (the record key) of the event.
            out.append(Incoming(doc, _Subject(doc["subject"])))  # type: ignore[arg-type]
            if not life:
                self._lives[i % len(self._lives)] = self._life()
            i += 1
        # Rotate, so that the next tick starts with other runs.
        self._lives = self._lives[i % len(self._lives) :] + self._lives[: i % len(self._lives)]
        return out


@dataclass(frozen=True, slots=True)
class _Subject:
    subject: str


@dataclass
class Tick:
    sent: float  # monotonic, when publish was called
    events: int
    token: KafkaToken | None = None
    visible: float | None = None


@dataclass
class Measured:
    ticks: list[Tick] = field(default_factory=list)
    rywrites: dict[str, list[float]] = field(
        default_factory=lambda: {"wait_until": [], "old_poll": []}
    )
    publish_failures: int = 0


async def _old_poll_wait(
    pool: postgres.Pool, token: KafkaToken, group: str, timeout_s: float
) -> bool:
    """The consistency wait as it was: poll, sleeping 10 ms doubling to 200 ms between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.01
    while True:
        if await consistency.caught_up(pool, token, group):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.2)


def percentiles(lags_ms: Sequence[tuple[float, int]]) -> dict[str, float]:
    """p50/p95/p99/max of lags weighted by their event counts."""
    if not lags_ms:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "events": 0}
    ordered = sorted(lags_ms)
    total = sum(n for _, n in ordered)
    out: dict[str, float] = {}
    for name, q in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        rank, seen = math.ceil(q * total), 0
        for lag, n in ordered:
            seen += n
            if seen >= rank:
                out[name] = round(lag, 1)
                break
    out["max_ms"] = round(ordered[-1][0], 1)
    out["events"] = total
    return out


def _plain_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    return percentiles([(v, 1) for v in values_ms])


async def _watch(
    con: asyncpg.Connection, group: str, topic: str, m: Measured, poll_s: float, stop: asyncio.Event
) -> None:
    pending: list[Tick] = []
    seen = 0
    while True:
        stopping = stop.is_set()
        rows = await con.fetch(
            "SELECT partition, next_offset FROM public.consumer_offsets WHERE group_id = $1 AND topic = $2",
            group, topic,
        )  # fmt: skip
        now = time.monotonic()
        stored = {r[0]: r[1] for r in rows}
        pending.extend(m.ticks[seen:])
        seen = len(m.ticks)
        still = []
        for t in pending:
            if t.token is not None and all(
                stored.get(p, 0) > o for p, o in t.token.offsets.items()
            ):
                t.visible = now
            else:
                still.append(t)
        pending = still
        if stopping and not any(t.token is not None for t in pending):
            return
        await asyncio.sleep(poll_s)


async def _publish(
    publisher: KafkaPublisher, tick: Tick, batch: list[Incoming], m: Measured,
    pool: postgres.Pool | None, group: str, timeout_s: float,
) -> None:  # fmt: skip
    try:
        token = await publisher.publish(batch, SENDER)
    except Exception as exc:  # counted and reported: a failed publish is not measured
        m.publish_failures += 1
        log(f"publish failed: {type(exc).__name__}: {exc}")
        return
    assert isinstance(token, KafkaToken)
    tick.token = token
    if pool is None:
        return
    # Read-your-writes as a client sees it: both waits start at once on the same token.
    started = tick.sent

    async def timed(name: str, waiter: Any) -> None:
        if await waiter:
            m.rywrites[name].append((time.monotonic() - started) * 1000)

    await asyncio.gather(
        timed("wait_until", consistency.wait_until(pool, token, group, timeout_s)),
        timed("old_poll", _old_poll_wait(pool, token, group, timeout_s)),
    )


async def measure_one(
    args: argparse.Namespace, name: str, env_extra: dict[str, str]
) -> dict[str, Any]:
    async with (
        fresh_database(args.database_url, "studbook_fresh_") as url,
        fresh_topic(args.bootstrap, "studbook-fresh-") as topic,
    ):
        group = f"fresh-{uuid.uuid4().hex[:8]}"
        con = await asyncpg.connect(url)
        try:
            key = await postgres.server_key(con, attestation.KEY_NAME)
        finally:
            await con.close()
        env = service_env(url, args.bootstrap, topic, group, "INFO")
        extra = dict(env_extra)
        # The gateway's producer runs here, in the benchmark: this one is for it, not the projector.
        batch_bytes = int(extra.pop("BENCH_PRODUCER_MAX_BATCH_BYTES", PRODUCER_MAX_BATCH_BYTES))
        env.update(extra)
        projector = await Service.spawn(
            "projector", [str(SERVER), "projector"], env, ready=r"assigned \["
        )
        publisher = KafkaPublisher(
            args.bootstrap, topic, key, timeout_s=10.0, max_batch_bytes=batch_bytes
        )
        pool = await postgres.create_pool(url, max_size=4)
        watch_con = await asyncpg.connect(url)
        m = Measured()
        stop = asyncio.Event()
        try:
            await guarded(projector.ready.wait(), [projector], 60, "the projector's assignment")
            await publisher.start()
            stream = Stream(args.points, args.concurrent_runs)
            watcher = asyncio.create_task(
                _watch(watch_con, group, topic, m, args.poll_ms / 1000, stop)
            )
            per_tick = max(1, round(args.rate * TICK_S))
            ticks = round(args.seconds / TICK_S)
            warmup_ticks = round(args.warmup / TICK_S)
            sample_every = max(1, round(1 / (args.rywrites_per_s * TICK_S)))
            tasks: set[asyncio.Task[None]] = set()
            loop = asyncio.get_running_loop()
            start = loop.time()
            behind = 0
            for i in range(ticks):
                due = start + i * TICK_S
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -TICK_S:
                    behind += 1
                batch = stream.take(per_tick)
                tick = Tick(time.monotonic(), len(batch))
                m.ticks.append(tick)
                sample = i >= warmup_ticks and i % sample_every == 0
                task = asyncio.create_task(
                    _publish(
                        publisher, tick, batch, m, pool if sample else None, group, args.timeout
                    )
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if projector.proc.returncode is not None:
                    raise BenchError(f"the projector exited:\n{projector.log_tail()}")
            sent_s = loop.time() - start
            await guarded(asyncio.gather(*tasks), [projector], args.timeout, "the last acks")
            stop.set()
            await guarded(watcher, [projector], args.timeout, "every event projected")
        finally:
            stop.set()
            await publisher.stop()
            await projector.stop()
            await watch_con.close()
            counts = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM public.events) AS events,"
                " (SELECT count(*) FROM public.dead_letters) AS dead"
            )
            await pool.close()
        produced = sum(t.events for t in m.ticks)
        measured = [
            ((t.visible - t.sent) * 1000, t.events)
            for t in m.ticks[warmup_ticks:]
            if t.visible is not None
        ]
        stats = projector.stats
        return {
            "config": name,
            "lag": percentiles(measured),
            "read_your_writes_ms": {k: _plain_percentiles(v) for k, v in m.rywrites.items()},
            "rate_achieved_events_per_s": round(produced / sent_s),
            "ticks_behind_schedule": behind,
            "events_produced": produced,
            "events_stored": counts["events"],
            "dead_letters": counts["dead"],
            "publish_failures": m.publish_failures,
            "projector_batches": stats.get("batches", 0),
            "events_per_batch": round(stats.get("records", 0) / max(stats.get("batches", 0), 1), 1),
        }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    configs: dict[str, dict[str, str]] = DEFAULT_CONFIGS
    if args.configs:
        configs = orjson.loads(args.configs)
    started_load = loadavg_1m()
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in configs}
    for r in range(args.repeat):
        for name, extra in configs.items():
            log(f"repeat {r + 1}/{args.repeat}: {name} {extra}")
            one = await measure_one(args, name, extra)
            log(f"  lag {one['lag']}, per batch {one['events_per_batch']}")
            samples[name].append(one)
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    lag = {n: {k: median([s["lag"][k] for s in v]) for k in keys} for n, v in samples.items()}
    rw = {
        n: {
            w: {k: median([s["read_your_writes_ms"][w][k] for s in v]) for k in keys}
            for w in ("wait_until", "old_poll")
        }
        for n, v in samples.items()
    }
    first = next(iter(configs))
    verified = all(
        s["events_stored"] == s["events_produced"] and s["dead_letters"] == 0
        and s["publish_failures"] == 0
        for v in samples.values() for s in v
    )  # fmt: skip
    return {
        "lag_ms": lag,
        "ratio_to_" + first: {
            n: {k: _ratio(lag[n][k], lag[first][k]) for k in keys} for n in configs
        },
        "read_your_writes_ms": rw,
        "events_per_batch_median": {
            n: median([s["events_per_batch"] for s in v]) for n, v in samples.items()
        },
        "target": {"p99_ms": 200, "rate_events_per_s": args.rate},
        "target_met": {n: lag[n]["p99_ms"] <= 200 for n in configs},
        "verified": verified,
        "repeat": args.repeat,
        "medians": True,
        "configs": configs,
        "samples": samples,
        "workload": {
            "rate_events_per_s": args.rate,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "points_per_metrics_event": args.points,
            "metrics_share": METRICS_PER_RUN / (METRICS_PER_RUN + 4),
            "concurrent_runs": args.concurrent_runs,
            "publish_every_ms": TICK_S * 1000,
            "poll_ms": args.poll_ms,
            "read_your_writes_per_s": args.rywrites_per_s,
        },
        "machine": {
            **(await machine_info(args.database_url)),
            "loadavg_1m_start_end": [started_load, loadavg_1m()],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=5000, help="events/s published")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the steady load")
    p.add_argument("--warmup", type=float, default=2.0, help="first seconds not counted")
    p.add_argument("--points", type=int, default=5, help="points per run.metrics.logged")
    p.add_argument("--concurrent-runs", type=int, default=50, help="runs interleaved")
    p.add_argument("--repeat", type=int, default=2, help="measurements per configuration")
    p.add_argument("--poll-ms", type=float, default=5.0, help="how often visibility is polled")
    p.add_argument(
        "--rywrites-per-s", type=float, default=10.0,
        help="publishes per second followed by a read-your-writes wait",
    )  # fmt: skip
    p.add_argument(
        "--configs",
        help="JSON object: configuration name -> projector environment variables "
        f"(default: {orjson.dumps(DEFAULT_CONFIGS).decode()})",
    )
    add_service_args(p, timeout=120, timeout_help="seconds to wait for the last events")
    args = parse_with_tiny(p, {"rate": 500, "seconds": 2.0, "warmup": 0.5, "repeat": 1}, argv)
    service_defaults(args)
    return run_bench(measure, args, cancel_on_sigterm=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

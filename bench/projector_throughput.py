"""Projector throughput: Kafka -> `studbook-server projector` -> PostgreSQL read models.

Generates a large, deterministic synthetic event stream, produces it to fresh Kafka topics (before
any clock starts), then times the real projector, run as a subprocess, on two streams measured
separately:

* metric-heavy: only `run.metrics.logged` events carrying batches of points (points/s);
* other: run lifecycles, params, tags, inputs, dataset and model versions, annotations (events/s).

Each measurement uses a fresh database (created from the admin URL, migrated, dropped afterwards)
and a fresh consumer group. Side by side it times PostgreSQL's own cost for the same metric rows:
`copy_records_to_table` into a plain table with the columns and index of the one-row-per-point
layout the read models had before metric chunks (rm.run_metric_points, until migration 0010).
Every measurement is repeated `--repeat` times; the report gives medians.

Prints ONE JSON object on stdout; progress goes to stderr. When a target is missed (or with
`--profile`), it also profiles the in-process path (`decode_record` + `store_batch`) with cProfile
and a per-statement wall-clock breakdown, and adds the findings to the JSON.

    .venv/bin/python bench/projector_throughput.py [--runs N] [--metric-events M]
        [--points-per-event K] [--other-events E] [--repeat R]

Needs the services of `scripts/stack up` (STUDBOOK_KAFKA_BOOTSTRAP / STUDBOOK_DATABASE_URL, or the
stack's defaults). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import hashlib
import os
import random
import shlex
import sys
import time
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from _common import (
    PARTITIONS,
    POLL_S,
    PROJECT,
    ROOT,
    SERVER,
    BenchError,
    Service,
    add_profile_args,
    add_service_args,
    backend_cpu,
    cpu_delta,
    create_topic,
    database_name,
    finish,
    fresh_database,
    gate_waiting,
    guarded,
    hold_start_gate,
    loadavg_1m,
    log,
    machine_info,
    median,
    open_start_gate,
    parse_with_tiny,
    print_pstats,
    proc_cpu_s,
    proc_status_kib,
    produce,
    profiled,
    run_bench,
    service_defaults,
    service_env,
    top_functions,
    wait_total,
)
from studbook_server.adapters import postgres
from studbook_server.adapters.readmodels import load_state, write_changes
from studbook_server.domain.contract import event_from_dict, validate_event
from studbook_server.domain.projection import project, state_keys
from studbook_server.projector import (
    _STORE_OFFSETS,
    DeadLetter,
    Decoded,
    Stats,
    decode_record,
    store_batch,
)

TARGET_METRIC_POINTS_PER_S = 100_000
TARGET_OTHER_EVENTS_PER_S = 10_000
TARGET_RSS_MIB = 150

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
METRIC_KEYS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")
# The projector's batch_max_records when STUDBOOK_BATCH_MAX_RECORDS is unset (config.py).
PROJECTOR_DEFAULT_BATCH = 2000
# `--tiny`: a few seconds, for tests/test_bench_smoke.py.
TINY = {"runs": 20, "metric_events": 40, "points_per_event": 50, "other_events": 200, "repeat": 1}

Row = tuple[Any, ...]
DATABASE_PREFIX = "studbook_bench_"


# ------------------------------------------------------------------------------- generator


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Stream:
    """One synthetic stream: (Kafka key, JSON value) records in produce order."""

    name: str
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    metric_points: int = 0

    def add(self, doc: dict[str, Any]) -> None:
        self.records.append((doc["subject"].encode(), orjson.dumps(doc)))
        self.counts[doc["type"]] += 1


class Generator:
    """Valid wire events (see schema/events and tests/support.py `ev`), deterministic per seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.rng.randbytes(16)).hexdigest()

    def ev(
        self,
        type: str,
        subject: str,
        payload: dict[str, Any],
        when: datetime,
        *,
        actor: str = "bench",
        version: int | None = None,
    ) -> dict[str, Any]:
        return {
            "event_id": self.event_id(),
            "type": type,
            "schema_version": version or (2 if type == "run.started" else 1),
            "occurred_at": _iso(when),
            "actor": actor,
            "project": PROJECT,
            "subject": subject,
            "payload": payload,
            "producer": {"name": "studbook-bench", "version": "1"},
        }


def run_id(i: int) -> str:
    return f"run-{i:05d}"


def metric_stream(
    seed: int, runs: int, events: int, points_per_event: int, timestamps: bool
) -> Stream:
    """`events` run.metrics.logged events of `points_per_event` points, round-robin over runs."""
    g = Generator(seed)
    rng = g.rng
    out = Stream("metrics")
    steps_per_event = max(1, points_per_event // len(METRIC_KEYS))
    for i in range(events):
        run = i % runs
        chunk = i // runs
        start = T0 + timedelta(minutes=run)
        points = []
        last = start
        for j in range(points_per_event):
            key = METRIC_KEYS[j % len(METRIC_KEYS)]
            step = chunk * steps_per_event + j // len(METRIC_KEYS)
            value = round(1.0 / (1 + step) + rng.gauss(0.0, 0.01), 6)
            point: dict[str, Any] = {"key": key, "value": value, "step": step}
            if timestamps:
                last = start + timedelta(seconds=step, milliseconds=rng.randrange(1000))
                point["timestamp"] = _iso(last)
            points.append(point)
        out.add(g.ev("run.metrics.logged", f"run:{run_id(run)}", {"metrics": points}, last))
        out.metric_points += points_per_event
    return out


def other_stream(seed: int, runs: int, events: int) -> Stream:
    """About `events` events: project, datasets and versions, run lifecycles (started, params,
    tags, input used, finished), models and versions, annotations."""
    g = Generator(seed)
    rng = g.rng
    out = Stream("other")
    n_datasets = max(1, min(50, events // 400))
    n_models = max(1, min(50, events // 400))
    fixed = 1 + n_datasets + n_models
    lifecycle_runs = max(0, min(runs, (events - fixed) // 5))
    rest = max(0, events - fixed - 5 * lifecycle_runs)
    n_dataset_versions = max(n_datasets, rest * 2 // 5)
    n_model_versions = rest * 2 // 5
    n_annotations = max(0, rest - n_dataset_versions - n_model_versions)

    t = T0
    out.add(g.ev("project.created", f"project:{PROJECT}", {"description": "benchmark"}, t))
    datasets = [f"ds-{d:03d}" for d in range(n_datasets)]
    versions: dict[str, list[str]] = {d: [] for d in datasets}
    for d in datasets:
        out.add(g.ev("dataset.created", f"dataset:{d}", {"name": d, "uri": f"s3://bench/{d}"}, t))
    for n in range(n_dataset_versions):
        d = datasets[n % n_datasets]
        version = f"v{n:06d}"
        payload: dict[str, Any] = {
            "version": version,
            "uri": f"s3://bench/{d}/{version}/",
            "digest": g.digest(),
            "size_bytes": rng.randrange(1 << 20, 1 << 30),
            "row_count": rng.randrange(1000, 1_000_000),
            "schema": [{"name": "user", "type": "string"}, {"name": "label", "type": "int64"}],
        }
        if versions[d]:
            payload["parents"] = [{"dataset": d, "version": versions[d][-1]}]
        if n % 3 == 0:
            payload["produced_by_run"] = run_id(n % max(1, runs))
        versions[d].append(version)
        out.add(g.ev("dataset.version.created", f"dataset:{d}", payload, t))
    for r in range(lifecycle_runs):
        rid, subject = run_id(r), f"run:{run_id(r)}"
        t = T0 + timedelta(minutes=r)
        code = {
            "git_repo": "https://git.example.com/bench.git",
            "git_commit": rng.randbytes(20).hex(),
            "git_branch": "main",
            "git_dirty": rng.random() < 0.2,
            "entry_point": "train.py",
        }
        environment = {"python_version": "3.11.7", "host": f"gpu-{r % 16:02d}"}
        started = {"name": f"{rid}-sweep", "experiment": f"exp-{r % 20:03d}", "code": code}
        started["environment"] = environment
        out.add(g.ev("run.started", subject, started, t))
        params = {
            "lr": round(rng.uniform(1e-5, 1e-1), 6),
            "batch_size": rng.choice([32, 64, 128, 256]),
            "optimizer": rng.choice(["adamw", "sgd", "lion"]),
            "epochs": rng.randrange(1, 100),
            "dropout": round(rng.random() / 2, 3),
            "seed": r,
            "amp": rng.random() < 0.5,
            "scheduler": rng.choice(["cosine", "linear", "none"]),
        }
        out.add(g.ev("run.params.logged", subject, {"params": params}, t))
        tags = {"team": f"team-{r % 7}", "priority": rng.choice(["low", "high"]), "stage": "dev"}
        out.add(g.ev("run.tags.set", subject, {"tags": tags}, t + timedelta(seconds=1)))
        d = datasets[r % n_datasets]
        version = versions[d][r % len(versions[d])] if versions[d] else "v000000"
        used = {"dataset": d, "version": version, "role": rng.choice(["train", "validation"])}
        out.add(g.ev("run.input.used", subject, used, t + timedelta(seconds=2)))
        finished: dict[str, Any] = {"status": "completed"}
        if r % 10 == 9:
            finished = {"status": "failed", "error": {"type": "OOM", "message": "out of memory"}}
        out.add(g.ev("run.finished", subject, finished, t + timedelta(minutes=30)))
    models = [f"model-{m:03d}" for m in range(n_models)]
    for m in models:
        out.add(g.ev("model.created", f"model:{m}", {"name": m, "description": "bench model"}, t))
    for n in range(n_model_versions):
        m = models[n % n_models]
        registered = {
            "run": run_id(n % max(1, runs)),
            "artifact_uri": f"s3://bench/models/{m}/{n}/",
            "digest": g.digest(),
            "framework": "pytorch",
            "signature": {"inputs": [{"name": "x", "shape": [-1, 16]}]},
        }
        out.add(g.ev("model.version.registered", f"model:{m}", registered, t))
    for n in range(n_annotations):
        note = {"text": f"note {n}", "labels": {"kind": "observation"}}
        out.add(g.ev("annotation.added", f"run:{run_id(n % max(1, runs))}", note, t))
    return out


def check_valid(stream: Stream, per_type: int = 25) -> None:
    """Validate a sample of each event type against the contract (the full stream would be slow)."""
    seen: dict[str, int] = defaultdict(int)
    for _key, raw in stream.records:
        doc = orjson.loads(raw)
        if seen[doc["type"]] >= per_type:
            continue
        seen[doc["type"]] += 1
        problems = validate_event(doc)
        if problems:
            raise BenchError(f"generated an invalid {doc['type']} event: {problems[:3]}")


def point_rows(stream: Stream) -> list[Row]:
    """The one-row-per-point rows (the layout before chunks) the projector derives from `stream` (for the COPY baseline)."""
    rows: list[Row] = []
    for position, (_key, raw) in enumerate(stream.records, start=1):
        doc = orjson.loads(raw)
        run = doc["subject"].partition(":")[2]
        occurred = datetime.fromisoformat(doc["occurred_at"])
        for m in doc["payload"]["metrics"]:
            ts = m.get("timestamp")
            at = datetime.fromisoformat(ts) if ts is not None else occurred
            rows.append((PROJECT, run, m["key"], m.get("step", 0), float(m["value"]), at, position))
    return rows


# ------------------------------------------------------------------------ projector process


@dataclass(slots=True)
class ProjectorRun:
    stream: str
    records: int
    units: int  # metric points for the metric stream, events for the other stream
    elapsed_s: float
    startup_s: float
    first_batch_s: float  # gate opened -> first batch's offsets stored
    rss_mib_at_start: float
    rss_mib_max_sampled: float
    rss_mib_hwm: float
    projector_cpu_s: float
    postgres_backend_cpu_s: float
    stats: dict[str, int]
    verified: bool
    problems: list[str]

    @property
    def per_s(self) -> float:
        return self.units / self.elapsed_s


async def run_projector(
    *,
    stream: Stream,
    topic: str,
    total: int,
    bootstrap: str,
    admin_url: str,
    batch_max_records: int | None,
    timeout_s: float,
    command: Sequence[str],
    cprofile_out: Path | None = None,
) -> ProjectorRun:
    """One timed projection of `topic` into a fresh database by a `studbook-server projector`."""
    async with fresh_database(admin_url, DATABASE_PREFIX) as url:
        database = database_name(url)
        group = f"bench-{uuid.uuid4().hex[:12]}"
        # The whole environment (STUDBOOK_WHATIF_* too, for what_if_projector.py).
        env = service_env(url, bootstrap, topic, group, "INFO", inherit=True)
        if batch_max_records is not None:
            env["STUDBOOK_BATCH_MAX_RECORDS"] = str(batch_max_records)
        else:
            env.pop("STUDBOOK_BATCH_MAX_RECORDS", None)
        con = await asyncpg.connect(url)
        # Parked at the start gate (see _common), the clock starts on a warm process and covers
        # consumer start, group join and projection.
        gate = await hold_start_gate(url)
        spawned = time.monotonic()
        argv = list(command)
        if cprofile_out is not None:
            # cProfile runs a script; it writes its stats when the projector exits on SIGTERM.
            script = argv[1:] if Path(argv[0]).name.startswith("python") else argv
            argv = profiled(script, cprofile_out)
        projector = await Service.spawn("projector", argv, env, tail=40)
        pid = projector.proc.pid
        rss_max = 0
        stop_sampling = asyncio.Event()

        async def sample() -> None:
            nonlocal rss_max
            while not stop_sampling.is_set():
                rss_max = max(rss_max, proc_status_kib(pid).get("VmRSS", 0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), POLL_S)

        sampler = asyncio.create_task(sample())
        try:
            await guarded(gate_waiting(con), [projector], 120, "the projector's startup")
            rss_start = proc_status_kib(pid).get("VmRSS", 0)
            cpu_start = proc_cpu_s(pid) or 0.0
            backends_start = await backend_cpu(con, database)
            started = time.monotonic()
            await open_start_gate(gate)
            first_at, done_at = await guarded(
                _wait_stored(con, group, topic, total), [projector], timeout_s, "all records stored"
            )
            cpu_end = proc_cpu_s(pid) or 0.0
            backends_end = await backend_cpu(con, database)
            status = proc_status_kib(pid)
            stop_sampling.set()
            await sampler
            rss_max = max(rss_max, status.get("VmRSS", 0))
            await projector.stop(30)
            problems = await _verify(con, stream, total)
        finally:
            stop_sampling.set()
            await projector.kill()
            sampler.cancel()
            await gate.close()
            await con.close()
    return ProjectorRun(
        stream=stream.name,
        records=total,
        units=stream.metric_points if stream.metric_points else total,
        elapsed_s=done_at - started,
        startup_s=started - spawned,
        first_batch_s=first_at - started,
        rss_mib_at_start=rss_start / 1024,
        rss_mib_max_sampled=rss_max / 1024,
        rss_mib_hwm=status.get("VmHWM", 0) / 1024,
        projector_cpu_s=cpu_end - cpu_start,
        postgres_backend_cpu_s=cpu_delta(backends_start, backends_end),
        stats=projector.stats,
        verified=not problems,
        problems=problems,
    )


async def _wait_stored(
    con: asyncpg.Connection, group: str, topic: str, total: int
) -> tuple[float, float]:
    """Poll consumer_offsets until `total` records are stored; return when the first batch and
    the last were (monotonic clock)."""
    return await wait_total(
        con,
        total,
        """SELECT coalesce(sum(next_offset), 0) FROM public.consumer_offsets
           WHERE group_id = $1 AND topic = $2""",
        group,
        topic,
    )


async def _verify(con: asyncpg.Connection, stream: Stream, total: int) -> list[str]:
    problems = []
    events = await con.fetchval("SELECT count(*) FROM public.events")
    dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
    if events != total:
        problems.append(f"{events} events stored, expected {total}")
    if dead:
        problems.append(f"{dead} dead letters")
    if stream.metric_points:
        points = await con.fetchval("SELECT coalesce(sum(n), 0) FROM rm.metric_chunks")
        if points != stream.metric_points:
            problems.append(f"{points} metric points, expected {stream.metric_points}")
    for p in problems:
        log(f"WARNING: {stream.name}: {p}")
    return problems


# ------------------------------------------------------------------------- COPY baseline


@dataclass(slots=True)
class CopyRun:
    rows: int
    elapsed_s: float
    backend_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.rows / self.elapsed_s


async def copy_baseline(admin_url: str, rows: list[Row], chunk: int) -> CopyRun:
    """COPY the metric rows into a plain table shaped like the old rm.run_metric_points (same index),
    one transaction per `chunk` rows (the most one projector batch can carry)."""
    async with fresh_database(admin_url, DATABASE_PREFIX, migrate=False) as url:
        con = await asyncpg.connect(url)
        try:
            await con.execute(
                """CREATE TABLE points (
                       project text NOT NULL, run_id text NOT NULL, key text NOT NULL,
                       step bigint NOT NULL, value double precision NOT NULL,
                       at timestamptz NOT NULL, position bigint NOT NULL);
                   CREATE INDEX points_series ON points (project, run_id, key, step);"""
            )
            columns = ["project", "run_id", "key", "step", "value", "at", "position"]
            pid = con.get_server_pid()
            cpu0 = proc_cpu_s(pid) or 0.0
            t0 = time.perf_counter()
            for i in range(0, len(rows), chunk):
                async with con.transaction():
                    await con.copy_records_to_table(
                        "points", records=rows[i : i + chunk], columns=columns
                    )
            elapsed = time.perf_counter() - t0
            cpu = (proc_cpu_s(pid) or 0.0) - cpu0
            count = await con.fetchval("SELECT count(*) FROM points")
            if count != len(rows):
                raise BenchError(f"COPY stored {count} rows, expected {len(rows)}")
        finally:
            await con.close()
    return CopyRun(len(rows), elapsed, cpu)


# ------------------------------------------------------------------------------ profiling


class TimedConnection:
    """Delegates to an asyncpg connection, adding up the wall time of each statement."""

    def __init__(self, con: asyncpg.Connection) -> None:
        self._con = con
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    @staticmethod
    def _label(sql: str) -> str:
        return " ".join(sql.split())[:70]

    async def _timed(self, label: str, call: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter()
        try:
            return await call()
        finally:
            self.times[label] += time.perf_counter() - t0
            self.calls[label] += 1

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._label(sql), lambda: self._con.execute(sql, *args))

    async def executemany(self, sql: str, args: Any) -> Any:
        return await self._timed(
            "executemany " + self._label(sql), lambda: self._con.executemany(sql, args)
        )

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._label(sql), lambda: self._con.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._label(sql), lambda: self._con.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._label(sql), lambda: self._con.fetchval(sql, *args))

    async def copy_records_to_table(self, table: str, **kw: Any) -> Any:
        return await self._timed(
            f"COPY {table}", lambda: self._con.copy_records_to_table(table, **kw)
        )


class GcClock:
    """Time spent in the cyclic garbage collector (gc.callbacks), per generation collected."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)


def _batches(stream: Stream, size: int) -> list[list[tuple[int, bytes]]]:
    values = list(enumerate(raw for _key, raw in stream.records))
    return [values[i : i + size] for i in range(0, len(values), size)]


def _decode(batch: Sequence[tuple[int, bytes]], topic: str) -> tuple[Decoded, dict[int, int]]:
    decoded = Decoded()
    for offset, raw in batch:
        item = decode_record(raw, f"kafka:{topic}/0@{offset}")
        if isinstance(item, DeadLetter):
            decoded.dead.append(item)
        else:
            decoded.incoming.append(item)
    return decoded, {0: batch[-1][0] + 1}


async def profile_stream(admin_url: str, stream: Stream, batch: int, top: int) -> dict[str, Any]:
    """Where an in-process projector spends its time on `stream` (no Kafka: records in memory).

    Pass 1 (no profiler): wall-clock phases, replaying store_batch's steps with each statement
    timed, plus the split of decode_record into its parts. Pass 2: cProfile over the real
    decode_record + store_batch loop. Pass 3: tracemalloc peak of one batch.
    """
    batches = _batches(stream, batch)
    topic, group = f"inproc-{stream.name}", "inproc"
    # Compile the validators first (the projector pays this once, at its first batch).
    for _off, raw in batches[0][:50]:
        validate_event(orjson.loads(raw))

    phases: dict[str, float] = defaultdict(float)
    gc_clock = GcClock()
    async with fresh_database(admin_url, DATABASE_PREFIX) as url:
        raw_con = await postgres.connect(url)
        con = TimedConnection(raw_con)
        try:
            gc_clock.start()
            t_all = time.perf_counter()
            for chunk in batches:
                t0 = time.perf_counter()
                decoded, offsets = _decode(chunk, topic)
                t1 = time.perf_counter()
                phases["decode_record"] += t1 - t0
                async with raw_con.transaction():
                    t1 = time.perf_counter()
                    stored = await postgres.append(con, decoded.incoming)
                    t2 = time.perf_counter()
                    state = await load_state(con, state_keys(stored))
                    t3 = time.perf_counter()
                    changes = project(stored, state)
                    t4 = time.perf_counter()
                    await write_changes(con, changes)
                    t5 = time.perf_counter()
                    await con.execute(_STORE_OFFSETS, group, topic, [0], [offsets[0]])
                    t6 = time.perf_counter()
                t7 = time.perf_counter()
                phases["append (postgres.append)"] += t2 - t1
                phases["load_state"] += t3 - t2
                phases["project (pure)"] += t4 - t3
                phases["write_changes"] += t5 - t4
                phases["store offsets"] += t6 - t5
                phases["commit"] += t7 - t6
            wall = time.perf_counter() - t_all
            gc_clock.stop()
            statements = sorted(con.times.items(), key=lambda kv: -kv[1])
        finally:
            await raw_con.close()

    # decode_record's parts, on the same records (CPU only).
    parts: dict[str, float] = defaultdict(float)
    for chunk in batches:
        for _off, raw in chunk:
            t0 = time.perf_counter()
            doc = orjson.loads(raw)
            t1 = time.perf_counter()
            validate_event(doc)
            t2 = time.perf_counter()
            event_from_dict(doc)  # validates again, then converts and upcasts
            t3 = time.perf_counter()
            parts["orjson.loads"] += t1 - t0
            parts["validate_event"] += t2 - t1
            parts["event_from_dict (incl. its own validate_event)"] += t3 - t2

    # cProfile over the real path.
    prof = cProfile.Profile()
    async with fresh_database(admin_url, DATABASE_PREFIX) as url:
        raw_con = await postgres.connect(url)
        try:
            stats = Stats()
            t0 = time.perf_counter()
            prof.enable()
            for chunk in batches:
                decoded, offsets = _decode(chunk, topic)
                await store_batch(
                    raw_con, decoded, group_id=group, topic=topic, next_offsets=offsets, stats=stats
                )
            prof.disable()
            profiled_wall = time.perf_counter() - t0
        finally:
            await raw_con.close()
    raw_stats, _total, text = print_pstats(prof, top)
    log(f"cProfile of decode_record + store_batch, {stream.name} stream:\n{text}")

    def _fn(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        short = filename.split("/site-packages/")[-1].split("/services/")[-1]
        return f"{short}:{line}({name})"

    # Memory: the Python heap one batch needs, decode through store (tracemalloc peak).
    async with fresh_database(admin_url, DATABASE_PREFIX) as url:
        raw_con = await postgres.connect(url)
        try:
            biggest = max(batches, key=lambda c: sum(len(r) for _o, r in c))
            tracemalloc.start(1)
            decoded, offsets = _decode(biggest, topic)
            await store_batch(
                raw_con, decoded, group_id=group, topic=topic, next_offsets=offsets, stats=Stats()
            )
            _cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            await raw_con.close()

    units = stream.metric_points or len(stream.records)
    return {
        "stream": stream.name,
        "batch_records": batch,
        "batches": len(batches),
        "wall_s": round(wall, 3),
        "units_per_s": round(units / wall),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "decode_parts_s": {k: round(v, 3) for k, v in parts.items()},
        "statements_s": {k: round(v, 3) for k, v in statements[:12]},
        "statement_calls": {k: con.calls[k] for k, _ in statements[:12]},
        "sql_wait_s": round(sum(con.times.values()), 3),
        "gc_s": round(gc_clock.seconds, 3),
        "gc_collections": gc_clock.collections,
        "python_cpu_s": round(wall - sum(con.times.values()), 3),
        "cprofile_wall_s": round(profiled_wall, 3),
        **top_functions(raw_stats, top, _fn),
        "tracemalloc_peak_mib_one_batch": round(peak / (1 << 20), 1),
    }


# ---------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=2000, help="runs in the stream (default 2000)")
    p.add_argument("--metric-events", type=int, default=2000, help="run.metrics.logged events")
    p.add_argument("--points-per-event", type=int, default=100, help="metric points per event")
    p.add_argument("--other-events", type=int, default=20_000, help="events of the other stream")
    p.add_argument("--repeat", type=int, default=3, help="measurements per stream (median)")
    p.add_argument("--seed", type=int, default=20260301)
    p.add_argument(
        "--no-point-timestamps",
        dest="point_timestamps",
        action="store_false",
        help="metric points without their own timestamp (they then take occurred_at)",
    )
    p.add_argument(
        "--batch-max-records",
        type=int,
        default=None,
        help="STUDBOOK_BATCH_MAX_RECORDS for the projector (default: its own, 2000)",
    )
    add_profile_args(p)
    p.add_argument(
        "--projector-cprofile",
        type=Path,
        metavar="DIR",
        help="run the projector subprocess under cProfile, writing DIR/<stream>-<i>.prof "
        "(diagnosis only: the profiler slows it down, so its rates are not comparable)",
    )
    p.add_argument(
        "--projector-cmd",
        default=f"{SERVER.relative_to(ROOT)} projector",
        help="the projector command, run in the repository root (default: %(default)s); "
        "e.g. '.venv/bin/python bench/what_if_projector.py' to measure a candidate fix",
    )
    add_service_args(p, timeout=900, timeout_help="seconds allowed per projection")
    args = parse_with_tiny(p, TINY, argv)
    args.projector_cmd = shlex.split(args.projector_cmd)
    if args.projector_cprofile:
        args.projector_cprofile = args.projector_cprofile.resolve()
        args.projector_cprofile.mkdir(parents=True, exist_ok=True)
    service_defaults(args)
    if min(args.runs, args.metric_events, args.points_per_event, args.repeat) < 1:
        p.error("--runs, --metric-events, --points-per-event and --repeat must be >= 1")
    if args.points_per_event > 10_000:
        p.error("--points-per-event: the schema allows at most 10,000 metrics per event")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    load_start = loadavg_1m()
    log(
        f"generating: {args.metric_events} metric events x {args.points_per_event} points, "
        f"{args.other_events} other events, {args.runs} runs (seed {args.seed})"
    )
    metrics = metric_stream(
        args.seed, args.runs, args.metric_events, args.points_per_event, args.point_timestamps
    )
    other = other_stream(args.seed + 1, args.runs, args.other_events)
    check_valid(metrics)
    check_valid(other)
    rows = point_rows(metrics)
    batch = args.batch_max_records or PROJECTOR_DEFAULT_BATCH
    log(
        f"generated {len(metrics.records)} metric events ({metrics.metric_points} points, "
        f"{sum(len(v) for _k, v in metrics.records) / 1e6:.1f} MB) and {len(other.records)} "
        f"other events ({sum(len(v) for _k, v in other.records) / 1e6:.1f} MB)"
    )

    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    suffix = uuid.uuid4().hex[:10]
    topics = {s.name: f"studbook-bench-{s.name}-{suffix}" for s in (metrics, other)}
    created: list[str] = []
    try:
        totals = {}
        for s in (metrics, other):
            await create_topic(admin, topics[s.name])
            created.append(topics[s.name])
            t0 = time.perf_counter()
            totals[s.name] = await produce(args.bootstrap, topics[s.name], s.records)
            log(
                f"produced {totals[s.name]} records to {topics[s.name]} ({PARTITIONS} partitions) "
                f"in {time.perf_counter() - t0:.1f}s"
            )

        runs: dict[str, list[ProjectorRun]] = {"metrics": [], "other": []}
        copies: list[CopyRun] = []
        for i in range(1, args.repeat + 1):
            # Interleaved, so slow drift on a shared machine hits every measurement alike.
            for s in (metrics, other):
                r = await run_projector(
                    stream=s,
                    topic=topics[s.name],
                    total=totals[s.name],
                    bootstrap=args.bootstrap,
                    admin_url=args.database_url,
                    batch_max_records=args.batch_max_records,
                    timeout_s=args.timeout,
                    command=args.projector_cmd,
                    cprofile_out=(
                        args.projector_cprofile / f"{s.name}-{i}.prof"
                        if args.projector_cprofile
                        else None
                    ),
                )
                runs[s.name].append(r)
                unit = "points/s" if s.metric_points else "events/s"
                log(
                    f"[{i}/{args.repeat}] projector {s.name}: {r.units} in {r.elapsed_s:.2f}s = "
                    f"{r.per_s:,.0f} {unit}; RSS peak {r.rss_mib_hwm:.0f} MiB; CPU projector "
                    f"{r.projector_cpu_s:.2f}s, postgres {r.postgres_backend_cpu_s:.2f}s; "
                    f"batches {r.stats.get('batches')}, records {r.stats.get('records')} "
                    f"(duplicates {r.stats.get('duplicates')})"
                )
            c = await copy_baseline(args.database_url, rows, batch * args.points_per_event)
            copies.append(c)
            log(
                f"[{i}/{args.repeat}] COPY baseline: {c.rows} rows in {c.elapsed_s:.2f}s = "
                f"{c.per_s:,.0f} rows/s"
            )
    finally:
        with contextlib.suppress(Exception):
            if created:
                await finish(admin.delete_topics(created))
        await admin.close()

    m, o = runs["metrics"], runs["other"]
    metric_per_s = median([r.per_s for r in m])
    other_per_s = median([r.per_s for r in o])
    copy_per_s = median([c.per_s for c in copies])
    rss_peak = max(r.rss_mib_hwm for r in m + o)
    met = {
        "metric_points_per_s": metric_per_s >= TARGET_METRIC_POINTS_PER_S,
        "other_events_per_s": other_per_s >= TARGET_OTHER_EVENTS_PER_S,
        "projector_rss_mib": rss_peak < TARGET_RSS_MIB,
    }

    def per_run(rs: list[ProjectorRun], key: str) -> list[float]:
        return [round(float(getattr(r, key)), 3) for r in rs]

    result: dict[str, Any] = {
        "metric_points_per_s": round(metric_per_s),
        "metric_events_per_s": round(median([r.records / r.elapsed_s for r in m])),
        "other_events_per_s": round(other_per_s),
        "copy_baseline_rows_per_s": round(copy_per_s),
        "ratio_projector_to_copy": round(metric_per_s / copy_per_s, 3),
        "projector_rss_mib_peak": round(rss_peak, 1),
        "projector_rss_mib_peak_median": {
            "metrics": round(median([r.rss_mib_hwm for r in m]), 1),
            "other": round(median([r.rss_mib_hwm for r in o]), 1),
        },
        "projector_rss_mib_idle": round(median([r.rss_mib_at_start for r in m + o]), 1),
        "repeat": args.repeat,
        "medians": True,
        "targets": {
            "metric_points_per_s": TARGET_METRIC_POINTS_PER_S,
            "other_events_per_s": TARGET_OTHER_EVENTS_PER_S,
            "projector_rss_mib": TARGET_RSS_MIB,
        },
        "targets_met": met,
        "cpu_per_run_s_median": {
            "metrics_projector": round(median([r.projector_cpu_s for r in m]), 2),
            "metrics_postgres": round(median([r.postgres_backend_cpu_s for r in m]), 2),
            "other_projector": round(median([r.projector_cpu_s for r in o]), 2),
            "other_postgres": round(median([r.postgres_backend_cpu_s for r in o]), 2),
            "copy_postgres": round(median([c.backend_cpu_s for c in copies]), 2),
        },
        "samples": {
            "metric_points_per_s": [round(r.per_s) for r in m],
            "metric_elapsed_s": per_run(m, "elapsed_s"),
            "other_events_per_s": [round(r.per_s) for r in o],
            "other_elapsed_s": per_run(o, "elapsed_s"),
            "copy_rows_per_s": [round(c.per_s) for c in copies],
            "copy_elapsed_s": [round(c.elapsed_s, 3) for c in copies],
            "rss_mib_peak": per_run(m + o, "rss_mib_hwm"),
            "startup_s": per_run(m + o, "startup_s"),
            "first_batch_s": per_run(m + o, "first_batch_s"),
            # The projector's own counters (its "stopped: Stats(...)" log line) per run:
            # records > events produced means records were fetched and decoded twice.
            "projector_stats": {"metrics": [r.stats for r in m], "other": [r.stats for r in o]},
        },
        "verified": all(r.verified for r in m + o),
        "workload": {
            "runs": args.runs,
            "metric_events": len(metrics.records),
            "points_per_event": args.points_per_event,
            "metric_points": metrics.metric_points,
            "point_timestamps": args.point_timestamps,
            "other_events": len(other.records),
            "other_event_types": dict(sorted(other.counts.items())),
            "seed": args.seed,
            "partitions": PARTITIONS,
            "batch_max_records": batch,
            "copy_chunk_rows": batch * args.points_per_event,
            "projector_cmd": " ".join(args.projector_cmd),
            "projector_whatif_env": {
                k: v for k, v in sorted(os.environ.items()) if k.startswith("STUDBOOK_WHATIF_")
            },
            "projector_cprofile": str(args.projector_cprofile) if args.projector_cprofile else None,
        },
        "machine": {
            **await machine_info(args.database_url),
            # The host is shared: a high load average means other work overlapped the run.
            "loadavg_1m_start_end": [load_start, loadavg_1m()],
        },
    }

    want_profile = args.profile or (not args.no_profile and not all(met.values()))
    profiles = []
    if want_profile:
        profile_metrics = args.profile or not (
            met["metric_points_per_s"] and met["projector_rss_mib"]
        )
        profile_other = args.profile or not met["other_events_per_s"]
        for s, wanted in ((metrics, profile_metrics), (other, profile_other)):
            if wanted:
                log(f"profiling the in-process path on the {s.name} stream")
                profiles.append(await profile_stream(args.database_url, s, batch, args.profile_top))
    result["profile"] = profiles or None
    result["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async, parse_args(argv), cancel_on_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())

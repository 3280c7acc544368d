"""End to end: metric points/s from the SDK to the read models, through each transport.

A training-like client (a subprocess: `studbook.init`, 4 runs, `run.log_metric(key, value,
step)` over 10 keys, then `studbook.flush`) sends `--points` points through

* `http`: a real `studbook-server ingest` subprocess, auth on (a token made with
  `studbook_server.auth.create_token`), which publishes to Kafka;
* `kafka`: straight to Kafka (`kafka://`);

and a real `studbook-server projector` subprocess, started (and joined to its group) before the
client, stores them in PostgreSQL. Each measurement has a fresh database (created from the admin
URL, migrated, dropped afterwards) and a fresh topic (4 partitions, deleted afterwards).

The clock starts at the client's first `log_metric` (the client reports it; CLOCK_MONOTONIC is
system-wide on Linux) and stops when the read models hold every point. The poll reads
`sum(points)` of `rm.run_metrics` (written in the same transaction as the chunks of
`rm.metric_chunks`, so it reaches N at the same commit) because a sum over a growing
table every 20 ms would take CPU from the pipeline on a small machine; once it is there,
`SELECT sum(n) FROM rm.metric_chunks` must equal N, and there must be no dead letters.

Also reported: the client's own rate until `flush` returned (SDK side), its peak RSS (VmHWM)
above a bare `python -c 'import studbook'`, and the CPU seconds of every process in the timed
window (client, gateway, projector, PostgreSQL backends, Kafka broker).

Baseline, side by side in the same run: the projector alone on the same number of points,
pre-built as `run.metrics.logged` events (`--baseline-points-per-event`, default 100) and
produced to a fresh topic with aiokafka before the projector starts. As in
`projector_throughput.py`, the projector is parked at start-up (after its imports and pool,
before its consumer) and the clock starts when it is let go; the time from its spawn is
reported too. Every measurement is repeated `--repeat` times, interleaved; the report gives
medians and the ratios end-to-end / projector-alone.

If a transport misses the target (or with `--profile`), one more end-to-end pass per such
transport runs the client (its main thread and the SDK's background thread), the gateway and the
projector under cProfile, and the top functions of each go into the JSON (full listings on
stderr, `.prof` files in `--profile-dir`). `--whatif-gateway-one-validation` (diagnosis only)
runs the gateway patched at runtime to validate each event once instead of twice.

Prints ONE JSON object on stdout; progress goes to stderr.

    .venv/bin/python bench/sdk_end_to_end.py [--points 400000] [--runs 4] [--keys 10]
        [--repeat 3] [--transports http,kafka] [--profile | --no-profile]
        [--whatif-gateway-one-validation]

Needs the services of `scripts/stack up` (STUDBOOK_KAFKA_BOOTSTRAP / STUDBOOK_DATABASE_URL, or
the stack's defaults). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from _common import (
    PARTITIONS,
    PROJECT,
    ROOT,
    SERVER,
    BenchError,
    Service,
    add_profile_args,
    add_service_args,
    backend_cpu,
    cpu_by_name,
    cpu_delta,
    database_name,
    fresh_database,
    fresh_topic,
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
    produce,
    profiled,
    run_bench,
    service_defaults,
    service_env,
    top_functions,
    wait_total,
)
from studbook_server import auth
from studbook_server.adapters import postgres

TARGET_POINTS_PER_S = 100_000
TRANSPORTS = ("http", "kafka")
DATABASE_PREFIX = "studbook_e2e_"
# `--tiny`: a few seconds per transport, for tests/test_bench_smoke.py.
TINY = {"points": 2000, "repeat": 1}


# ------------------------------------------------------------------------------- the client

# Run as `python -c CLIENT CONFIG_JSON` (or from a file under cProfile). Prints one JSON line.
CLIENT = r"""
import json, resource, sys, time

cfg = json.loads(sys.argv[1])


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


if cfg.get("dispatcher_profile"):
    # cProfile sees one thread: profile the SDK's background thread on its own.
    import cProfile
    from studbook import _dispatch

    _original_main = _dispatch.Dispatcher._main

    def _profiled_main(self):
        prof = cProfile.Profile()
        prof.enable()
        try:
            _original_main(self)
        finally:
            prof.disable()
            prof.dump_stats(cfg["dispatcher_profile"])

    _dispatch.Dispatcher._main = _profiled_main

t_start = time.monotonic()
import studbook
from studbook import _api

studbook.init(
    url=cfg["url"], project=cfg["project"], token=cfg["token"], topic=cfg["topic"],
    spool_dir=cfg["spool_dir"],
)
runs = [studbook.start_run(f"e2e-{i}") for i in range(cfg["runs"])]
keys = [f"metric_{k}" for k in range(cfg["keys"])]
log_fns = [run.log_metric for run in runs]
steps = cfg["points"] // (cfg["runs"] * cfg["keys"])
cpu_first = cpu_s()
t_first = time.monotonic()
for step in range(steps):
    value = 1.0 / (step + 1)
    for log_metric in log_fns:
        for key in keys:
            log_metric(key, value, step)
t_logged = time.monotonic()
studbook.flush(timeout=cfg["flush_timeout"])
t_flushed = time.monotonic()
cpu_flushed = cpu_s()
with open("/proc/self/status") as f:
    status = {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in f)
        if k in ("VmHWM", "VmRSS")
    }
stats = dict(_api._client.dispatcher().stats)
for run in runs:
    run.finish()
studbook.shutdown(timeout=cfg["flush_timeout"])
print(json.dumps({
    "t_start": t_start, "t_first": t_first, "t_logged": t_logged, "t_flushed": t_flushed,
    "cpu_first_s": cpu_first, "cpu_flushed_s": cpu_flushed, "cpu_end_s": cpu_s(),
    "vmhwm_kib": status["VmHWM"], "vmrss_kib": status["VmRSS"],
    "dispatcher_stats": stats, "run_ids": [run.id for run in runs],
}), flush=True)
"""

# Diagnosis only (--whatif-gateway-one-validation): the gateway as it would be with one
# validation per event. `_post_events` used to call `validate_event`, then `event_from_dict`,
# which validates the same document again; this turns the first call (the one the ingest module
# imported) into a no-op, so every event is still validated once, by event_from_dict. A gateway
# that no longer imports `validate_event` validates once already: patching it would change
# nothing, so the what-if refuses to run rather than measure the code as it is under its name.
WHATIF_GATEWAY = r"""
import sys

import studbook_server.ingest as ingest

if not hasattr(ingest, "validate_event"):
    sys.exit(
        "--whatif-gateway-one-validation: this gateway validates each event once already "
        "(studbook_server.ingest does not call validate_event); there is nothing to patch"
    )
ingest.validate_event = lambda raw, index=0: []

from studbook_server.cli import main

sys.exit(main())
"""

BARE = r"""
import studbook
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
"""


def bare_import_hwm_kib(samples: int = 3) -> float:
    """VmHWM of `python -c 'import studbook'` (median of a few)."""
    values = []
    for _ in range(samples):
        out = subprocess.run(
            [sys.executable, "-c", BARE], capture_output=True, text=True, check=True, cwd=ROOT
        )
        values.append(int(out.stdout.strip()))
    return statistics.median(values)


# ------------------------------------------------------------------------------ services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kafka_broker_pid() -> int | None:
    """The local Kafka broker's pid (a JVM running kafka.Kafka), for its CPU time; best effort."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                return int(entry.name)
    return None


async def start_gateway(
    env: dict[str, str], port: int, prof: Path | None, script: Path = SERVER
) -> Service:
    argv = profiled([str(script), "ingest", "--port", str(port)], prof)
    if prof is None and script != SERVER:
        argv = [sys.executable, *argv]
    # SIGINT, not SIGTERM: uvicorn re-raises the signal it caught once it has shut down, and a
    # re-raised SIGTERM kills the process before cProfile writes its file (SIGINT becomes a
    # KeyboardInterrupt, which cProfile's `finally` outlives).
    gw = await Service.spawn("gateway", argv, env, stop_signal=signal.SIGINT)
    await guarded(_ready_http(port), [gw], 60, "the gateway's /readyz")
    return gw


async def _ready_http(port: int) -> None:
    """Until GET /readyz answers 200 (PostgreSQL and Kafka reachable)."""
    while True:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if status.split(b" ")[1:2] == [b"200"]:
                return
        await asyncio.sleep(0.05)


async def start_projector(env: dict[str, str], prof: Path | None) -> Service:
    argv = profiled([str(SERVER), "projector"], prof)
    return await Service.spawn("projector", argv, env, ready=r"assigned \[")


POINTS_SQL = "SELECT coalesce(sum(points), 0) FROM rm.run_metrics"


async def wait_points(con: asyncpg.Connection, total: int) -> tuple[float, float]:
    """Poll until the read models hold `total` points; return (first point seen, all there)."""
    return await wait_total(con, total, POINTS_SQL)


async def verify(con: asyncpg.Connection, total: int) -> dict[str, Any]:
    points = await con.fetchval("SELECT coalesce(sum(n), 0) FROM rm.metric_chunks")
    dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
    metric_events = await con.fetchval(
        "SELECT count(*) FROM public.events WHERE type = 'run.metrics.logged'"
    )
    # How many of the partitions the runs' subjects (the record keys) hashed to.
    partitions = await con.fetchval(
        "SELECT count(*) FROM public.consumer_offsets WHERE next_offset > 0"
    )
    problems = []
    if points != total:
        problems.append(f"rm.metric_chunks holds {points} points, expected {total}")
    if dead:
        problems.append(f"{dead} dead letters")
    for p in problems:
        log(f"WARNING: {p}")
    return {
        "points": points,
        "metric_events": metric_events,
        "points_per_event": round(points / metric_events, 1) if metric_events else None,
        "partitions_used": partitions,
        "problems": problems,
    }


# ----------------------------------------------------------------------- one e2e measurement


@dataclass(slots=True)
class E2ERun:
    transport: str
    points: int
    elapsed_s: float  # client's first log_metric -> every point in the read models
    from_spawn_s: float  # client spawned -> every point in the read models
    client_log_s: float  # first log_metric -> last log_metric returned
    client_flush_s: float  # first log_metric -> flush returned
    lag_after_flush_s: float  # flush returned -> every point in the read models
    client_hwm_kib: int
    cpu_s: dict[str, float]
    dispatcher_stats: dict[str, int]
    projector_stats: dict[str, int]
    check: dict[str, Any]

    @property
    def per_s(self) -> float:
        return self.points / self.elapsed_s


@dataclass(slots=True)
class ProfileFiles:
    client_main: Path
    client_dispatcher: Path
    gateway: Path | None
    projector: Path


async def run_e2e(
    transport: str, args: argparse.Namespace, kafka_pid: int | None, prof: ProfileFiles | None
) -> E2ERun:
    async with (
        fresh_database(args.database_url, DATABASE_PREFIX) as url,
        fresh_topic(args.bootstrap, f"studbook-e2e-{transport}-") as topic,
    ):
        database = database_name(url)
        group = f"e2e-{uuid.uuid4().hex[:10]}"
        con = await postgres.connect(url)
        services: list[Service] = []
        try:
            _, token = await auth.create_token(con, "bench-e2e", ["write"], [PROJECT])
            projector = await start_projector(
                service_env(url, args.bootstrap, topic, group, "INFO"),
                prof.projector if prof else None,
            )
            services.append(projector)
            target = f"kafka://{args.bootstrap}"
            gateway: Service | None = None
            if transport == "http":
                port = _free_port()
                gateway = await start_gateway(
                    service_env(url, args.bootstrap, topic, group, "WARNING"),
                    port,
                    prof.gateway if prof else None,
                    args.gateway_script,
                )
                services.append(gateway)
                target = f"http://127.0.0.1:{port}"
            # The projector has joined its group and sits positioned on the empty topic.
            await guarded(projector.ready.wait(), services, 120, "the projector's assignment")

            with tempfile.TemporaryDirectory(prefix="studbook-e2e-") as tmp:
                cfg = {
                    "url": target,
                    "project": PROJECT,
                    "token": token,
                    "topic": topic,
                    "spool_dir": str(Path(tmp) / "spool"),
                    "runs": args.runs,
                    "keys": args.keys,
                    "points": args.points,
                    "flush_timeout": args.timeout,
                    "dispatcher_profile": str(prof.client_dispatcher) if prof else None,
                }
                if prof:
                    script = Path(tmp) / "client.py"
                    script.write_text(CLIENT)
                    argv = profiled([str(script), json.dumps(cfg)], prof.client_main)
                else:
                    argv = [sys.executable, "-c", CLIENT, json.dumps(cfg)]
                env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
                env["STUDBOOK_CACHE_DIR"] = str(Path(tmp) / "cache")

                pids = {s.name: s.proc.pid for s in services}
                if kafka_pid is not None:
                    pids["kafka"] = kafka_pid
                cpu0 = cpu_by_name(pids)
                pg0 = await backend_cpu(con, database)
                spawned = time.monotonic()
                client = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=tmp,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                client_io = asyncio.ensure_future(client.communicate())
                try:
                    _first, done_at = await guarded(
                        _points_or_client_failure(con, args.points, client, client_io),
                        services,
                        args.timeout,
                        f"{args.points} points in the read models",
                    )
                    cpu1 = cpu_by_name(pids)
                    pg1 = await backend_cpu(con, database)
                    out, err = await asyncio.wait_for(client_io, args.timeout)
                finally:
                    if client.returncode is None:
                        client.kill()
                        await client.wait()
                if client.returncode != 0:
                    raise BenchError(f"client exited {client.returncode}:\n{err.decode()[-3000:]}")
                c = json.loads(out.decode().strip().splitlines()[-1])
            check = await verify(con, args.points)
        finally:
            for s in reversed(services):
                await s.stop()
            await con.close()
    cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    cpu["client"] = round(c["cpu_flushed_s"] - c["cpu_first_s"], 2)
    cpu["postgres"] = round(cpu_delta(pg0, pg1), 2)
    cpu["wall"] = round(done_at - c["t_first"], 2)
    return E2ERun(
        transport=transport,
        points=args.points,
        elapsed_s=done_at - c["t_first"],
        from_spawn_s=done_at - spawned,
        client_log_s=c["t_logged"] - c["t_first"],
        client_flush_s=c["t_flushed"] - c["t_first"],
        lag_after_flush_s=done_at - c["t_flushed"],
        client_hwm_kib=c["vmhwm_kib"],
        cpu_s=cpu,
        dispatcher_stats=c["dispatcher_stats"],
        projector_stats=projector.stats,
        check=check,
    )


async def _points_or_client_failure(
    con: asyncpg.Connection,
    total: int,
    client: asyncio.subprocess.Process,
    client_io: asyncio.Future[tuple[bytes, bytes]],
) -> tuple[float, float]:
    """`wait_points`, but a client that fails ends the wait at once."""
    poll = asyncio.ensure_future(wait_points(con, total))
    try:
        waiting: set[asyncio.Future[Any]] = {poll, client_io}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if poll not in done and client.returncode != 0:
            _out, err = client_io.result()
            raise BenchError(f"client exited {client.returncode}:\n{err.decode()[-3000:]}")
        try:
            # The client has flushed: what is still missing must arrive soon, or it never will.
            result: tuple[float, float] = await asyncio.wait_for(asyncio.shield(poll), 120)
        except TimeoutError:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            got = await con.fetchval(POINTS_SQL)
            raise BenchError(
                f"the client flushed, but only {got} of {total} points reached the read models"
            ) from None
        return result
    finally:
        if not poll.done():
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll


# ---------------------------------------------------------------------------- the baseline


def baseline_records(
    points: int, runs: int, keys: int, per_event: int
) -> list[tuple[bytes, bytes]]:
    """(key, value) Kafka records shaped like the SDK's: one run.started per run, then
    run.metrics.logged events of `per_event` points (key, value, step, timestamp), the same
    (run, key, step) grid as the client's."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    producer = {"name": "studbook-sdk", "version": "bench", "host": socket.gethostname()}
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    records: list[tuple[bytes, bytes]] = []

    def add(event_type: str, run: str, payload: dict[str, Any], at: str, version: int) -> None:
        subject = f"run:{run}"
        doc = {
            "event_id": str(uuid.uuid4()),
            "type": event_type,
            "schema_version": version,
            "occurred_at": at,
            "actor": "bench@e2e",
            "project": PROJECT,
            "subject": subject,
            "producer": producer,
            "payload": payload,
        }
        records.append((subject.encode(), orjson.dumps(doc)))

    def stamp(i: int) -> str:
        t = t0 + timedelta(microseconds=10 * i)
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    for r in run_ids:
        add("run.started", r, {"name": "baseline"}, stamp(0), 2)
    steps = points // (runs * keys)
    pending: dict[str, list[dict[str, Any]]] = {r: [] for r in run_ids}
    i = 0
    for step in range(steps):
        value = 1.0 / (step + 1)
        for r in run_ids:
            buf = pending[r]
            for k in range(keys):
                i += 1
                at = stamp(i)
                buf.append({"key": f"metric_{k}", "value": value, "step": step, "timestamp": at})
                if len(buf) == per_event:
                    add("run.metrics.logged", r, {"metrics": buf}, at, 1)
                    buf = pending[r] = []
    for r, buf in pending.items():
        if buf:
            add("run.metrics.logged", r, {"metrics": buf}, buf[-1]["timestamp"], 1)
    return records


@dataclass(slots=True)
class BaselineRun:
    points: int
    elapsed_s: float  # projector let go (warm: imports and pool done) -> every point stored
    from_spawn_s: float  # projector spawned -> every point stored
    first_batch_s: float
    cpu_s: dict[str, float]
    projector_stats: dict[str, int]
    check: dict[str, Any]

    @property
    def per_s(self) -> float:
        return self.points / self.elapsed_s


async def run_baseline(
    args: argparse.Namespace, records: list[tuple[bytes, bytes]], kafka_pid: int | None
) -> BaselineRun:
    async with (
        fresh_database(args.database_url, DATABASE_PREFIX) as url,
        fresh_topic(args.bootstrap, "studbook-e2e-baseline-") as topic,
    ):
        database = database_name(url)
        await produce(args.bootstrap, topic, records)
        group = f"e2e-base-{uuid.uuid4().hex[:10]}"
        con = await postgres.connect(url)
        # The start gate (see _common): parked after its imports and pool, before its consumer.
        gate = await hold_start_gate(url)
        projector: Service | None = None
        try:
            spawned = time.monotonic()
            projector = await start_projector(
                service_env(url, args.bootstrap, topic, group, "INFO"), None
            )
            await guarded(gate_waiting(con), [projector], 120, "the projector's start-up")
            pids = {"projector": projector.proc.pid}
            if kafka_pid is not None:
                pids["kafka"] = kafka_pid
            cpu0 = cpu_by_name(pids)
            pg0 = await backend_cpu(con, database)
            started = time.monotonic()
            await open_start_gate(gate)
            first_at, done_at = await guarded(
                wait_points(con, args.points), [projector], args.timeout, "all points stored"
            )
            cpu1 = cpu_by_name(pids)
            pg1 = await backend_cpu(con, database)
            check = await verify(con, args.points)
        finally:
            if projector is not None:
                await projector.stop()
            await gate.close()
            await con.close()
    cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    cpu["postgres"] = round(cpu_delta(pg0, pg1), 2)
    cpu["wall"] = round(done_at - started, 2)
    return BaselineRun(
        points=args.points,
        elapsed_s=done_at - started,
        from_spawn_s=done_at - spawned,
        first_batch_s=first_at - started,
        cpu_s=cpu,
        projector_stats=projector.stats,
        check=check,
    )


# ------------------------------------------------------------------------------- profiling


# (file path fragment, function): the steps of the pipeline, reported by cumulative time.
KEY_FUNCTIONS = (
    ("studbook/_run.py", "log_metric"),
    ("studbook/_api.py", "flush"),
    ("studbook/_dispatch.py", "encode_metrics"),
    ("studbook/_dispatch.py", "_send"),
    ("studbook/_transport.py", "send"),
    ("studbook/_transport.py", "transport_for"),
    ("studbook/_kafka.py", "_send"),
    ("studbook_server/ingest.py", "_post_events"),
    ("studbook_server/ingest.py", "_parse"),
    ("studbook_server/auth.py", "authenticate"),
    ("studbook_server/adapters/publish.py", "publish"),
    ("studbook_server/projector.py", "_process"),
    ("studbook_server/projector.py", "decode_record"),
    ("studbook_server/projector.py", "store_batch"),
    ("studbook_server/domain/contract.py", "validate_event"),
    ("studbook_server/domain/contract.py", "event_from_dict"),
    ("studbook_server/domain/contract.py", "_integral_floats_to_int"),
    ("studbook_server/adapters/postgres.py", "append"),
    ("studbook_server/adapters/readmodels.py", "apply_batch"),
    ("studbook_server/adapters/readmodels.py", "write_changes"),
    ("studbook_server/domain/projection.py", "project"),
    ("studbook_server/domain/projection.py", "_run_metrics_logged"),
    ("studbook_server/domain/projection.py", "add"),
    ("asyncpg/connection.py", "copy_records_to_table"),
    ("aiokafka/consumer/consumer.py", "getmany"),
)
# Where an asyncio process (or a blocking client) waits: the event loop's poll, socket reads.
IDLE_FUNCTIONS = ("<method 'poll' of 'select.epoll' objects>", "<method 'recv_into' of")


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/services/", "/sdk/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def summarize_profile(path: Path, title: str, top: int) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_size == 0:
        log(f"WARNING: no profile written at {path}")
        return None
    raw, total, text = print_pstats(str(path), top)
    log(f"cProfile, {title} ({path}):\n{text}")

    def fn(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        return f"{_short(filename)}:{line}({name})"

    key_cum: dict[str, float] = {}
    for (filename, line, name), v in raw.items():
        if any(name == want and part in filename for part, want in KEY_FUNCTIONS):
            key_cum[f"{_short(filename)}:{line}({name})"] = round(v[3], 3)
    idle = sum(v[2] for (_f, _l, name), v in raw.items() if name.startswith(IDLE_FUNCTIONS))
    return {
        "file": str(path),
        "total_s": round(total, 3),
        "waiting_s": round(idle, 3),  # epoll / socket reads: idle, waiting for I/O
        "key_functions_cumtime_s": dict(sorted(key_cum.items(), key=lambda kv: -kv[1])),
        **top_functions(raw, top, fn),
    }


async def profile_transport(
    transport: str, args: argparse.Namespace, kafka_pid: int | None
) -> dict[str, Any]:
    out = args.profile_dir / transport
    out.mkdir(parents=True, exist_ok=True)
    files = ProfileFiles(
        client_main=out / "client-main.prof",
        client_dispatcher=out / "client-dispatcher.prof",
        gateway=out / "gateway.prof" if transport == "http" else None,
        projector=out / "projector.prof",
    )
    for f in out.glob("*.prof"):
        f.unlink()
    log(f"profiling {transport}: client, SDK thread, gateway and projector under cProfile")
    r = await run_e2e(transport, args, kafka_pid, files)
    log(
        f"profiled {transport} pass (slowed down by cProfile): {r.per_s:,.0f} points/s; "
        f"CPU s {r.cpu_s}"
    )
    procs: dict[str, dict[str, Any] | None] = {
        "client_main_thread": summarize_profile(files.client_main, f"{transport} client", 15),
        "client_sdk_thread": summarize_profile(
            files.client_dispatcher, f"{transport} SDK background thread", args.profile_top
        ),
        "projector": summarize_profile(files.projector, f"{transport} projector", args.profile_top),
    }
    if files.gateway is not None:
        procs["gateway"] = summarize_profile(files.gateway, "gateway", args.profile_top)
    return {
        "transport": transport,
        "profiled_points_per_s": round(r.per_s),
        "profiled_cpu_s": r.cpu_s,
        "processes": procs,
    }


# ---------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--points", type=int, default=400_000, help="metric points per measurement")
    p.add_argument("--runs", type=int, default=4, help="runs the client starts (default 4)")
    p.add_argument("--keys", type=int, default=10, help="metric keys per run (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per variant (median)")
    p.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="comma-separated, of: http, kafka (default: %(default)s)",
    )
    p.add_argument(
        "--baseline-points-per-event",
        type=int,
        default=100,
        help="points per pre-built run.metrics.logged event of the baseline (default 100; "
        "the SDK sends up to 1000)",
    )
    add_profile_args(p)
    p.add_argument(
        "--profile-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "studbook-e2e-profiles",
        help="where the .prof files go (default: %(default)s)",
    )
    p.add_argument(
        "--whatif-gateway-one-validation",
        action="store_true",
        help="diagnosis only: run the gateway patched to validate each event once, not twice "
        "(services/ is not changed; see WHATIF_GATEWAY)",
    )
    add_service_args(p, timeout=600, timeout_help="seconds allowed per measurement")
    args = parse_with_tiny(p, TINY, argv)
    service_defaults(args)
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not args.transports or set(args.transports) - set(TRANSPORTS):
        p.error(f"--transports: choose from {', '.join(TRANSPORTS)}")
    if min(args.points, args.runs, args.keys, args.repeat, args.baseline_points_per_event) < 1:
        p.error("--points, --runs, --keys, --repeat and --baseline-points-per-event must be >= 1")
    if args.points % (args.runs * args.keys):
        p.error("--points must be a multiple of --runs x --keys (each run logs every key)")
    if args.baseline_points_per_event > 10_000:
        p.error("--baseline-points-per-event: the schema allows at most 10,000 per event")
    args.profile_dir = args.profile_dir.resolve()
    args.gateway_script = SERVER
    return args


def _median_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys() if dicts else []
    return {k: round(median([d[k] for d in dicts]), 2) for k in keys}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="studbook-e2e-whatif-") as tmp:
        if args.whatif_gateway_one_validation:
            args.gateway_script = Path(tmp) / "whatif_gateway.py"
            args.gateway_script.write_text(WHATIF_GATEWAY)
            log("WHAT-IF: the gateway validates each event once (patched at runtime)")
        return await _measure(args)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    load_start = loadavg_1m()
    kafka_pid = kafka_broker_pid()
    bare_kib = bare_import_hwm_kib()
    log(f"bare `python -c 'import studbook'`: VmHWM {bare_kib / 1024:.1f} MiB")
    records = baseline_records(args.points, args.runs, args.keys, args.baseline_points_per_event)
    log(
        f"baseline: {len(records)} pre-built records "
        f"({sum(len(v) for _k, v in records) / 1e6:.1f} MB) for {args.points} points"
    )

    e2e: dict[str, list[E2ERun]] = {t: [] for t in args.transports}
    base: list[BaselineRun] = []
    for i in range(1, args.repeat + 1):
        # Interleaved, so slow drift on a shared machine hits every variant alike.
        for transport in args.transports:
            r = await run_e2e(transport, args, kafka_pid, None)
            e2e[transport].append(r)
            log(
                f"[{i}/{args.repeat}] {transport}: {r.points} points in {r.elapsed_s:.2f}s = "
                f"{r.per_s:,.0f} points/s end to end; client flush {r.client_flush_s:.2f}s "
                f"(log loop {r.client_log_s:.2f}s), lag after flush {r.lag_after_flush_s:.2f}s; "
                f"client HWM {r.client_hwm_kib / 1024:.0f} MiB; CPU s {r.cpu_s}; "
                f"{r.check['metric_events']} metric events ({r.check['points_per_event']} "
                f"points each) on {r.check['partitions_used']} partitions in "
                f"{r.projector_stats.get('batches')} batches; SDK {r.dispatcher_stats}"
            )
        b = await run_baseline(args, records, kafka_pid)
        base.append(b)
        log(
            f"[{i}/{args.repeat}] projector alone: {b.points} points in {b.elapsed_s:.2f}s = "
            f"{b.per_s:,.0f} points/s (from spawn {b.from_spawn_s:.2f}s); CPU s {b.cpu_s}; "
            f"{b.check['partitions_used']} partitions, {b.projector_stats.get('batches')} batches"
        )

    base_per_s = median([b.per_s for b in base])
    per_s = {t: median([r.per_s for r in rs]) for t, rs in e2e.items()}
    met = {t: v >= TARGET_POINTS_PER_S for t, v in per_s.items()}
    result: dict[str, Any] = {}
    for t in args.transports:
        result[f"{t}_points_per_s"] = round(per_s[t])
    result["projector_alone_points_per_s"] = round(base_per_s)
    for t in args.transports:
        result[f"ratio_{t}_to_projector"] = round(per_s[t] / base_per_s, 3)
    result |= {
        "client_flush_points_per_s": {
            t: round(median([r.points / r.client_flush_s for r in rs])) for t, rs in e2e.items()
        },
        "client_log_loop_points_per_s": {
            t: round(median([r.points / r.client_log_s for r in rs])) for t, rs in e2e.items()
        },
        "lag_after_flush_s": {
            t: round(median([r.lag_after_flush_s for r in rs]), 2) for t, rs in e2e.items()
        },
        "client_rss_mib_above_bare": {
            t: round((median([r.client_hwm_kib for r in rs]) - bare_kib) / 1024, 1)
            for t, rs in e2e.items()
        },
        "bare_import_rss_mib": round(bare_kib / 1024, 1),
        "from_spawn_points_per_s": {
            **{t: round(median([r.points / r.from_spawn_s for r in rs])) for t, rs in e2e.items()},
            "projector_alone": round(median([b.points / b.from_spawn_s for b in base])),
        },
        "cpu_s_median": {
            **{t: _median_dicts([r.cpu_s for r in rs]) for t, rs in e2e.items()},
            "projector_alone": _median_dicts([b.cpu_s for b in base]),
        },
        "repeat": args.repeat,
        "medians": True,
        "targets": {"points_per_s": TARGET_POINTS_PER_S},
        "targets_met": met,
        "samples": {
            **{
                t: {
                    "points_per_s": [round(r.per_s) for r in rs],
                    "elapsed_s": [round(r.elapsed_s, 3) for r in rs],
                    "client_flush_s": [round(r.client_flush_s, 3) for r in rs],
                    "client_log_s": [round(r.client_log_s, 3) for r in rs],
                    "client_hwm_mib": [round(r.client_hwm_kib / 1024, 1) for r in rs],
                    "sdk_points_per_event": [r.check["points_per_event"] for r in rs],
                    "partitions_used": [r.check["partitions_used"] for r in rs],
                    "sdk_stats": [r.dispatcher_stats for r in rs],
                    "projector_stats": [r.projector_stats for r in rs],
                }
                for t, rs in e2e.items()
            },
            "projector_alone": {
                "points_per_s": [round(b.per_s) for b in base],
                "elapsed_s": [round(b.elapsed_s, 3) for b in base],
                "from_spawn_s": [round(b.from_spawn_s, 3) for b in base],
                "first_batch_s": [round(b.first_batch_s, 3) for b in base],
                "partitions_used": [b.check["partitions_used"] for b in base],
                "projector_stats": [b.projector_stats for b in base],
            },
        },
        "verified": all(not b.check["problems"] for b in base)
        and all(not r.check["problems"] for rs in e2e.values() for r in rs),
        "workload": {
            "points": args.points,
            "runs": args.runs,
            "keys": args.keys,
            "steps_per_run_key": args.points // (args.runs * args.keys),
            "client_call": "run.log_metric(key, value, step)",
            "baseline_points_per_event": args.baseline_points_per_event,
            "baseline_records": len(records),
            "partitions": PARTITIONS,
            "gateway_auth": True,
            "whatif_gateway_one_validation": args.whatif_gateway_one_validation,
            "migrations": [p.name for _v, p in postgres.migration_files()],
            "poll": "sum(points) FROM rm.run_metrics every 20 ms; count(*) verified after",
        },
        "machine": {
            **await machine_info(args.database_url),
            "kafka_broker_pid_found": kafka_pid is not None,
            # The host is shared: a high load average means other work overlapped the run.
            "loadavg_1m_start_end": [load_start, loadavg_1m()],
        },
    }

    want = args.profile or (not args.no_profile and not all(met.values()))
    profiles = []
    if want:
        for t in args.transports:
            if args.profile or not met[t]:
                profiles.append(await profile_transport(t, args, kafka_pid))
    result["profile"] = profiles or None
    result["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async, parse_args(argv), cancel_on_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())

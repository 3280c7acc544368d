"""A hyper-parameter sweep through the gateway: points/s until queryable, a run's end waiting for
the network (the old `Run.finish`) against handing it to the background thread (the current one).

The client (a subprocess) calls `studbook.init`, then starts `--runs` runs one after the other,
each with `--params` params, and logs `--metrics` metrics at each of `--steps` steps
(`run.log_metric(key, value, step)`), leaving the run's `with` block at the end. Two variants,
the same SDK, the same workload:

* `blocking`: `studbook.flush()` right after each run's end: what `Run.finish` did before, a
  round trip to the gateway per run;
* `handoff`: nothing after a run's end (the current `Run.finish`).

Both call `studbook.flush()` once after the last run. Each measurement has a fresh database
(created from the admin URL, migrated, dropped afterwards), a fresh topic (4 partitions, deleted
afterwards), a real `studbook-server ingest` subprocess (auth on) and a real
`studbook-server projector` subprocess, started (and joined to its group) before the client.

The clock starts just before the client's first `start_run` (CLOCK_MONOTONIC, system-wide on
Linux) and stops when the read models hold every point and every run is `completed` (polled
every 20 ms: `sum(points)` of `rm.run_metrics` plus the completed runs of `rm.runs`). Then the
client's last consistency token must be caught up (`GET /v1/consistency`), and
the points in `rm.metric_chunks` must equal the points logged, with no dead letters.

Measurements are interleaved (blocking, handoff, blocking, ...) `--repeat` times; the report
gives medians, the ratio handoff / blocking, and per variant the client's own figures (the
loop until the last run's end returned, the final flush, the median time a run's end took) and
the CPU seconds of the gateway, the projector, their PostgreSQL backends and the client.

Prints ONE JSON object on stdout; progress goes to stderr.

    .venv/bin/python bench/sdk_sweep.py [--runs 200] [--params 10] [--metrics 5]
        [--steps 200] [--repeat 3]

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
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from _common import (
    POLL_S,
    PROJECT,
    SERVER,
    BenchError,
    Service,
    add_service_args,
    backend_cpu,
    cpu_by_name,
    cpu_delta,
    database_name,
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
from studbook_server import auth
from studbook_server.adapters import postgres

VARIANTS = ("blocking", "handoff")
DATABASE_PREFIX = "studbook_sweep_"
# `--tiny`: a few seconds per variant, for tests/test_bench_smoke.py.
TINY = {"runs": 4, "params": 2, "metrics": 2, "steps": 10, "repeat": 1}

# Run as `python -c CLIENT CONFIG_JSON`. Prints one JSON line.
CLIENT = r"""
import json, resource, sys, time


def cpu_s():
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


cfg = json.loads(sys.argv[1])

import studbook
from studbook import _api

studbook.init(url=cfg["url"], project=cfg["project"], token=cfg["token"],
              actor="sweep@bench", spool_dir=cfg["spool_dir"])
blocking = cfg["variant"] == "blocking"
keys = [f"m{k}" for k in range(cfg["metrics"])]
ends = []
cpu_first = cpu_s()
t_first = time.monotonic()
for i in range(cfg["runs"]):
    params = {f"p{j}": 0.001 * (i + 1) * (j + 1) for j in range(cfg["params"])}
    with studbook.start_run(f"trial-{i}", params=params, experiment="sweep") as run:
        for step in range(cfg["steps"]):
            for k, key in enumerate(keys):
                run.log_metric(key, 1.0 / (step + k + 1), step)
        t_end = time.monotonic()
    if blocking:
        studbook.flush(timeout=cfg["flush_timeout"])  # what a run's end did before
    ends.append(time.monotonic() - t_end)
t_loop = time.monotonic()
studbook.flush(timeout=cfg["flush_timeout"])
t_flushed = time.monotonic()
cpu_flushed = cpu_s()
print(json.dumps({
    "cpu_s": cpu_flushed - cpu_first,
    "t_first": t_first,
    "t_loop": t_loop,
    "t_flushed": t_flushed,
    "run_end_ms": sorted(1000 * e for e in ends),
    "token": studbook.last_consistency_token(),
    "dispatcher_stats": dict(_api.client().dispatcher().stats),
}), flush=True)
studbook.shutdown(timeout=cfg["flush_timeout"])
"""

# Points in the read models plus runs recorded as completed: one number to poll.
QUERYABLE_SQL = """SELECT (SELECT coalesce(sum(points), 0) FROM rm.run_metrics)
                        + (SELECT count(*) FROM rm.runs WHERE status = 'completed')"""


@dataclass(slots=True)
class SweepRun:
    variant: str
    points: int
    elapsed_s: float  # first start_run -> every point and run in the read models
    loop_s: float  # first start_run -> the last run's end (and, blocking, its flush) returned
    flush_s: float  # first start_run -> the final flush returned
    run_end_ms_median: float  # leaving a run's `with` block (+ the flush, blocking)
    cpu_s: dict[str, float]  # CPU seconds until queryable (the client's: until its flush)
    dispatcher_stats: dict[str, int]
    check: dict[str, Any]

    @property
    def per_s(self) -> float:
        return self.points / self.elapsed_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
            if status.split(b" ")[1:2] == [b"200"]:
                return
        await asyncio.sleep(0.05)


async def start_gateway(env: dict[str, str], port: int) -> Service:
    # SIGINT, as bench/sdk_end_to_end.py does: uvicorn shuts down cleanly on it.
    argv = [str(SERVER), "ingest", "--port", str(port)]
    gw = await Service.spawn("gateway", argv, env, stop_signal=signal.SIGINT)
    await guarded(_ready_http(port), [gw], 60, "the gateway's /readyz")
    return gw


async def start_projector(env: dict[str, str]) -> Service:
    return await Service.spawn("projector", [str(SERVER), "projector"], env, ready=r"assigned \[")


async def _caught_up(port: int, token: str | None, bearer: str) -> bool | None:
    """`GET /v1/consistency?token=...` of the gateway: whether it says the token is caught up."""
    if token is None:
        return None
    query = urllib.parse.urlencode({"token": token})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /v1/consistency?{query} HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {bearer}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0] + b" ":
        raise BenchError(f"/v1/consistency answered {head.splitlines()[0]!r}: {body[:300]!r}")
    return bool(json.loads(body).get("caught_up"))


async def _verify(
    con: asyncpg.Connection, args: argparse.Namespace, caught_up: bool | None
) -> dict[str, Any]:
    points = await con.fetchval("SELECT coalesce(sum(n), 0) FROM rm.metric_chunks")
    runs = await con.fetchval("SELECT count(*) FROM rm.runs WHERE status = 'completed'")
    params = await con.fetchval("SELECT count(*) FROM rm.run_params")
    dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
    problems = []
    if points != args.points:
        problems.append(f"rm.metric_chunks holds {points} points, expected {args.points}")
    if runs != args.runs:
        problems.append(f"{runs} completed runs, expected {args.runs}")
    if params != args.runs * args.params:
        problems.append(f"{params} params, expected {args.runs * args.params}")
    if dead:
        problems.append(f"{dead} dead letters")
    if caught_up is not True:
        problems.append(f"the client's last consistency token: caught_up={caught_up}")
    for p in problems:
        log(f"WARNING: {p}")
    return {"points": points, "runs": runs, "token_caught_up": caught_up, "problems": problems}


async def run_sweep(variant: str, args: argparse.Namespace) -> SweepRun:
    async with (
        fresh_database(args.database_url, DATABASE_PREFIX) as url,
        fresh_topic(args.bootstrap, f"studbook-sweep-{variant}-") as topic,
    ):
        group = f"sweep-{uuid.uuid4().hex[:10]}"
        con = await postgres.connect(url)
        services: list[Service] = []
        try:
            _, token = await auth.create_token(con, "bench-sweep", ["write", "read"], [PROJECT])
            projector = await start_projector(
                service_env(url, args.bootstrap, topic, group, "INFO")
            )
            services.append(projector)
            port = _free_port()
            gateway = await start_gateway(
                service_env(url, args.bootstrap, topic, group, "WARNING"), port
            )
            services.append(gateway)
            await guarded(projector.ready.wait(), services, 120, "the projector's assignment")
            with tempfile.TemporaryDirectory(prefix="studbook-sweep-") as tmp:
                cfg = {
                    "url": f"http://127.0.0.1:{port}",
                    "project": PROJECT,
                    "token": token,
                    "spool_dir": str(Path(tmp) / "spool"),
                    "variant": variant,
                    "runs": args.runs,
                    "params": args.params,
                    "metrics": args.metrics,
                    "steps": args.steps,
                    "flush_timeout": args.timeout,
                }
                env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
                env["STUDBOOK_CACHE_DIR"] = str(Path(tmp) / "cache")
                cpu0 = cpu_by_name({s.name: s.proc.pid for s in services})
                pg0 = await backend_cpu(con, database_name(url))
                client = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    CLIENT,
                    json.dumps(cfg),
                    cwd=tmp,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                client_io = asyncio.ensure_future(client.communicate())
                try:
                    done_at = await guarded(
                        _queryable(con, args.points + args.runs, client, client_io),
                        services,
                        args.timeout,
                        f"{args.points} points and {args.runs} runs in the read models",
                    )
                    cpu1 = cpu_by_name({s.name: s.proc.pid for s in services})
                    pg1 = await backend_cpu(con, database_name(url))
                    out, err = await asyncio.wait_for(client_io, args.timeout)
                finally:
                    if client.returncode is None:
                        client.kill()
                        await client.wait()
                if client.returncode != 0:
                    raise BenchError(f"client exited {client.returncode}:\n{err.decode()[-3000:]}")
                c = json.loads(out.decode().strip().splitlines()[-1])
            caught_up = await _caught_up(port, c["token"], token)
            check = await _verify(con, args, caught_up)
            check["database"] = database_name(url)
        finally:
            for s in reversed(services):
                await s.stop()
            await con.close()
    return SweepRun(
        variant=variant,
        points=args.points,
        elapsed_s=done_at - c["t_first"],
        loop_s=c["t_loop"] - c["t_first"],
        flush_s=c["t_flushed"] - c["t_first"],
        run_end_ms_median=median(c["run_end_ms"]),
        cpu_s={
            **{k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
            "postgres": round(cpu_delta(pg0, pg1), 2),
            "client_until_flushed": round(c["cpu_s"], 2),
        },
        dispatcher_stats=c["dispatcher_stats"],
        check=check,
    )


async def _queryable(
    con: asyncpg.Connection,
    total: int,
    client: asyncio.subprocess.Process,
    client_io: asyncio.Future[tuple[bytes, bytes]],
) -> float:
    """When the read models hold `total` (points + completed runs); fail if the client fails."""
    while True:
        got = await con.fetchval(QUERYABLE_SQL)
        now = time.monotonic()
        if got >= total:
            return now
        if client_io.done() and client.returncode not in (None, 0):
            _out, err = client_io.result()
            raise BenchError(f"client exited {client.returncode}:\n{err.decode()[-3000:]}")
        await asyncio.sleep(POLL_S)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=200, help="runs of the sweep (default 200)")
    p.add_argument("--params", type=int, default=10, help="params per run (default 10)")
    p.add_argument("--metrics", type=int, default=5, help="metric keys per run (default 5)")
    p.add_argument("--steps", type=int, default=200, help="steps per run and key (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per variant (median)")
    add_service_args(p, timeout=600, timeout_help="seconds allowed per measurement")
    args = parse_with_tiny(p, TINY, argv)
    service_defaults(args)
    if min(args.runs, args.metrics, args.steps, args.repeat) < 1 or args.params < 0:
        p.error("--runs, --metrics, --steps and --repeat must be >= 1, --params >= 0")
    if args.params > 1000:
        p.error("--params: at most 1000 (one run.params.logged event)")
    args.points = args.runs * args.metrics * args.steps
    return args


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    load_start = loadavg_1m()
    samples: dict[str, list[SweepRun]] = {v: [] for v in VARIANTS}
    for i in range(1, args.repeat + 1):
        for variant in VARIANTS:  # interleaved: drift on a shared machine hits both alike
            r = await run_sweep(variant, args)
            samples[variant].append(r)
            log(
                f"[{i}/{args.repeat}] {variant}: {r.points} points in {r.elapsed_s:.2f}s = "
                f"{r.per_s:,.0f} points/s until queryable; loop {r.loop_s:.2f}s, flushed "
                f"{r.flush_s:.2f}s; a run's end {r.run_end_ms_median:.2f} ms (median); "
                f"CPU s {r.cpu_s}; SDK {r.dispatcher_stats}"
            )
    per_s = {v: median([r.per_s for r in rs]) for v, rs in samples.items()}
    return {
        "blocking_points_per_s": round(per_s["blocking"]),
        "handoff_points_per_s": round(per_s["handoff"]),
        "ratio_handoff_to_blocking": round(per_s["handoff"] / per_s["blocking"], 2),
        "elapsed_s_median": {
            v: round(median([r.elapsed_s for r in rs]), 3) for v, rs in samples.items()
        },
        "client_loop_s_median": {
            v: round(median([r.loop_s for r in rs]), 3) for v, rs in samples.items()
        },
        "client_flushed_s_median": {
            v: round(median([r.flush_s for r in rs]), 3) for v, rs in samples.items()
        },
        "run_end_ms_median": {
            v: round(median([r.run_end_ms_median for r in rs]), 3) for v, rs in samples.items()
        },
        "cpu_s_median": {
            v: {k: round(median([r.cpu_s[k] for r in rs]), 2) for k in rs[0].cpu_s}
            for v, rs in samples.items()
        },
        "repeat": args.repeat,
        "medians": True,
        "samples": {
            v: {
                "points_per_s": [round(r.per_s) for r in rs],
                "elapsed_s": [round(r.elapsed_s, 3) for r in rs],
                "loop_s": [round(r.loop_s, 3) for r in rs],
                "flushed_s": [round(r.flush_s, 3) for r in rs],
                "run_end_ms_median": [round(r.run_end_ms_median, 3) for r in rs],
                "sdk_stats": [r.dispatcher_stats for r in rs],
            }
            for v, rs in samples.items()
        },
        "verified": all(not r.check["problems"] for rs in samples.values() for r in rs),
        "problems": [p for rs in samples.values() for r in rs for p in r.check["problems"]],
        "workload": {
            "runs": args.runs,
            "params_per_run": args.params,
            "metrics_per_run": args.metrics,
            "steps": args.steps,
            "points": args.points,
            "client_call": "with start_run(...) as run: run.log_metric(key, value, step)",
            "blocking": "studbook.flush() after each run's end (what Run.finish did)",
            "handoff": "nothing after a run's end (Run.finish hands over)",
            "transport": "http gateway (auth on) -> Kafka -> projector -> PostgreSQL",
            "queryable": "sum(points) of rm.run_metrics + completed rm.runs, every 20 ms; "
            "then the last consistency token caught up and count(*) verified",
            "migrations": [p.name for _v, p in postgres.migration_files()],
        },
        "machine": {
            **await machine_info(args.database_url),
            "loadavg_1m_start_end": [load_start, loadavg_1m()],
        },
        "bench_wall_s": round(time.monotonic() - t_start, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(_measure, parse_args(argv), cancel_on_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())

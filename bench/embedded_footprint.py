"""Embedded mode's footprint: cold start to ready, and resident memory when idle.

    .venv/bin/python bench/embedded_footprint.py [--repeat 5] [--idle 3] [--tiny]

Starts `studbook-server up` on a fresh data folder (initdb included; the demo loads in the
background once the service is ready) and then a second time on the same folder (the everyday
restart, with the demo's history in the store). Measures the time
from launching the process to `/readyz` answering 200, then, after the service idles for a few
seconds, the resident memory (RSS, and PSS where the kernel gives it) of the whole service: the
Python process and every PostgreSQL process. Side by side in the same run, the same numbers for
PostgreSQL alone (the embedded server started and stopped by itself), so the report shows what
Studbook adds. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from studbook_server.embedded_pg import EmbeddedPostgres

EXE = Path(sys.executable).with_name("studbook-server")


def log(msg: str) -> None:
    print(f"[footprint] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tree(pid: int) -> list[int]:
    """pid and all its descendants (PostgreSQL is started by pg_ctl, so it is re-parented: the
    caller adds the postmaster's tree separately)."""
    out = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            out += tree(int(child))
    return out


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over pids; PSS shares pages fairly between processes."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def postmaster(folder: Path) -> int:
    return int((folder / "postgres" / "data" / "postmaster.pid").read_text().split()[0])


def wait_ready(port: int, proc: subprocess.Popen[bytes], limit_s: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if proc.poll() is not None:
            raise SystemExit(f"`up` exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.02)
    raise SystemExit("`up` was not ready in time")


def run_up(folder: Path, idle_s: float) -> dict[str, float]:
    port, pg_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(EXE), "up", "--port", str(port), "--pg-port", str(pg_port), "--data-dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        ready = wait_ready(port, proc)
        time.sleep(idle_s)
        pids = tree(proc.pid) + tree(postmaster(folder))
        rss, pss = memory_kib(pids)
        py_rss, _ = memory_kib(tree(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return {
        "ready_s": ready - t0,
        "rss_mib": rss / 1024,
        "pss_mib": pss / 1024,
        "python_rss_mib": py_rss / 1024,
    }


def run_pg_alone(folder: Path, idle_s: float) -> dict[str, float]:
    pg = EmbeddedPostgres(folder / "postgres", free_port())
    t0 = time.monotonic()
    pg.start()
    ready = time.monotonic()
    try:
        time.sleep(idle_s)
        rss, pss = memory_kib(tree(postmaster(folder)))
    finally:
        pg.stop()
    return {"ready_s": ready - t0, "rss_mib": rss / 1024, "pss_mib": pss / 1024}


def fresh_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="studbook-footprint-"))
    folder.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, help="first start + restart pairs (default 5)")
    parser.add_argument(
        "--idle", type=float, help="seconds idle before measuring memory (default 3)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="defaults --repeat 1 --idle 0.5: checks that the benchmark runs (tests/"
        "test_bench_smoke.py); the memory figures are taken before the service has settled",
    )
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.tiny else 5)
    args.idle = args.idle if args.idle is not None else (0.5 if args.tiny else 3.0)
    samples: dict[str, list[dict[str, float]]] = {
        "up_first_start": [], "up_restart": [], "postgres_alone_first": [], "postgres_alone_restart": []
    }  # fmt: skip
    for i in range(args.repeat):
        for kind, runner in (("up", run_up), ("postgres_alone", run_pg_alone)):
            folder = fresh_folder()
            try:
                first = runner(folder, args.idle)
                again = runner(folder, args.idle)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            key_first = "up_first_start" if kind == "up" else "postgres_alone_first"
            key_again = "up_restart" if kind == "up" else "postgres_alone_restart"
            samples[key_first].append(first)
            samples[key_again].append(again)
            log(f"[{i + 1}/{args.repeat}] {kind}: first {first}, restart {again}")

    def median(key: str, field: str) -> float:
        return round(statistics.median(s[field] for s in samples[key]), 3)

    result = {
        "cold_start_ready_s_median": median("up_first_start", "ready_s"),
        "restart_ready_s_median": median("up_restart", "ready_s"),
        "idle_rss_mib_median": median("up_restart", "rss_mib"),
        "idle_pss_mib_median": median("up_restart", "pss_mib"),
        "idle_python_rss_mib_median": median("up_restart", "python_rss_mib"),
        "baseline_postgres_alone": {
            "first_start_s_median": median("postgres_alone_first", "ready_s"),
            "restart_s_median": median("postgres_alone_restart", "ready_s"),
            "idle_rss_mib_median": median("postgres_alone_restart", "rss_mib"),
            "idle_pss_mib_median": median("postgres_alone_restart", "pss_mib"),
        },
        "targets": {"cold_start_ready_s": 10, "idle_rss_mib": 250},
        "repeat": args.repeat,
        "medians": True,
        "samples": samples,
    }
    result["ratio_restart_to_postgres_alone"] = round(
        result["restart_ready_s_median"] / result["baseline_postgres_alone"]["restart_s_median"], 2
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""MLflow artifact uploads through Studbook's proxy: throughput and the server's memory.

    .venv/bin/python bench/artifact_upload.py [--mib 256] [--repeat 3] [--tiny]

Starts `studbook-server up --no-demo` on a fresh database (no Kafka: the event store is the
transport) with a temporary STUDBOOK_ARTIFACT_ROOT, then PUTs a file of `--mib` MiB to
`/mlflow/bench/api/2.0/mlflow-artifacts/artifacts/...` `--repeat` times, streamed from a
generator (the client holds one 1 MiB block). Side by side in the same run, the baseline: the
same bytes hashed (SHA-256) and written to a file in the same folder by this process, which is the
least an upload must cost. Reports the median MiB/s of each and their ratio, and the server's
peak resident memory (VmHWM) before and after the uploads against the file's size: a proxy that
buffered a file would grow by at least that much. Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    SERVER,
    Service,
    fresh_database,
    log,
    machine_info,
    median,
    parse_with_tiny,
    proc_status_kib,
    run_bench,
)

MIB = 1024 * 1024
BLOCK = MIB


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _blocks(total: int, block: bytes) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


def _put(port: int, path: str, total: int, block: bytes) -> float:
    """Seconds to PUT ``total`` bytes (Content-Length known, body streamed)."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    con.putrequest("PUT", path)
    con.putheader("Content-Length", str(total))
    con.putheader("Content-Type", "application/octet-stream")
    con.endheaders()
    for piece in _blocks(total, block):
        con.send(piece)
    response = con.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    con.close()
    if response.status != 200:
        raise RuntimeError(f"PUT {path}: {response.status} {body[:300]!r}")
    return elapsed


def _baseline(folder: Path, total: int, block: bytes) -> float:
    """Seconds to hash and write the same bytes to a file: what any upload costs at least."""
    started = time.perf_counter()
    sha = hashlib.sha256()
    with open(folder / "baseline.bin", "wb") as out:
        for piece in _blocks(total, block):
            sha.update(piece)
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - started


def _ready(port: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"studbook-server up not ready in {limit_s} s")
        time.sleep(0.1)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    total = args.mib * MIB
    block = os.urandom(BLOCK)
    admin = args.database_url or os.environ.get(
        "STUDBOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:15432/postgres"
    )
    async with fresh_database(admin, "bench_artifacts_") as url:
        with tempfile.TemporaryDirectory(prefix="studbook-artifacts-") as tmp:
            root = Path(tmp)
            port = _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
            env.update(
                STUDBOOK_DATABASE_URL=url,
                STUDBOOK_AUTH_DISABLED="true",  # a loopback benchmark; no token to print
                STUDBOOK_ARTIFACT_ROOT=str(root / "store"),
                STUDBOOK_LOG_LEVEL="WARNING",
            )
            argv = [str(SERVER), "up", "--no-demo", "--port", str(port)]
            server = await Service.spawn("up", argv, env)
            try:
                await asyncio.to_thread(_ready, port, 60)
                pid = server.proc.pid
                warm = "/mlflow/bench/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/warm.bin"
                await asyncio.to_thread(_put, port, warm, MIB, block)
                before = proc_status_kib(pid)
                proxy: list[float] = []
                baseline: list[float] = []
                for n in range(args.repeat):
                    path = (
                        f"/mlflow/bench/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/f{n}.bin"
                    )
                    proxy.append(
                        total / MIB / await asyncio.to_thread(_put, port, path, total, block)
                    )
                    baseline.append(
                        total / MIB / await asyncio.to_thread(_baseline, root, total, block)
                    )
                    log(f"upload {n + 1}/{args.repeat}: proxy {proxy[-1]:.0f} MiB/s, "
                        f"baseline {baseline[-1]:.0f} MiB/s")  # fmt: skip
                after = proc_status_kib(pid)
                stored = (root / "store" / "bench" / "1" / "r" / "artifacts" / "f0.bin").stat()
            finally:
                await server.stop()
        return {
            "benchmark": "artifact_upload",
            "file_mib": args.mib,
            "repeat": args.repeat,
            "proxy_mib_per_s_median": round(median(proxy), 1),
            "baseline_mib_per_s_median": round(median(baseline), 1),
            "proxy_vs_baseline": round(median(proxy) / median(baseline), 3),
            "server_peak_rss_mib_before": round(before.get("VmHWM", 0) / 1024, 1),
            "server_peak_rss_mib_after": round(after.get("VmHWM", 0) / 1024, 1),
            "server_peak_rss_growth_vs_file": round(
                (after.get("VmHWM", 0) - before.get("VmHWM", 0)) * 1024 / total, 4
            ),
            "stored_bytes": stored.st_size,
            "machine": await machine_info(url),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="size of each uploaded file, in MiB")
    p.add_argument("--repeat", type=int, default=3, help="uploads of that size")
    p.add_argument("--database-url", default=None, help="admin URL of the PostgreSQL to use")
    args = parse_with_tiny(p, {"mib": 8, "repeat": 1}, argv)
    return run_bench(measure, args)


if __name__ == "__main__":
    sys.exit(main())

"""Caller-side cost of `Run.log_metric`, and the SDK's resident memory.

Times `run.log_metric(...)` in the caller's thread with a null transport (the background thread
batches and encodes events as usual, then drops them), so only what a training loop pays is
measured. Two timings over `--calls` calls:

* batch: `--batch` consecutive calls between two `perf_counter_ns` reads, divided by
  `--batch` (timer cost amortised; the `for` loop's own cost is reported as `loop_ns`);
* single: one call between two reads (includes the timer's cost, reported as `timer_ns`).

`background_encode_ns_per_point` is what the background thread then spends per point (building
and encoding 1000-point events): not paid by the caller, but it holds the GIL meanwhile, which
is what the batch p99 shows.

Baselines measured the same way in the same run: appending a tuple to a `list`, and
`queue.SimpleQueue.put` of a tuple; ratios are reported. Memory: RSS of a fresh interpreter
after `import studbook` + init + a run with `--points` points (flushed), minus the RSS of a bare
interpreter, both measured now in subprocesses.

Prints ONE JSON object on stdout.

    .venv/bin/python bench/sdk_log_metric.py [--calls 200000] [--batch 100] [--points 100000]
        [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

TARGET_MEDIAN_NS = 5000
DEFAULTS = {"calls": 200_000, "batch": 100, "points": 100_000}
# `--tiny`: well under a second, for tests/test_bench_smoke.py.
TINY = {"calls": 2000, "batch": 100, "points": 1000}


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ns": round(statistics.median(ordered), 1),
        "p99_ns": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "min_ns": round(ordered[0], 1),
    }


def time_batches(call: Callable[[int], None], calls: int, batch: int) -> list[float]:
    clock = time.perf_counter_ns
    out: list[float] = []
    for b in range(calls // batch):
        base = b * batch
        t0 = clock()
        for i in range(base, base + batch):
            call(i)
        out.append((clock() - t0) / batch)
    return out


def time_singles(call: Callable[[int], None], calls: int) -> list[float]:
    clock = time.perf_counter_ns
    out: list[float] = [0.0] * calls
    for i in range(calls):
        t0 = clock()
        call(i)
        out[i] = clock() - t0
    return out


def timer_cost(n: int = 100_000) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        samples.append(clock() - t0)
    return statistics.median(samples)


def measure(name: str, call: Callable[[int], None], calls: int, batch: int) -> dict[str, Any]:
    gc.collect()
    batched = _quantiles(time_batches(call, calls, batch))
    gc.collect()
    single = _quantiles(time_singles(call, calls))
    return {"name": name, "batch": batched, "single": single}


RSS_SNIPPET = """
def rss_kib():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
"""

SDK_SNIPPET = """
import gc, json, sys, dataclasses
import studbook
from studbook import _api
from studbook._config import Config
from studbook._transport import NullTransport
after_import = rss_kib()[0]
config = Config.resolve(url="http://127.0.0.1:9", project="bench", spool_dir=sys.argv[1])
transport = NullTransport()
_api._install(config, transport)
with studbook.start_run("bench-memory") as run:
    for step in range(int(sys.argv[2])):
        run.log_metric("loss", 0.5, step=step)
studbook.flush()
gc.collect()
rss, peak = rss_kib()
print(json.dumps({"after_import_kib": after_import, "rss_kib": rss, "peak_kib": peak,
                  "events_sent": transport.events_sent}))
"""


def memory(points: int, spool: str) -> dict[str, Any]:
    bare = subprocess.run(
        [sys.executable, "-c", RSS_SNIPPET + "print(rss_kib()[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    bare_kib = int(bare.stdout)
    sdk = subprocess.run(
        [sys.executable, "-c", RSS_SNIPPET + SDK_SNIPPET, spool, str(points)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(sdk.stdout)
    return {
        "bare_python_rss_kib": bare_kib,
        "after_import_rss_kib": out["after_import_kib"],
        "after_run_rss_kib": out["rss_kib"],
        "after_run_peak_rss_kib": out["peak_kib"],
        "import_cost_kib": out["after_import_kib"] - bare_kib,
        "sdk_cost_kib": out["rss_kib"] - bare_kib,
        "points": points,
        "events_sent": out["events_sent"],
    }


def background_cost(repeat: int = 50) -> float:
    """ns of background-thread CPU per point: building and encoding 1000-point events."""
    from studbook._dispatch import encode_metrics

    base = {"type": "run.metrics.logged", "schema_version": 1, "actor": "a", "project": "p",
            "subject": "run:x", "producer": {"name": "studbook-sdk"}}  # fmt: skip
    t = time.time_ns()
    points = [("loss", 0.5 + i * 1e-3, i, t + i * 250_000) for i in range(1000)]
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        encode_metrics((base, points))  # type: ignore[arg-type]
        samples.append((time.perf_counter_ns() - t0) / len(points))
    return round(statistics.median(samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, help=f"default {DEFAULTS['calls']}")
    parser.add_argument("--batch", type=int, help=f"default {DEFAULTS['batch']}")
    parser.add_argument("--points", type=int, help=f"default {DEFAULTS['points']}")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="defaults "
        + ", ".join(f"--{k} {v}" for k, v in TINY.items())
        + ": checks that the benchmark runs; its timings mean little",
    )
    args = parser.parse_args()
    for name, value in (TINY if args.tiny else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    import studbook
    from studbook import _api
    from studbook._config import Config
    from studbook._transport import NullTransport

    with tempfile.TemporaryDirectory() as spool:
        config = Config.resolve(url="http://127.0.0.1:9", project="bench", spool_dir=spool)
        transport = NullTransport()
        _api._install(config, transport)
        run = studbook.start_run("bench-log-metric")
        log_metric = run.log_metric

        def sdk(i: int) -> None:
            log_metric("loss", 0.5, step=i)

        items: list[tuple[str, float, int, int]] = []
        append = items.append

        def list_append(i: int) -> None:
            append(("loss", 0.5, i, 0))

        simple = queue.SimpleQueue[tuple[str, float, int]]()
        put = simple.put

        def simple_queue_put(i: int) -> None:
            put(("loss", 0.5, i))

        def empty(i: int) -> None:
            pass

        log_metric("warm-up", 0.0)  # first use of a key validates it once
        results = {
            name: measure(name, fn, args.calls, args.batch)
            for name, fn in [
                ("log_metric", sdk),
                ("list_append", list_append),
                ("simple_queue_put", simple_queue_put),
                ("empty_call", empty),
            ]
        }
        drain_started = time.perf_counter()
        run.finish()
        drain_s = time.perf_counter() - drain_started
        sent = transport.events_sent
        studbook.shutdown()
        mem = memory(args.points, spool)

    sdk_batch = results["log_metric"]["batch"]
    report = {
        "benchmark": "sdk_log_metric",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "calls": args.calls,
        "batch": args.batch,
        "timer_ns": timer_cost(),
        "loop_ns": results["empty_call"]["batch"]["median_ns"],
        "log_metric": results["log_metric"],
        "baselines": {k: v for k, v in results.items() if k != "log_metric"},
        "ratio_median_vs_list_append": round(
            sdk_batch["median_ns"] / results["list_append"]["batch"]["median_ns"], 2
        ),
        "ratio_median_vs_simple_queue_put": round(
            sdk_batch["median_ns"] / results["simple_queue_put"]["batch"]["median_ns"], 2
        ),
        "target_median_ns": TARGET_MEDIAN_NS,
        "meets_target": sdk_batch["median_ns"] <= TARGET_MEDIAN_NS,
        "background_encode_ns_per_point": background_cost(),
        "finish_after_calls_s": round(drain_s, 3),
        "events_sent": sent,
        "memory": mem,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

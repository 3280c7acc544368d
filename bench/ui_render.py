"""The web UI in Chromium on a big project: the runs table's first render and its sorts over 100k
runs, the lineage explorer's layout and render of a 1,000-node walk, and the compare page for 100
runs x 50 metrics. Prints one JSON object.

    eval "$(scripts/stack env)"
    .venv/bin/python bench/ui_render.py            # ~100k runs: a few minutes to build, then ~1 min
    .venv/bin/python bench/ui_render.py --tiny     # seconds (the suite's smoke test)

The project is written straight to a fresh database on STUDBOOK_DATABASE_URL's server
(`postgres.append` + `readmodels.catch_up`, no HTTP), served by `studbook-server api`, and opened
in Debian's Chromium (tests/ui/browser.py). The pages time themselves with `performance.measure`
(`studbook:<name>`, from the request to the painted frame after the DOM update); "since
navigation" adds loading and starting the page. Targets: runs first render and sort <= 500 ms,
lineage layout + render <= 1 s, compare <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ui.browser import browser  # noqa: E402

from _common import database_name, fresh_database, with_database  # noqa: E402
from studbook_server import auth  # noqa: E402
from studbook_server.adapters import postgres, readmodels  # noqa: E402
from studbook_server.adapters.postgres import Incoming  # noqa: E402
from studbook_server.domain.contract import event_from_dict  # noqa: E402
from studbook_server.domain.projection import StoredPrincipal  # noqa: E402

PROJECT = "bench"
TARGETS_MS = {"runs_first_render": 500, "runs_sort": 500, "lineage": 1000, "compare": 1000}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- the data


def _ev(type_: str, subject: str, payload: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "schema_version": 2 if type_ == "run.started" else 1,
        "occurred_at": at.isoformat(),
        "actor": "bench",
        "project": PROJECT,
        "subject": subject,
        "payload": payload,
        "producer": {"name": "bench/ui_render.py", "version": "1"},
    }


def _digest(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def runs(n: int, compare: int, metrics: int, steps: int) -> Iterator[dict[str, Any]]:
    """``n`` runs with 10 params, 10 metrics and 2 tags; the first ``compare`` of them have
    ``metrics`` metrics of ``steps`` points each (the comparison's curves)."""
    yield _ev("project.created", f"project:{PROJECT}", {"description": "UI benchmark"}, T0)
    for i in range(n):
        s, at = f"run:r{i:06}", T0 + timedelta(minutes=i)
        yield _ev("run.started", s, {"name": f"run {i}", "experiment": f"e{i % 7}"}, at)
        params = {f"p{k}": (i * (k + 3)) % 97 / 10 for k in range(8)}
        params |= {"opt": ["adam", "sgd", "lion"][i % 3], "layers": i % 6}
        yield _ev("run.params.logged", s, {"params": params}, at)
        wide = i < compare
        keys = metrics if wide else 10
        points = [
            {"key": f"m{k}", "value": ((i * 31 + k * 17 + st) % 1000) / 1000, "step": st}
            for k in range(keys)
            for st in range(steps if wide else 1)
        ]
        yield _ev("run.metrics.logged", s, {"metrics": points}, at)
        yield _ev("run.tags.set", s, {"tags": {"team": f"t{i % 5}", "data": f"v{i % 3}"}}, at)
        status = "failed" if i % 17 == 0 else "completed"
        yield _ev("run.finished", s, {"status": status}, at + timedelta(seconds=30))


def lineage(k: int, deployments: int) -> Iterator[dict[str, Any]]:
    """From one root dataset version: ``k`` prep runs -> ``k`` derived versions -> ``k`` training
    runs -> ``k`` model versions (10 models) -> ``deployments`` deployments. Walking downstream
    from the root reaches 1 + 4k + deployments nodes."""
    at = T0
    yield _ev("dataset.version.created", "dataset:raw",
              {"version": "root", "uri": "s3://raw/root", "digest": _digest("root")}, at)  # fmt: skip
    for m in range(10):
        yield _ev("model.created", f"model:m{m}", {"name": f"m{m}"}, at)
    for i in range(k):
        at = T0 + timedelta(minutes=i)
        prep, train = f"run:prep-{i:04}", f"run:train-{i:04}"
        yield _ev("run.started", prep, {"name": f"prep {i}"}, at)
        yield _ev(
            "run.input.used", prep, {"dataset": "raw", "version": "root", "role": "other"}, at
        )
        yield _ev("dataset.version.created", "dataset:features",
                  {"version": f"f{i:04}", "uri": f"s3://features/{i}", "digest": _digest(f"f{i}"),
                   "parents": [{"dataset": "raw", "version": "root"}],
                   "produced_by_run": f"prep-{i:04}"}, at)  # fmt: skip
        yield _ev("run.finished", prep, {"status": "completed"}, at)
        yield _ev("run.started", train, {"name": f"train {i}"}, at)
        yield _ev("run.input.used", train,
                  {"dataset": "features", "version": f"f{i:04}", "role": "train"}, at)  # fmt: skip
        yield _ev("run.finished", train, {"status": "completed"}, at)
        yield _ev("model.version.registered", f"model:m{i % 10}",
                  {"run": f"train-{i:04}", "artifact_uri": f"s3://models/{i}"}, at)  # fmt: skip
    for d in range(deployments):
        model, version = d % 10, d // 10 + 1
        yield _ev("model.version.deployed", f"model:m{model}",
                  {"version": version, "environment": f"env{d // 10}", "target": f"k8s/{d}"},
                  T0 + timedelta(days=30))  # fmt: skip


async def build(url: str, docs: Iterator[dict[str, Any]], batch: int = 5000) -> int:
    con = await postgres.connect(url)
    total = 0
    principal = StoredPrincipal("tok-bench", "bench")
    try:
        chunk: list[dict[str, Any]] = []

        async def flush() -> None:
            nonlocal total
            async with con.transaction():
                await postgres.append(
                    con,
                    [
                        Incoming(d, event_from_dict(d, i), principal=principal)
                        for i, d in enumerate(chunk)
                    ],
                )
            await readmodels.catch_up(con)
            total += len(chunk)
            chunk.clear()

        for d in docs:
            chunk.append(d)
            if len(chunk) >= batch:
                await flush()
                if total % 100_000 < batch:
                    log(f"  {total:,} events")
        if chunk:
            await flush()
        dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
        if dead:
            reasons = await con.fetch("SELECT reason FROM public.dead_letters LIMIT 3")
            raise RuntimeError(f"{dead} dead letters, e.g. {[r[0] for r in reasons]}")
        await con.execute("ANALYZE")
        return total
    finally:
        await con.close()


async def make_token(url: str) -> str:
    con = await postgres.connect(url)
    try:
        return (await auth.create_token(con, "bench-ui", ["read"], [PROJECT]))[1]
    finally:
        await con.close()


# ------------------------------------------------------------------------------- the service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def api(url: str) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env |= {"STUDBOOK_DATABASE_URL": url, "STUDBOOK_LOG_LEVEL": "WARNING"}
    exe = Path(sys.executable).with_name("studbook-server")
    proc = subprocess.Popen(
        [str(exe), "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1):
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"the API did not start: {err[-2000:]}") from exc
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------- the browser


def measures(page: Any, name: str) -> list[dict[str, float]]:
    got: list[dict[str, float]] = page.evaluate(
        f"performance.getEntriesByName('studbook:{name}', 'measure')"
        ".map(e => ({startTime: e.startTime, duration: e.duration}))"
    )
    return got


def wait_measure(page: Any, name: str, count: int = 1, timeout_s: float = 60) -> dict[str, float]:
    """The ``count``-th measure named ``name`` (the pages add one per render)."""
    deadline = time.monotonic() + timeout_s
    while len(got := measures(page, name)) < count:
        if time.monotonic() > deadline:
            errors = page.evaluate("document.querySelector('.error')?.textContent ?? ''")
            raise RuntimeError(f"no measure studbook:{name} after {timeout_s} s {errors}")
        time.sleep(0.02)
    return got[count - 1]


def fresh(page: Any, url: str) -> None:
    """Load ``url`` as a new page (a hash change alone would not reload)."""
    page.goto("about:blank")
    page.goto(url)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def measure_ui(base: str, token: str, sizes: dict[str, int], rounds: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    with browser(viewport={"width": 1400, "height": 900}) as ctx:
        page = ctx.new_page()
        page.goto(f"{base}/")
        page.evaluate("t => sessionStorage.setItem('studbook.token', t)", token)
        runs_url = (
            f"{base}/#/{PROJECT}/runs?n=100&cols=p:p0,p:p1,p:opt,m:m0,m:m1,m:m2:min,m:m3:max,t:team"
        )
        compare_ids = ",".join(f"r{i:06}" for i in range(sizes["compare_runs"]))
        for _ in range(rounds):
            fresh(page, runs_url)
            first = wait_measure(page, "runs:first")
            rows = page.locator("[data-testid=runs-table] tbody tr").count()
            add("runs_first_render", first["duration"])
            add("runs_first_render_since_navigation", first["startTime"] + first["duration"])
            for n, (column, kind) in enumerate(
                [("m0", "metric"), ("m0", "metric"), ("p0", "param"), ("team", "tag"),
                 ("started", "attribute")], start=1,
            ):  # fmt: skip
                page.click(f"button.sort[data-column='{column}']")
                add(f"runs_sort_{kind}", wait_measure(page, "runs:sort", n)["duration"])
            fresh(page, f"{base}/#/{PROJECT}/compare?runs={compare_ids}")
            done = wait_measure(page, "compare")
            add("compare", done["duration"])
            add("compare_table", wait_measure(page, "compare:table")["duration"])
            add("compare_since_navigation", done["startTime"] + done["duration"])
            fresh(
                page,
                f"{base}/#/{PROJECT}/lineage?from={PROJECT}/dataset_version:raw@root"
                "&dir=DOWNSTREAM&depth=20",
            )
            walk = wait_measure(page, "lineage")
            render = wait_measure(page, "lineage:render")
            layout = wait_measure(page, "lineage:layout")
            add("lineage", walk["duration"])
            add("lineage_layout", layout["duration"])
            add("lineage_render", render["duration"])
            add("lineage_layout_and_render", layout["duration"] + render["duration"])
            add("lineage_since_navigation", walk["startTime"] + walk["duration"])
            nodes = int(page.inner_text("[data-testid=lineage-count]"))
        shown = {"lineage_nodes": nodes, "runs_rows": rows}
    results = {k: summary(v) for k, v in out.items()}
    sort_keys = [k for k in results if k.startswith("runs_sort_")]
    checks = {
        "runs_first_render": results["runs_first_render"]["median"],
        "runs_sort": max(results[k]["median"] for k in sort_keys),
        "lineage": results["lineage_layout_and_render"]["median"],
        "compare": results["compare"]["median"],
    }
    return {
        "ms": results,
        "shown": shown,
        "checked_ms": checks,
        "meets_targets": {k: checks[k] <= TARGETS_MS[k] for k in TARGETS_MS},
    }


# --------------------------------------------------------------------------------------- main


async def prepare(admin_url: str, args: argparse.Namespace) -> Any:
    db = fresh_database(admin_url, "studbook_bench_ui_")
    url = await db.__aenter__()
    try:
        started = time.monotonic()
        total = await build(
            url, runs(args.runs, args.compare_runs, args.compare_metrics, args.steps)
        )
        total += await build(url, lineage(args.lineage_k, args.deployments))
        token = await make_token(url)
        return db, url, token, total, time.monotonic() - started
    except BaseException:
        await db.__aexit__(None, None, None)
        raise


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--compare-runs", type=int, default=100)
    p.add_argument("--compare-metrics", type=int, default=50)
    p.add_argument("--steps", type=int, default=20, help="points per metric of the compared runs")
    p.add_argument("--lineage-k", type=int, default=240, help="walk size: 1 + 4k + deployments")
    p.add_argument("--deployments", type=int, default=39)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--tiny", action="store_true", help="a few hundred runs, one round: a smoke test"
    )
    p.add_argument("--keep", action="store_true", help="keep the database and print its name")
    p.add_argument(
        "--reuse", metavar="NAME", help="measure a database --keep kept, on the same server"
    )
    args = p.parse_args()
    if args.tiny:
        args.runs, args.compare_runs, args.compare_metrics, args.steps = 300, 5, 6, 5
        args.lineage_k, args.deployments, args.rounds = 10, 3, 1
    admin_url = os.environ.get("STUDBOOK_DATABASE_URL")
    if not admin_url:
        log('STUDBOOK_DATABASE_URL is not set: eval "$(scripts/stack env)" first')
        return 2
    loop = asyncio.new_event_loop()
    if args.reuse:
        db, url, events, build_s = None, with_database(admin_url, args.reuse), 0, 0.0
        token = loop.run_until_complete(make_token(url))
    else:
        nodes = 1 + 4 * args.lineage_k + args.deployments
        log(f"writing {args.runs:,} runs and a {nodes}-node lineage ...")
        db, url, token, events, build_s = loop.run_until_complete(prepare(admin_url, args))
        log(f"  {events:,} events in {build_s:.1f} s")
    try:
        log("measuring in Chromium ...")
        with api(url) as base:
            measured = measure_ui(base, token, vars(args), args.rounds)
    finally:
        if db is not None and not args.keep:
            loop.run_until_complete(db.__aexit__(None, None, None))
        elif db is not None:
            log(f"kept: --reuse {database_name(url)}")
        loop.close()
    report = {
        "bench": "ui_render",
        "sizes": {
            "runs": args.runs,
            "compare": f"{args.compare_runs} runs x {args.compare_metrics} metrics "
            f"({args.steps} points each)",
            "lineage_nodes": 1 + 4 * args.lineage_k + args.deployments,
        },
        "rounds": args.rounds,
        "events": events,
        "build_s": round(build_s, 1),
        "targets_ms": TARGETS_MS,
        **measured,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GraphQL read-path latency through HTTP, on the graph `bench/lineage_graph.py` generated.

Starts the API in a uvicorn subprocess (one process, like one per core behind an orchestrator),
then sends each query sequentially over one kept-alive connection (httpx2: the dev extra's
httpx-compatible client, the one starlette's TestClient uses) with a real read token,
and reports p50 / p95 / p99 per query next to a trivial `{ __typename }` through the same server,
so the ratios show what the query itself costs. Every response is checked for errors.

    .venv/bin/python bench/lineage_graph.py            # once: builds the `studbook_bench` database
    .venv/bin/python bench/graphql_queries.py [--database studbook_bench] [--rounds N] [--tiny]

Targets (2-core machine): lineage depth 10 incl. hubs p95 <= 20 ms; searchRuns with a metric
filter and ordering over 100k runs p95 <= 20 ms; model version by alias p50 <= 5 ms;
compareRuns of 100 runs x 50 metrics <= 100 ms. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2
from starlette.applications import Starlette

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:15432/postgres"
ROOT = Path(__file__).resolve().parents[1]
URL_ENV = "STUDBOOK_BENCH_DATABASE_URL"

LINEAGE = """query($from: ID!, $direction: LineageDirection!) {
  lineage(from: $from, direction: $direction, depth: 10, first: 100) {
    nodes { id type depth }
    edges { source destination type role }
    truncated depthReached totalNodes
    pageInfo { hasNextPage endCursor }
  }
}"""

SEARCH = """query($filter: RunFilter, $order: RunOrder) {
  searchRuns(project: "bench", filter: $filter, orderBy: $order, first: 50) {
    nodes { id runId name status startedAt metrics(keys: ["accuracy", "loss"]) { key value } }
    pageInfo { hasNextPage endCursor }
  }
}"""

SEARCHES: dict[str, dict[str, Any]] = {
    "accuracy>0.9 order by accuracy": {
        "filter": {"metrics": [{"key": "accuracy", "op": "GT", "value": 0.9}]},
        "order": {"metric": "accuracy", "direction": "DESC"},
    },
    "loss<0.2 and optimizer=adam, order by accuracy": {
        "filter": {
            "metrics": [{"key": "loss", "op": "LT", "value": 0.2}],
            "params": [{"key": "optimizer", "op": "EQ", "value": "adam"}],
        },
        "order": {"metric": "accuracy", "direction": "DESC"},
    },
    "max(auc)>=0.95 and status=COMPLETED, order by min(val_loss) asc": {
        "filter": {
            "metrics": [{"key": "auc", "op": "GTE", "value": 0.95, "agg": "MAX"}],
            "status": ["COMPLETED"],
        },
        "order": {"metric": "val_loss", "agg": "MIN", "direction": "ASC"},
    },
    "tag team=growth and lr<=0.01, newest first": {
        "filter": {
            "tags": [{"key": "team", "value": "growth"}],
            "params": [{"key": "lr", "op": "LTE", "value": 0.01}],
        },
        "order": {"attribute": "STARTED_AT", "direction": "DESC"},
    },
}

BY_ALIAS = """query($model: String!, $asOf: DateTime) {
  modelVersionByAlias(project: "bench", model: $model, alias: "production", asOf: $asOf) {
    id number artifactUri registeredAt
  }
}"""

COMPARE = """query($ids: [ID!]!) {
  compareRuns(ids: $ids) {
    runs { runId }
    params { key values differs }
    metrics { key last min max differs }
    datasets { label columns }
    code { gitCommit differs }
    environmentDiffers
  }
}"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- the server


def app_factory() -> Starlette:
    """The API as `http.py` composes it for the `api` role (read-only here: no publisher)."""
    from studbook_server.adapters import postgres
    from studbook_server.config import load_settings
    from studbook_server.graphql import ApiDeps, graphql_routes

    settings = load_settings()
    url = os.environ[URL_ENV]
    deps: dict[str, ApiDeps] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await postgres.create_pool(url)
        deps["api"] = ApiDeps(settings, pool, None)
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(routes=graphql_routes(lambda: deps["api"]), lifespan=lifespan)
    profile = os.environ.get(PROFILE_ENV)
    return app if not profile else _Profiled(app, profile)  # type: ignore[return-value]


PROFILE_ENV = "STUDBOOK_BENCH_PROFILE"
PROFILE_HEADER = (b"x-bench-profile", b"1")


class _Profiled:
    """The app, profiling (cProfile) the requests that carry `x-bench-profile: 1`; the stats
    go to the file named by STUDBOOK_BENCH_PROFILE when the server stops."""

    def __init__(self, app: Starlette, path: str) -> None:
        self.app, self.path, self.profile = app, path, cProfile.Profile()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:
                self.profile.dump_stats(self.path)
            return
        if PROFILE_HEADER not in scope.get("headers", ()):
            await self.app(scope, receive, send)
            return
        self.profile.enable()
        try:
            await self.app(scope, receive, send)
        finally:
            self.profile.disable()


def profile_summary(path: str, requests: int, top: int = 25) -> dict[str, Any]:
    """Where the profiled requests spent their time: total, and the top functions by own time
    and by cumulative time, per request."""
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def name(k: tuple[str, int, str]) -> str:
        file, line, fn = k
        short = file.split("site-packages/")[-1].split("services/")[-1]
        return f"{short}:{line}({fn})"

    per = 1000 / requests
    total = sum(v[2] for v in raw.values())
    by_tot = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    by_cum = sorted(raw.items(), key=lambda kv: -kv[1][3])[:top]
    return {
        "requests": requests,
        "profiled_ms_per_request": round(total * per, 2),
        "top_tottime_ms_per_request": [
            {"fn": name(k), "calls": v[1] // requests, "ms": round(v[2] * per, 3)}
            for k, v in by_tot
        ],
        "top_cumtime_ms_per_request": [
            {"fn": name(k), "calls": v[1] // requests, "ms": round(v[3] * per, 3)}
            for k, v in by_cum
        ],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(url: str, profile: str | None = None) -> Any:
    port = _free_port()
    env = {**os.environ, URL_ENV: url, "STUDBOOK_AUTH_DISABLED": "false"}
    if profile:
        env[PROFILE_ENV] = profile
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.graphql_queries:app_factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.post(f"{base}/graphql", json={"query": "{ __typename }"}, timeout=1)
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------------------ measurement


def redacted(url: str) -> str:
    """`url` without its password: reports are pasted into documents and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 2)

    return {
        "n": len(s),
        "p50": q(0.5),
        "p95": q(0.95),
        "p99": q(0.99),
        "mean": round(statistics.fmean(s), 2),
    }


def measure(client: httpx2.Client, query: str, variables: list[dict[str, Any]], rounds: int,
            check: Any = None) -> tuple[list[float], list[Any]]:  # fmt: skip
    """Time ``rounds`` requests cycling through ``variables`` (after one warm-up pass)."""
    for v in variables[: min(len(variables), 20)]:
        client.post("/graphql", json={"query": query, "variables": v})
    times: list[float] = []
    bodies: list[Any] = []
    for i in range(rounds):
        v = variables[i % len(variables)]
        t = time.perf_counter()
        r = client.post("/graphql", json={"query": query, "variables": v})
        times.append((time.perf_counter() - t) * 1000)
        body = r.json()
        if r.status_code != 200 or body.get("errors"):
            raise RuntimeError(f"query failed: {r.status_code} {str(body)[:500]}")
        if i < len(variables):
            bodies.append(body["data"])
    return times, bodies


async def samples(url: str) -> dict[str, Any]:
    """Start nodes and ids, chosen deterministically, and a read token."""
    from studbook_server import auth
    from studbook_server.adapters import postgres

    con = await postgres.connect(url)
    try:
        _, token = await auth.create_token(con, f"bench-{time.time():.0f}", ["read"], ["bench"])

        async def pick(sql: str) -> list[str]:
            return [r[0] for r in await con.fetch(sql)]

        return {
            "token": token,
            "model_versions": await pick(
                "SELECT 'bench/model_version:' || model || '@' || number FROM rm.model_versions "
                "ORDER BY md5(model || number) LIMIT 60"
            ),
            "feature_versions": await pick(
                "SELECT 'bench/dataset_version:' || dataset || '@' || version FROM rm.dataset_versions "
                "WHERE dataset LIKE 'feat-%' ORDER BY md5(dataset) LIMIT 60"
            ),
            "raw_versions": await pick(
                "SELECT 'bench/dataset_version:' || dataset || '@' || version FROM rm.dataset_versions "
                "WHERE dataset LIKE 'raw-%' AND dataset NOT IN ('raw-0', 'raw-1', 'raw-2') "
                "ORDER BY md5(dataset || version) LIMIT 30"
            ),
            "hubs": [
                "bench/dataset_version:raw-0@v1",
                "bench/dataset_version:raw-1@v1",
                "bench/dataset_version:raw-2@v1",
            ],
            "training_runs": await pick(
                "SELECT 'bench/run:' || run_id FROM rm.runs WHERE run_id LIKE 'train-%' "
                "ORDER BY md5(run_id) LIMIT 60"
            ),
            "compare_runs": [f"bench/run:train-{i:06}" for i in range(0, 1000, 10)],
            "models": await pick("SELECT name FROM rm.models ORDER BY name"),
        }
    finally:
        await con.close()


# ------------------------------------------------------------------- the search scenario
#
# Its own database, seeded through the event store and the projector's rebuild (the events a
# client would send, validated, appended with their hash chain, then replayed into the read
# models), not by writing read models: `--scenario search [--search-runs N]`.

SEARCH_PROJECT = "bench"
SEARCH_SEED = 20261202
SEARCH_T0 = datetime(2026, 1, 1, tzinfo=UTC)
SEARCH_PARAMS = 10
SEARCH_METRICS = ("accuracy", "loss", "auc", "val_loss", "f1", "precision", "recall",
                  "lr_final", "throughput", "grad_norm")  # fmt: skip
SEARCH_STEPS = 2
APPEND_BATCH = 5000


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def search_events(runs: int, seed: int = SEARCH_SEED) -> Iterator[dict[str, Any]]:
    """Per run: run.started, run.params.logged (10), run.metrics.logged (10 keys x 2 steps),
    run.tags.set (3) and, for 90% of them, run.finished. Deterministic per seed."""
    rng = random.Random(seed)

    def ev(type: str, subject: str, payload: dict[str, Any], when: datetime) -> dict[str, Any]:
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "type": type,
            "schema_version": 3 if type == "run.started" else 1,
            "occurred_at": _iso(when),
            "actor": "bench",
            "project": SEARCH_PROJECT,
            "subject": subject,
            "payload": payload,
            "producer": {"name": "studbook-bench", "version": "1"},
        }

    yield ev("project.created", f"project:{SEARCH_PROJECT}", {"description": "search"}, SEARCH_T0)
    for i in range(runs):
        subject = f"run:run-{i:06d}"
        t = SEARCH_T0 + timedelta(seconds=30 * i)
        started = {"name": f"sweep-{i % 500}-{i}", "experiment": f"exp-{i % 50:02d}",
                   "code": {"git_commit": rng.randbytes(20).hex(), "entry_point": "train.py"}}  # fmt: skip
        yield ev("run.started", subject, started, t)
        params: dict[str, Any] = {
            "lr": rng.choice([0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]),
            "optimizer": rng.choice(["adam", "adamw", "sgd", "lion"]),
            "batch_size": rng.choice([32, 64, 128, 256]),
            "epochs": rng.randrange(1, 100),
            "dropout": round(rng.random() / 2, 3),
            "seed": i,
            "amp": rng.random() < 0.5,
        }
        for n in range(len(params), SEARCH_PARAMS):
            params[f"p{n}"] = rng.choice(["a", "b", "c", "d"])
        yield ev("run.params.logged", subject, {"params": params}, t)
        points = []
        for step in range(SEARCH_STEPS):
            for key in SEARCH_METRICS:
                points.append({"key": key, "value": round(rng.random(), 6), "step": step})
        yield ev("run.metrics.logged", subject, {"metrics": points}, t + timedelta(seconds=10))
        tags = {"team": rng.choice(["growth", "core", "ads", "search"]),
                "priority": rng.choice(["low", "high"]), "stage": "dev"}  # fmt: skip
        yield ev("run.tags.set", subject, {"tags": tags}, t + timedelta(seconds=11))
        if i % 10:
            status = "failed" if i % 10 == 9 else "completed"
            yield ev("run.finished", subject, {"status": status}, t + timedelta(seconds=20))


async def seed_search(admin_url: str, name: str, runs: int) -> dict[str, Any]:
    """A fresh database `name` holding ``runs`` runs, unless it already holds exactly those."""
    from studbook_server.adapters import postgres
    from studbook_server.rebuild import rebuild
    from studbook_server.writepath import Refused, validated

    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    expected = sum(1 for _ in search_events(runs)) if runs <= 1000 else None
    with contextlib.suppress(Exception):
        con = await postgres.connect(url)
        try:
            have = await con.fetchval(
                "SELECT count(*) FROM rm.runs WHERE project = $1", SEARCH_PROJECT
            )
            caught = await con.fetchval(
                "SELECT (SELECT position FROM rm.checkpoint) = "
                "(SELECT coalesce(max(position), 0) FROM public.events)"
            )
        finally:
            await con.close()
        if have == runs and caught:
            return {"database": redacted(url), "runs": runs, "seeded": False}
    started = time.perf_counter()
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # name from the CLI
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    con = await postgres.connect(url)
    events = 0
    try:
        await postgres.migrate(con)
        batch: list[dict[str, Any]] = []

        async def flush() -> None:
            checked = validated(batch)
            if isinstance(checked, Refused):
                raise RuntimeError(f"generated invalid events: {checked.body()}")
            async with con.transaction():
                await postgres.append(con, checked)

        for doc in search_events(runs):
            batch.append(doc)
            if len(batch) == APPEND_BATCH:
                await flush()
                events += len(batch)
                batch = []
                if events % 100_000 == 0:
                    log(f"search: {events:,} events appended")
        if batch:
            await flush()
            events += len(batch)
    finally:
        await con.close()
    appended = time.perf_counter()
    log(f"search: {events:,} events appended in {appended - started:.0f} s; rebuilding")
    replayed = await rebuild(url)
    con = await postgres.connect(url)
    try:
        await con.execute("VACUUM ANALYZE")
        have = await con.fetchval("SELECT count(*) FROM rm.runs WHERE project = $1", SEARCH_PROJECT)
        dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
    finally:
        await con.close()
    if have != runs or dead or replayed != events or (expected and expected != events):
        raise RuntimeError(f"seeded {have} runs from {replayed}/{events} events, {dead} dead")
    return {
        "database": redacted(url),
        "runs": runs,
        "events": events,
        "seeded": True,
        "append_s": round(appended - started, 1),
        "rebuild_s": round(time.perf_counter() - appended, 1),
    }


SEARCH_PAGE = """query($filter: RunFilter, $order: RunOrder, $after: String) {
  searchRuns(project: "bench", filter: $filter, orderBy: $order, first: 100, after: $after) {
    nodes { %s }
    pageInfo { hasNextPage endCursor }
  }
}"""

# What a page of runs asks for: the lean row, and the full run data (params, latest metrics,
# tags) as lists of objects (the web UI's query) and as maps (JSON scalars).
SEARCH_SHAPES = {
    "lean": "id runId name status startedAt",
    "lists": "id runId name status actor startedAt finishedAt "
    "params { key value } metrics { key value min max } tags { key value }",
    "maps": "id runId name status actor startedAt finishedAt paramMap metricMap tagMap",
}

SEARCH_PAGES: dict[str, dict[str, Any]] = {
    "newest first": {"order": {"attribute": "STARTED_AT", "direction": "DESC"}},
    "accuracy>0.5 order by accuracy": {
        "filter": {"metrics": [{"key": "accuracy", "op": "GT", "value": 0.5}]},
        "order": {"metric": "accuracy", "direction": "DESC"},
    },
    "optimizer=adam and team=growth, newest first": {
        "filter": {
            "params": [{"key": "optimizer", "op": "EQ", "value": "adam"}],
            "tags": [{"key": "team", "value": "growth"}],
        },
        "order": {"attribute": "STARTED_AT", "direction": "DESC"},
    },
    "completed, order by min(loss) asc": {
        "filter": {"status": ["COMPLETED"]},
        "order": {"metric": "loss", "agg": "MIN", "direction": "ASC"},
    },
}


def as_maps(node: dict[str, Any]) -> dict[str, Any]:
    """A `lists` node in the `maps` shape (to check that both say the same)."""
    out = {k: v for k, v in node.items() if k not in ("params", "metrics", "tags")}
    out["paramMap"] = {p["key"]: p["value"] for p in node["params"]}
    out["tagMap"] = {t["key"]: t["value"] for t in node["tags"]}
    out["metricMap"] = {
        m["key"]: {k: m[k] for k in ("value", "min", "max")} for m in node["metrics"]
    }
    return out


def search_scenario(
    url: str, rounds: int, shapes: list[str], profile: str | None
) -> dict[str, Any]:
    token = asyncio.run(read_token(url, SEARCH_PROJECT))
    results: dict[str, Any] = {}
    stats = None
    if profile:
        fd, stats = tempfile.mkstemp(suffix=".prof", prefix="studbook-bench-")
        os.close(fd)
    with (
        serve(url, stats) as base,
        httpx2.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as client,
    ):  # fmt: skip
        base_ms, _ = measure(client, "{ __typename }", [{}], rounds * 2)
        results["baseline {__typename}"] = percentiles(base_ms)
        # Each page and its second page (after its first page's cursor), every shape in turn
        # (interleaved, so a shape does not get a quieter minute than another).
        variables: list[dict[str, Any]] = []
        for v in SEARCH_PAGES.values():
            variables.append(v)
            first = post(client, SEARCH_PAGE % "id", v)["searchRuns"]
            variables.append({**v, "after": first["pageInfo"]["endCursor"]})
        bodies: dict[str, list[Any]] = {s: [] for s in shapes}
        times: dict[str, list[float]] = {s: [] for s in shapes}
        for s in shapes:  # warm-up
            for v in variables:
                bodies[s].append(post(client, SEARCH_PAGE % SEARCH_SHAPES[s], v))
        for i in range(rounds):
            v = variables[i % len(variables)]
            for s in shapes:
                t = time.perf_counter()
                post(client, SEARCH_PAGE % SEARCH_SHAPES[s], v)
                times[s].append((time.perf_counter() - t) * 1000)
        if "lists" in shapes and "maps" in shapes:
            for lists, maps in zip(bodies["lists"], bodies["maps"], strict=True):
                want = [as_maps(n) for n in lists["searchRuns"]["nodes"]]
                got = [
                    {**n, "metricMap": {k: {f: m[f] for f in ("value", "min", "max")}
                                        for k, m in n["metricMap"].items()}}
                    for n in maps["searchRuns"]["nodes"]
                ]  # fmt: skip
                if got != want or lists["searchRuns"]["pageInfo"] != maps["searchRuns"]["pageInfo"]:
                    raise RuntimeError("the `maps` page differs from the `lists` page")
        # Profiled after the timed requests (cProfile slows what it watches).
        for i in range(rounds if profile else 0):
            v = variables[i % len(variables)]
            client.post(
                "/graphql",
                json={"query": SEARCH_PAGE % SEARCH_SHAPES[profile or ""], "variables": v},
                headers={PROFILE_HEADER[0].decode(): PROFILE_HEADER[1].decode()},
            )
        sizes = [len(b["searchRuns"]["nodes"]) for b in bodies[shapes[0]]]
        for s in shapes:
            results[f"page of 100, {s}"] = percentiles(times[s])
        results["rows per page (min)"] = min(sizes)
        b50 = results["baseline {__typename}"]["p50"]
        results["p50 / lean p50"] = {
            s: round(results[f"page of 100, {s}"]["p50"] / results["page of 100, lean"]["p50"], 2)
            for s in shapes
            if "lean" in shapes
        }
        results["p50 / baseline p50"] = {
            s: round(results[f"page of 100, {s}"]["p50"] / b50, 1) for s in shapes
        }
    if stats is not None:
        results[f"profile of the API process, {profile}"] = profile_summary(stats, rounds)
        os.unlink(stats)
    return results


def post(client: httpx2.Client, query: str, variables: dict[str, Any]) -> Any:
    r = client.post("/graphql", json={"query": query, "variables": variables})
    body = r.json()
    if r.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"query failed: {r.status_code} {str(body)[:500]}")
    return body["data"]


async def read_token(url: str, project: str) -> str:
    from studbook_server import auth
    from studbook_server.adapters import postgres

    con = await postgres.connect(url)
    try:
        _, token = await auth.create_token(con, f"bench-{time.time():.0f}", ["read"], [project])
        return token
    finally:
        await con.close()


def search_main(admin: str, args: argparse.Namespace) -> int:
    runs = args.search_runs or (300 if args.tiny else 100_000)
    rounds = args.rounds or (5 if args.tiny else 200)
    shapes = [s for s in args.search_shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(SEARCH_SHAPES))
    if unknown:
        raise SystemExit(
            f"--search-shapes: unknown {unknown}; expected some of {list(SEARCH_SHAPES)}"
        )
    seeded = asyncio.run(seed_search(admin, args.search_database, runs))
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{args.search_database}"))
    log(f"searchRuns over {runs:,} runs")
    results = search_scenario(url, rounds, shapes, args.profile_shape)
    report: dict[str, Any] = {
        "scenario": "search",
        "database": redacted(url),
        "seed": seeded,
        "rounds": rounds,
        "results": results,
    }
    full = [s for s in ("maps", "lists") if s in shapes]
    if full:
        p95 = results[f"page of 100, {full[0]}"]["p95"]
        report["targets_met"] = {f"page of 100 with full data ({full[0]}) p95 <= 20": p95 <= 20}
    print(json.dumps(report, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="studbook_bench")
    parser.add_argument("--rounds", type=int, help="requests per query (default 200)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="--rounds 5 (unless given): checks that the benchmark runs, on `lineage_graph.py "
        "--tiny`; its timings mean nothing",
    )
    parser.add_argument(
        "--scenario",
        choices=["graph", "search"],
        default="graph",
        help="graph: every query on the lineage_graph.py database (`--database`); search: a page "
        "of 100 runs with and without their data, on its own database (`--search-database`)",
    )
    parser.add_argument("--search-database", default="studbook_bench_search")
    parser.add_argument(
        "--search-runs", type=int, help="runs in the search database (default 100000, tiny 300)"
    )
    parser.add_argument(
        "--search-shapes",
        default="lean,lists,maps",
        help="which page shapes to time, of " + ", ".join(SEARCH_SHAPES),
    )
    parser.add_argument(
        "--profile-shape",
        choices=list(SEARCH_SHAPES),
        help="search: also profile (cProfile, in the API process) `--rounds` pages of this shape",
    )
    args = parser.parse_args()
    admin = os.environ.get("STUDBOOK_DATABASE_URL") or DEFAULT_ADMIN_URL
    if args.scenario == "search":
        return search_main(admin, args)
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{args.database}"))
    picked = asyncio.run(samples(url))
    rounds = args.rounds or (5 if args.tiny else 200)
    report: dict[str, Any] = {"database": redacted(url), "rounds": rounds, "results": {}}
    results = report["results"]
    with (
        serve(url) as base,
        httpx2.Client(
            base_url=base, headers={"authorization": f"Bearer {picked['token']}"}, timeout=30
        ) as client,
    ):
        log("baseline")
        base_ms, _ = measure(client, "{ __typename }", [{}], rounds * 2)
        results["baseline {__typename}"] = percentiles(base_ms)

        log("lineage")
        walks = {
            "upstream of a model version": ("model_versions", "UPSTREAM"),
            "downstream of a feature dataset version": ("feature_versions", "DOWNSTREAM"),
            "downstream of a raw dataset version": ("raw_versions", "DOWNSTREAM"),
            "downstream of a hub (50k/20k/5k consumers)": ("hubs", "DOWNSTREAM"),
            "both ways from a training run (hub inputs)": ("training_runs", "BOTH"),
        }
        all_walks: list[float] = []
        lineage: dict[str, Any] = {}
        for name, (key, direction) in walks.items():
            variables = [{"from": s, "direction": direction} for s in picked[key]]
            ms, bodies = measure(client, LINEAGE, variables, rounds)
            all_walks += ms
            sizes = [b["lineage"]["totalNodes"] for b in bodies]
            lineage[name] = {
                **percentiles(ms),
                "nodes_walked_median": sorted(sizes)[len(sizes) // 2],
                "nodes_walked_max": max(sizes),
                "truncated_share": round(
                    sum(b["lineage"]["truncated"] for b in bodies) / len(bodies), 2
                ),
            }
        lineage["all walks"] = percentiles(all_walks)
        results["lineage depth 10 (first 100 nodes + their edges)"] = lineage

        log("searchRuns")
        search: dict[str, Any] = {}
        metric_searches: list[float] = []
        for name, v in SEARCHES.items():
            ms, bodies = measure(client, SEARCH, [v], rounds)
            search[name] = {**percentiles(ms), "results": len(bodies[0]["searchRuns"]["nodes"])}
            if "order by" in name and "accuracy" in name:
                metric_searches += ms
        search["metric filter + metric order (first two)"] = percentiles(metric_searches)
        results["searchRuns over 100k runs (first 50)"] = search

        log("modelVersionByAlias")
        now_ms, _ = measure(client, BY_ALIAS, [{"model": m} for m in picked["models"]], rounds * 2)
        then_ms, _ = measure(
            client, BY_ALIAS, [{"model": m, "asOf": "2025-06-01T00:00:00Z"} for m in picked["models"]],
            rounds * 2,
        )  # fmt: skip
        results["modelVersionByAlias"] = {"now": percentiles(now_ms), "asOf": percentiles(then_ms)}

        log("compareRuns")
        ms, bodies = measure(
            client, COMPARE, [{"ids": picked["compare_runs"]}], max(20, rounds // 5)
        )
        c = bodies[0]["compareRuns"]
        results["compareRuns 100 runs x 50 metrics"] = {
            **percentiles(ms),
            "runs": len(c["runs"]),
            "metrics": len(c["metrics"]),
            "params": len(c["params"]),
        }

    b50 = results["baseline {__typename}"]["p50"]
    ratio = {
        "lineage all walks p95": lineage["all walks"]["p95"],
        "searchRuns metric filter+order p95": search["metric filter + metric order (first two)"][
            "p95"
        ],
        "modelVersionByAlias p50": results["modelVersionByAlias"]["now"]["p50"],
        "compareRuns p95": results["compareRuns 100 runs x 50 metrics"]["p95"],
    }
    report["summary_ms"] = ratio
    report["summary_vs_baseline_p50"] = {k: round(v / b50, 1) for k, v in ratio.items()}
    report["targets_met"] = {
        "lineage p95 <= 20": ratio["lineage all walks p95"] <= 20,
        "searchRuns p95 <= 20": ratio["searchRuns metric filter+order p95"] <= 20,
        "by alias p50 <= 5": ratio["modelVersionByAlias p50"] <= 5,
        "compareRuns <= 100": ratio["compareRuns p95"] <= 100,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

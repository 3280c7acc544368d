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
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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

    return Starlette(routes=graphql_routes(lambda: deps["api"]), lifespan=lifespan)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(url: str) -> Any:
    port = _free_port()
    env = {**os.environ, URL_ENV: url, "STUDBOOK_AUTH_DISABLED": "false"}
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
    args = parser.parse_args()
    admin = os.environ.get("STUDBOOK_DATABASE_URL") or DEFAULT_ADMIN_URL
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

"""A synthetic lineage graph of ~1M edges with hub nodes, written straight into the read models.

Creates a fresh database (dropping an old one of the same name), migrates it and fills the
read-model tables of project `bench` with COPY, deterministically (seeded):

* 10,000 raw dataset versions (2,000 datasets x 5 versions); three of them are hubs, used as an
  input by 50,000 / 20,000 / 5,000 training runs;
* 12 pipeline layers of 12,500 runs each: every pipeline run reads two dataset versions of the
  layer before and writes one dataset version derived from them (5 edges per run);
* 100,000 training runs (the `searchRuns` population): two inputs from the pipeline layers, the
  hub inputs, 10 params, 10 metrics with latest/min/max, 2 tags; 1,000 of them log 50 metrics
  (the `compareRuns` set); 15% register a model version (15,000 versions of 200 models), with
  `production` / `staging` alias histories, approvals and deployments.

Then VACUUM ANALYZE. Prints one JSON object (row counts, database URL without its password,
seconds) on stdout. `--tiny` builds the same shape with about 4,000 edges and 1,300 runs, in
seconds.

    .venv/bin/python bench/lineage_graph.py [--database studbook_bench] [--tiny]

Then measure with `bench/graphql_queries.py` (same `--database`). Needs PostgreSQL from
`scripts/stack up` (STUDBOOK_DATABASE_URL, or the stack's default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from studbook_server.adapters import postgres

P = "bench"
SEED = 20260301
COMPARE_METRICS = 50
MODEL_SHARE = 0.15


@dataclass(frozen=True)
class Sizes:
    """How big the graph is. The default is the benchmark's; `TINY` (`--tiny`) only checks that
    the script and `graphql_queries.py` run (tests/test_bench_smoke.py). Both keep what
    `graphql_queries.py` relies on: the hubs `raw-0..2@v1`, and 1,000 training runs with
    `COMPARE_METRICS` metrics, of which compareRuns takes every tenth."""

    raw_datasets: int = 2000
    raw_versions: int = 5
    layers: int = 12
    pipeline_runs_per_layer: int = 12_500
    training_runs: int = 100_000
    hubs: dict[str, int] = field(
        default_factory=lambda: {
            "dataset_version:raw-0@v1": 50_000,
            "dataset_version:raw-1@v1": 20_000,
            "dataset_version:raw-2@v1": 5_000,
        }
    )
    compare_runs: int = 1000
    models: int = 200


FULL = Sizes()
TINY = Sizes(
    raw_datasets=20,
    layers=3,
    pipeline_runs_per_layer=100,
    training_runs=1000,
    hubs={"dataset_version:raw-0@v1": 500, "dataset_version:raw-1@v1": 200,
          "dataset_version:raw-2@v1": 50},
    models=20,
)  # fmt: skip
METRICS = ["accuracy", "loss", "auc", "f1", "precision", "recall", "val_loss", "val_accuracy",
           "latency_ms", "throughput"]  # fmt: skip
T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:15432/postgres"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def digest(i: int, salt: str) -> str:
    return "sha256:" + uuid.uuid5(uuid.NAMESPACE_OID, f"{salt}{i}").hex * 2


class Graph:
    """Everything generated, as row iterators per table (columns in table order)."""

    def __init__(self, sizes: Sizes = FULL) -> None:
        self.n = sizes
        self.rnd = random.Random(SEED)
        self.layers: list[list[str]] = []  # dataset version nodes per layer (0 = raw)
        self.pipeline: list[tuple[str, int, list[str], str]] = []  # run id, layer, inputs, output
        self.training: list[tuple[str, list[str]]] = []  # run id, inputs
        self._plan()

    def _plan(self) -> None:
        rnd = self.rnd
        self.layers.append(
            [
                f"dataset_version:raw-{d}@v{v}"
                for d in range(self.n.raw_datasets)
                for v in range(1, self.n.raw_versions + 1)
            ]
        )
        for layer in range(1, self.n.layers + 1):
            out = []
            below = self.layers[layer - 1]
            for i in range(self.n.pipeline_runs_per_layer):
                run = f"pipe-{layer}-{i}"
                inputs = rnd.sample(below, 2)
                node = f"dataset_version:feat-{layer}-{i}@v1"
                self.pipeline.append((run, layer, inputs, node))
                out.append(node)
            self.layers.append(out)
        pipeline_nodes = [n for layer in self.layers[1:] for n in layer]
        hub_users = {
            hub: set(rnd.sample(range(self.n.training_runs), k)) for hub, k in self.n.hubs.items()
        }
        for i in range(self.n.training_runs):
            inputs = rnd.sample(pipeline_nodes, 2)
            inputs += [hub for hub, users in hub_users.items() if i in users]
            self.training.append((f"train-{i:06}", inputs))

    # ------------------------------------------------------------------------------- rows

    def edges(self) -> Iterator[tuple[Any, ...]]:
        for run, layer, inputs, out in self.pipeline:
            at = T0 + timedelta(hours=layer * 24 * 20)
            for src in inputs:
                yield (P, "input", src, f"run:{run}", "source", at, at, uuid.uuid4())
                yield (P, "derived", src, out, None, at, at, uuid.uuid4())
            yield (P, "output", f"run:{run}", out, None, at, at, uuid.uuid4())
        for i, (run, inputs) in enumerate(self.training):
            at = self.started(i)
            for n, src in enumerate(inputs):
                yield (
                    P,
                    "input",
                    src,
                    f"run:{run}",
                    "train" if n == 0 else "extra",
                    at,
                    at,
                    uuid.uuid4(),
                )
        for (model, number), (run, at) in self.model_versions.items():
            yield (
                P,
                "trained",
                f"run:{run}",
                f"model_version:{model}@{number}",
                None,
                at,
                at,
                uuid.uuid4(),
            )

    def started(self, i: int) -> datetime:
        return T0 + timedelta(seconds=i * 250)

    def runs(self) -> Iterator[tuple[Any, ...]]:
        for run, layer, _, _ in self.pipeline:
            at = T0 + timedelta(hours=layer * 24 * 20)
            yield (P, run, f"pipeline {run}", "pipeline", None, "completed", "etl", at,
                   at + timedelta(hours=1), at, {"git_repo": "git@x:etl.git", "git_commit": f"{layer:07x}"},
                   f"{layer:07x}", {"python_version": "3.11.7"}, None)  # fmt: skip
        statuses = ["completed"] * 8 + ["failed", "running"]
        for i, (run, _) in enumerate(self.training):
            at = self.started(i)
            status = statuses[i % 10]
            commit = f"{i % 97:07x}"
            yield (P, run, f"train {i}", f"exp-{i % 50}", None, status, f"user-{i % 20}", at,
                   at + timedelta(hours=2) if status != "running" else None, at,
                   {"git_repo": "git@x:models.git", "git_commit": commit, "git_dirty": i % 13 == 0},
                   commit, {"python_version": "3.11.7", "torch": "2.3" if i % 2 else "2.4"}, None)  # fmt: skip

    def params(self) -> Iterator[tuple[Any, ...]]:
        rnd = random.Random(SEED + 1)
        for run, _ in self.training:
            yield (P, run, "lr", rnd.choice([0.1, 0.03, 0.01, 0.003, 0.001]))
            yield (P, run, "batch_size", rnd.choice([32, 64, 128, 256]))
            yield (P, run, "optimizer", rnd.choice(["adam", "sgd", "adamw"]))
            yield (P, run, "layers", rnd.randint(1, 12))
            yield (P, run, "dropout", round(rnd.random() / 2, 2))
            yield (P, run, "epochs", rnd.randint(1, 100))
            yield (P, run, "seed", rnd.randint(0, 10_000))
            yield (P, run, "weight_decay", rnd.choice([0.0, 1e-4, 1e-3]))
            yield (P, run, "warmup", rnd.randint(0, 1000))
            yield (P, run, "scheduler", rnd.choice(["cosine", "linear", "none"]))

    def metrics(self) -> Iterator[tuple[Any, ...]]:
        rnd = random.Random(SEED + 2)
        for i, (run, _) in enumerate(self.training):
            at = self.started(i) + timedelta(hours=1)
            keys = METRICS + (
                [f"m{k:02}" for k in range(COMPARE_METRICS - len(METRICS))]
                if i < self.n.compare_runs
                else []
            )
            for key in keys:
                value = rnd.random()
                lo, hi = value * rnd.uniform(0.5, 1.0), value + rnd.random() * (1 - value)
                yield (P, run, key, value, 99, at, i + 1, lo, hi, 100)

    def tags(self) -> Iterator[tuple[Any, ...]]:
        for i, (run, _) in enumerate(self.training):
            yield (P, run, "team", ["growth", "core", "risk", "search"][i % 4])
            yield (P, run, "priority", "high" if i % 10 == 0 else "normal")

    def datasets(self) -> Iterator[tuple[Any, ...]]:
        names = [f"raw-{d}" for d in range(self.n.raw_datasets)]
        names += [
            f"feat-{layer}-{i}"
            for layer in range(1, self.n.layers + 1)
            for i in range(self.n.pipeline_runs_per_layer)
        ]
        for name in names:
            yield (P, name, None, f"s3://bench/{name}", "etl", T0, T0)

    def dataset_versions(self) -> Iterator[tuple[Any, ...]]:
        for d in range(self.n.raw_datasets):
            for v in range(1, self.n.raw_versions + 1):
                yield (P, f"raw-{d}", f"v{v}", v, f"s3://bench/raw-{d}/{v}", digest(d * 10 + v, "raw"),
                       1_000_000, 10_000, None, [], None, "etl", T0, T0)  # fmt: skip
        for n, (run, layer, inputs, out) in enumerate(self.pipeline):
            name = out.partition(":")[2].partition("@")[0]
            parents = [
                {"dataset": s.partition(":")[2].partition("@")[0], "version": s.partition("@")[2]}
                for s in inputs
            ]
            at = T0 + timedelta(hours=layer * 24 * 20)
            yield (P, name, "v1", 1, f"s3://bench/{name}/1", digest(n, "feat"), 100_000, 1_000, None,
                   parents, run, "etl", at, at)  # fmt: skip

    @property
    def model_versions(self) -> dict[tuple[str, int], tuple[str, datetime]]:
        if not hasattr(self, "_mv"):
            rnd = random.Random(SEED + 3)
            numbers: dict[str, int] = {}
            mv: dict[tuple[str, int], tuple[str, datetime]] = {}
            for i, (run, _) in enumerate(self.training):
                if rnd.random() < MODEL_SHARE:
                    model = f"model-{i % self.n.models:03}"
                    numbers[model] = numbers.get(model, 0) + 1
                    mv[(model, numbers[model])] = (run, self.started(i) + timedelta(hours=3))
            self._mv = mv
        return self._mv

    def models(self) -> Iterator[tuple[Any, ...]]:
        for m in range(self.n.models):
            yield (P, f"model-{m:03}", None, "ml", T0, T0)

    def model_version_rows(self) -> Iterator[tuple[Any, ...]]:
        for (model, number), (run, at) in self.model_versions.items():
            yield (P, model, number, run, f"s3://bench/{model}/{number}", None, "torch", None, None,
                   "ml", at, at, uuid.uuid4())  # fmt: skip

    def governance(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Alias and deployment histories (as the projector writes them) and approvals."""
        rnd = random.Random(SEED + 4)
        latest: dict[str, int] = {}
        for model, number in self.model_versions:
            latest[model] = max(latest.get(model, 0), number)
        assignments: list[tuple[Any, ...]] = []
        approvals: list[tuple[Any, ...]] = []
        position = 0
        for model, top in sorted(latest.items()):
            for kind, name, changes in (("alias", "production", 10), ("alias", "staging", 10),
                                        ("deployment", "prod", 5)):  # fmt: skip
                versions = sorted(rnd.sample(range(1, top + 1), min(changes, top)))
                times = [self.model_versions[(model, v)][1] + timedelta(days=1) for v in versions]
                for k, (v, at) in enumerate(zip(versions, times, strict=True)):
                    position += 1
                    until = times[k + 1] if k + 1 < len(times) else None
                    assignments.append((position, 0, P, kind, model, name, v, at, until, at, None,
                                        "ml", uuid.uuid4(), "k8s/x" if kind == "deployment" else None))  # fmt: skip
                    if kind == "alias" and rnd.random() < 0.8:
                        approvals.append((uuid.uuid4(), P, model, v, "approved", "lead", "ok", [],
                                          at - timedelta(hours=1), at))  # fmt: skip
        return assignments, approvals


TABLES: dict[str, list[str]] = {
    "lineage_edges": ["project", "edge_type", "src", "dst", "role", "valid_from", "recorded_from", "event_id"],
    "runs": ["project", "run_id", "name", "experiment", "parent_run", "status", "actor", "started_at",
             "finished_at", "recorded_at", "code", "git_commit", "environment", "error"],
    "run_params": ["project", "run_id", "key", "value"],
    "run_metrics": ["project", "run_id", "key", "value", "step", "at", "position", "min_value",
                    "max_value", "points"],
    "run_tags": ["project", "run_id", "key", "value"],
    "datasets": ["project", "name", "description", "uri", "created_by", "created_at", "recorded_at"],
    "dataset_versions": ["project", "dataset", "version", "number", "uri", "digest", "size_bytes",
                         "row_count", "schema", "parents", "produced_by_run", "created_by",
                         "created_at", "recorded_at"],
    "models": ["project", "name", "description", "created_by", "created_at", "recorded_at"],
    "model_versions": ["project", "model", "number", "run_id", "artifact_uri", "digest", "framework",
                       "signature", "description", "registered_by", "registered_at", "recorded_at",
                       "event_id"],
    "assignments": ["created_position", "part", "project", "kind", "model", "name", "version",
                    "valid_from", "valid_to", "recorded_from", "recorded_to", "set_by", "set_event",
                    "target"],
    "approvals": ["event_id", "project", "model", "version", "decision", "reviewer", "comment",
                  "evidence", "decided_at", "recorded_at"],
}  # fmt: skip


class _Counted:
    """Streams rows to COPY without holding them all, counting them."""

    def __init__(self, rows: Any) -> None:
        self.rows = iter(rows)
        self.n = 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self.rows:
            self.n += 1
            yield row


def redacted(url: str) -> str:
    """`url` without its password: reports are pasted into documents and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


async def build(admin_url: str, name: str, sizes: Sizes = FULL) -> dict[str, Any]:
    started = time.perf_counter()
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # name from the CLI
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    con = await postgres.connect(url)
    counts: dict[str, int] = {}
    try:
        await postgres.migrate(con)
        log("planning the graph")
        g = Graph(sizes)
        assignments, approvals = g.governance()
        sources: dict[str, Any] = {
            "lineage_edges": g.edges(),
            "runs": g.runs(),
            "run_params": g.params(),
            "run_metrics": g.metrics(),
            "run_tags": g.tags(),
            "datasets": g.datasets(),
            "dataset_versions": g.dataset_versions(),
            "models": g.models(),
            "model_versions": g.model_version_rows(),
            "assignments": assignments,
            "approvals": approvals,
        }
        await con.execute(
            "INSERT INTO rm.projects VALUES ($1, 'synthetic benchmark graph', 'bench', $2, $2)",
            P,
            T0,
        )
        for table, rows in sources.items():
            t = time.perf_counter()
            counted = _Counted(rows)
            await con.copy_records_to_table(
                table, schema_name="rm", columns=TABLES[table], records=counted
            )
            counts[table] = counted.n
            log(f"{table}: {counted.n:,} rows in {time.perf_counter() - t:.1f}s")
        await con.execute("UPDATE rm.checkpoint SET position = 1")
        log("VACUUM ANALYZE")
        await con.execute("VACUUM ANALYZE")
    finally:
        await con.close()
    return {
        "database_url": redacted(url),
        "rows": counts,
        "hubs": sizes.hubs,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="studbook_bench")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a graph of a few thousand edges, to check that this and graphql_queries.py run",
    )
    args = parser.parse_args()
    admin_url = os.environ.get("STUDBOOK_DATABASE_URL") or DEFAULT_ADMIN_URL
    result = asyncio.run(build(admin_url, args.database, TINY if args.tiny else FULL))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reads from the read models (rm.*) in MLflow's shapes: experiments, runs, metric history.

Metric history is read only through :func:`metric_history`, so the storage of metric points can
change (chunked storage) without touching the handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from studbook_server.adapters.postgres import Pool
from studbook_server.mlflow._errors import not_found
from studbook_server.mlflow._ids import DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, to_ms

STATUS_TO_MLFLOW = {
    "running": "RUNNING",
    "completed": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
}
STATUS_FROM_MLFLOW = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "killed"}


def artifact_location(experiment_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}"


def run_artifact_uri(experiment_id: str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def _tag_list(tags: dict[str, Any] | None) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in sorted((tags or {}).items())]


def default_experiment() -> dict[str, Any]:
    return {
        "experiment_id": DEFAULT_EXPERIMENT_ID,
        "name": DEFAULT_EXPERIMENT_NAME,
        "artifact_location": artifact_location(DEFAULT_EXPERIMENT_ID),
        "lifecycle_stage": "active",
        "tags": [],
    }


EXPERIMENT_COLUMNS = (
    "experiment_id, name, artifact_location, lifecycle_stage, tags, created_at, updated_at"
)


def experiment_dict(row: Any) -> dict[str, Any]:
    return {
        "experiment_id": row["experiment_id"],
        "name": row["name"],
        "artifact_location": row["artifact_location"] or artifact_location(row["experiment_id"]),
        "lifecycle_stage": row["lifecycle_stage"],
        "creation_time": to_ms(row["created_at"]),
        "last_update_time": to_ms(row["updated_at"]),
        "tags": _tag_list(row["tags"]),
    }


async def experiment(pool: Pool, project: str, experiment_id: str) -> dict[str, Any] | None:
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return default_experiment()
    row = await pool.fetchrow(
        f"SELECT {EXPERIMENT_COLUMNS} FROM rm.experiments WHERE project = $1 AND experiment_id = $2",
        project, experiment_id,
    )  # fmt: skip
    return None if row is None else experiment_dict(row)


async def need_experiment(pool: Pool, project: str, experiment_id: str) -> dict[str, Any]:
    found = await experiment(pool, project, experiment_id)
    if found is None:
        raise not_found(f"No Experiment with id={experiment_id} exists")
    return found


async def experiment_by_name(pool: Pool, project: str, name: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {EXPERIMENT_COLUMNS} FROM rm.experiments WHERE project = $1 AND name = $2 "
        "ORDER BY lifecycle_stage = 'active' DESC, created_at LIMIT 1",
        project, name,
    )  # fmt: skip
    if row is not None:
        return experiment_dict(row)
    if name == DEFAULT_EXPERIMENT_NAME:
        return default_experiment()
    return None


def param_text(value: Any) -> str:
    """A param as MLflow shows it: the string it was logged as (other JSON as JSON text)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


# A run's own stage (rm.run_lifecycle; no row: active).
RUN_STAGE = (
    "coalesce((SELECT l.lifecycle_stage FROM rm.run_lifecycle l WHERE l.project = r.project "
    "AND l.run_id = r.run_id), 'active')"
)
RUN_COLUMNS = (
    "r.run_id, r.name, r.experiment, r.parent_run, r.status, r.actor, r.started_at, "
    "r.finished_at, " + RUN_STAGE + " AS lifecycle_stage"
)


def _ms(t: datetime | None) -> int | None:
    return to_ms(t)


async def runs(pool: Pool, project: str, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Full MLflow Run messages for ``run_ids`` (in that order; unknown ids left out)."""
    if not run_ids:
        return []
    ids = list(run_ids)
    rows = await pool.fetch(
        f"SELECT {RUN_COLUMNS} FROM rm.runs r WHERE r.project = $1 AND r.run_id = ANY($2::text[])",
        project, ids,
    )  # fmt: skip
    params = await pool.fetch(
        "SELECT run_id, key, value FROM rm.run_params WHERE project = $1 "
        "AND run_id = ANY($2::text[]) ORDER BY key",
        project, ids,
    )  # fmt: skip
    tags = await pool.fetch(
        "SELECT run_id, key, value FROM rm.run_tags WHERE project = $1 "
        "AND run_id = ANY($2::text[]) ORDER BY key",
        project, ids,
    )  # fmt: skip
    metrics = await pool.fetch(
        "SELECT run_id, key, value, step, at FROM rm.run_metrics WHERE project = $1 "
        "AND run_id = ANY($2::text[]) ORDER BY key",
        project, ids,
    )  # fmt: skip
    inputs = await pool.fetch(
        "SELECT substr(e.dst, 5) AS run_id, e.role, v.dataset, v.version, v.schema, v.uri "
        "FROM rm.lineage_edges e JOIN rm.dataset_versions v ON v.project = e.project "
        "AND e.src = 'dataset_version:' || v.dataset || '@' || v.version "
        "WHERE e.project = $1 AND e.edge_type = 'input' AND e.dst = ANY($2::text[]) "
        "ORDER BY e.valid_from, v.dataset",
        project, [f"run:{r}" for r in ids],
    )  # fmt: skip
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        experiment_id = row["experiment"] or DEFAULT_EXPERIMENT_ID
        info = {
            "run_id": row["run_id"],
            "run_uuid": row["run_id"],
            "run_name": row["name"] or "",
            "experiment_id": experiment_id,
            "user_id": row["actor"],
            "status": STATUS_TO_MLFLOW.get(row["status"], "RUNNING"),
            "start_time": _ms(row["started_at"]),
            "end_time": _ms(row["finished_at"]),
            "artifact_uri": run_artifact_uri(experiment_id, row["run_id"]),
            "lifecycle_stage": row["lifecycle_stage"],
        }
        by_id[row["run_id"]] = {
            "info": {k: v for k, v in info.items() if v is not None},
            "data": {"metrics": [], "params": [], "tags": []},
            "inputs": {"dataset_inputs": []},
        }
    for p in params:
        if p["run_id"] in by_id:
            by_id[p["run_id"]]["data"]["params"].append(
                {"key": p["key"], "value": param_text(p["value"])}
            )
    for t in tags:
        run = by_id.get(t["run_id"])
        if run is None:
            continue
        run["data"]["tags"].append({"key": t["key"], "value": t["value"]})
        if t["key"] == "mlflow.user":
            run["info"]["user_id"] = t["value"]
        elif t["key"] == "mlflow.runName":
            run["info"]["run_name"] = t["value"]
    for m in metrics:
        if m["run_id"] in by_id:
            by_id[m["run_id"]]["data"]["metrics"].append(
                {"key": m["key"], "value": m["value"], "timestamp": to_ms(m["at"]),
                 "step": m["step"]}
            )  # fmt: skip
    for i in inputs:
        run = by_id.get(i["run_id"])
        if run is not None:
            run["inputs"]["dataset_inputs"].append(dataset_input(i))
    return [by_id[r] for r in ids if r in by_id]


_ROLE_TO_CONTEXT = {"train": "training", "validation": "validation", "test": "test",
                    "evaluation": "evaluation"}  # fmt: skip


def dataset_input(row: Any) -> dict[str, Any]:
    """A DatasetInput from a dataset version the run used (MLflow's description is kept in the
    version's `schema` under `mlflow`, see _runs.log_inputs)."""
    described: dict[str, Any] = row["schema"] if isinstance(row["schema"], dict) else {}
    kept = described.get("mlflow")
    mlflow: dict[str, Any] = kept if isinstance(kept, dict) else {}
    dataset = {
        "name": mlflow.get("name", row["dataset"]),
        "digest": mlflow.get("digest", row["version"]),
        "source_type": mlflow.get("source_type", "studbook"),
        "source": mlflow.get("source", orjson.dumps({"uri": row["uri"]}).decode()),
    }
    for key in ("schema", "profile"):
        if isinstance(mlflow.get(key), str):
            dataset[key] = mlflow[key]
    tags = []
    context = mlflow.get("context") or _ROLE_TO_CONTEXT.get(row["role"] or "")
    if context:
        tags.append({"key": "mlflow.data.context", "value": context})
    return {"tags": tags, "dataset": dataset}


async def run(pool: Pool, project: str, run_id: str) -> dict[str, Any]:
    found = await runs(pool, project, [run_id])
    if not found:
        raise not_found(f"Run '{run_id}' not found")
    return found[0]


async def run_row(pool: Pool, project: str, run_id: str) -> Any:
    row = await pool.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM rm.runs r WHERE r.project = $1 AND r.run_id = $2",
        project, run_id,
    )  # fmt: skip
    if row is None:
        raise not_found(f"Run '{run_id}' not found")
    return row


async def metric_history(
    pool: Pool, project: str, run_id: str, key: str, *, offset: int, limit: int
) -> list[tuple[int, float, datetime]]:
    """One series' points as (step, value, at), in (step, at, arrival) order, skipping
    ``offset``, at most ``limit``.

    The adapter's only reader of per-point storage (rm.metric_chunks, docs/operations.md)."""
    rows = await pool.fetch(
        "SELECT u.step, u.value, u.at FROM rm.metric_series s "
        "JOIN rm.metric_chunks c ON c.series_id = s.id, "
        "unnest(c.steps, c.vals, c.ats, c.positions) AS u(step, value, at, position) "
        "WHERE s.project = $1 AND s.run_id = $2 AND s.key = $3 "
        "ORDER BY u.step, u.at, u.position OFFSET $4 LIMIT $5",
        project, run_id, key, offset, limit,
    )  # fmt: skip
    return [(r["step"], r["value"], r["at"]) for r in rows]

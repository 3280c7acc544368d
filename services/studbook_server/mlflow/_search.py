"""`runs/search`, `experiments/search`, `metrics/get-history`, `metrics/get-history-bulk-interval`.

Filters are MLflow's grammar (_filter.py) translated to parameterised SQL over the read models;
page tokens are opaque (an offset into the ordered result).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from studbook_server.mlflow._errors import invalid
from studbook_server.mlflow._filter import (
    NUMERIC_ATTRIBUTES,
    Comparison,
    Sql,
    op_sql,
    parse,
    parse_order,
    run_order_expr,
    run_where,
)
from studbook_server.mlflow._http import Ctx, Endpoint
from studbook_server.mlflow._reads import (
    experiment_dict,
    metric_history,
    run_row,
    runs,
)

MAX_RUNS = 50_000  # MLflow's SEARCH_MAX_RESULTS_THRESHOLD
DEFAULT_RUNS = 1000
MAX_EXPERIMENTS = 50_000
DEFAULT_EXPERIMENTS = 1000
MAX_HISTORY = 25_000  # what the client asks for per page; larger pages are cut to this
VIEW_TYPES = {"ACTIVE_ONLY", "DELETED_ONLY", "ALL", "1", "2", "3"}
_VIEW_NUMBERS = {"1": "ACTIVE_ONLY", "2": "DELETED_ONLY", "3": "ALL"}


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"offset": offset})).decode().rstrip("=")


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(doc["offset"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise invalid(f"Invalid page token: {token!r}") from None
    if offset < 0:
        raise invalid(f"Invalid page token: {token!r}")
    return offset


def _limit(ctx: Ctx, default: int, maximum: int) -> int:
    n = ctx.params.integer("max_results", default=default)
    assert n is not None
    if n < 1 or n > maximum:
        raise invalid(
            f"Invalid value {n} for parameter 'max_results' supplied. It must be at most "
            f"{maximum}, and at least 1."
        )
    return n


def _view(ctx: Ctx, field: str) -> str:
    view = (ctx.params.text(field) or "ACTIVE_ONLY").upper()
    if view not in VIEW_TYPES:
        raise invalid(f"'{field}' must be ACTIVE_ONLY, DELETED_ONLY or ALL; got {view!r}")
    return _VIEW_NUMBERS.get(view, view)


# The run's stage as search sees it: deleted when the run or its experiment is.
_RUN_STAGE = (
    "(CASE WHEN EXISTS (SELECT 1 FROM rm.run_lifecycle l WHERE l.project = r.project "
    "AND l.run_id = r.run_id AND l.lifecycle_stage = 'deleted') OR EXISTS (SELECT 1 FROM rm.experiments x "
    "WHERE x.project = r.project AND x.experiment_id = r.experiment "
    "AND x.lifecycle_stage = 'deleted') THEN 'deleted' ELSE 'active' END)"
)


async def search_runs(ctx: Ctx) -> dict[str, Any]:
    experiment_ids = [str(e) for e in ctx.params.items("experiment_ids")]
    limit = _limit(ctx, DEFAULT_RUNS, MAX_RUNS)
    offset = decode_token(ctx.params.text("page_token"))
    view = _view(ctx, "run_view_type")
    sql = Sql()
    where = [f"r.project = {sql.add(ctx.project)}",
             f"coalesce(r.experiment, '0') = ANY({sql.add(experiment_ids)}::text[])"]  # fmt: skip
    if view == "ACTIVE_ONLY":
        where.append(f"{_RUN_STAGE} = 'active'")
    elif view == "DELETED_ONLY":
        where.append(f"{_RUN_STAGE} = 'deleted'")
    where += run_where(ctx.params.text("filter"), sql)
    order = []
    for clause in ctx.params.items("order_by"):
        o = parse_order(str(clause))
        order.append(f"{run_order_expr(o, sql)} {'DESC' if o.descending else 'ASC'} NULLS LAST")
    order += ["r.started_at DESC NULLS LAST", "r.run_id"]
    query = (
        f"SELECT r.run_id FROM rm.runs r WHERE {' AND '.join(where)} "
        f"ORDER BY {', '.join(order)} OFFSET {sql.add(offset)} LIMIT {sql.add(limit + 1)}"
    )
    ids = [row[0] for row in await ctx.pool.fetch(query, *sql.args)]
    out: dict[str, Any] = {"runs": await runs(ctx.pool, ctx.project, ids[:limit])}
    if len(ids) > limit:
        out["next_page_token"] = encode_token(offset + limit)
    return out


def _experiment_expr(key: str, sql: Sql) -> str:
    if key == "name":
        return "e.name"
    if key == "experiment_id":
        return "e.experiment_id"
    if key == "creation_time":
        return "(extract(epoch FROM e.created_at) * 1000)::bigint"
    if key == "last_update_time":
        return "(extract(epoch FROM e.updated_at) * 1000)::bigint"
    if key == "lifecycle_stage":
        return "e.lifecycle_stage"
    raise invalid(
        f"Invalid attribute key '{key}' for experiments: expected name, creation_time, "
        "last_update_time"
    )


def _experiment_condition(c: Comparison, sql: Sql) -> str:
    if c.entity == "tag":
        expr = f"(e.tags ->> {sql.add(c.key)})"
    elif c.entity == "attribute":
        expr = _experiment_expr(c.key, sql)
        if c.key in NUMERIC_ATTRIBUTES and isinstance(c.value, str):
            raise invalid(f"Expected a number for attribute '{c.key}'")
    else:
        raise invalid(f"Invalid filter key for experiments: {c.entity}s.{c.key}")
    return op_sql(expr, c, sql)


_EXPERIMENTS = """
SELECT * FROM (
    SELECT experiment_id, name, artifact_location, lifecycle_stage, tags, created_at, updated_at
    FROM rm.experiments WHERE project = $1
    UNION ALL
    SELECT '0', 'Default', 'mlflow-artifacts:/0', 'active', '{}'::jsonb, NULL, NULL
    WHERE NOT EXISTS (SELECT 1 FROM rm.experiments WHERE project = $1 AND experiment_id = '0')
) e
"""


async def search_experiments(ctx: Ctx) -> dict[str, Any]:
    limit = _limit(ctx, DEFAULT_EXPERIMENTS, MAX_EXPERIMENTS)
    offset = decode_token(ctx.params.text("page_token"))
    view = _view(ctx, "view_type")
    sql = Sql()
    sql.add(ctx.project)
    where = ["TRUE"]
    if view == "ACTIVE_ONLY":
        where.append("e.lifecycle_stage = 'active'")
    elif view == "DELETED_ONLY":
        where.append("e.lifecycle_stage = 'deleted'")
    where += [_experiment_condition(c, sql) for c in parse(ctx.params.text("filter"))]
    order = []
    for clause in ctx.params.items("order_by"):
        o = parse_order(str(clause))
        if o.entity != "attribute":
            raise invalid(f"Invalid order_by clause for experiments: {clause!r}")
        order.append(f"{_experiment_expr(o.key, sql)} {'DESC' if o.descending else 'ASC'}")
    order += ["e.created_at DESC NULLS LAST", "e.experiment_id"]
    query = (
        f"{_EXPERIMENTS} WHERE {' AND '.join(where)} ORDER BY {', '.join(order)} "
        f"OFFSET {sql.add(offset)} LIMIT {sql.add(limit + 1)}"
    )
    rows = await ctx.pool.fetch(query, *sql.args)
    experiments = []
    for row in rows[:limit]:
        e = experiment_dict(row)
        experiments.append({k: v for k, v in e.items() if v is not None})
    out: dict[str, Any] = {"experiments": experiments}
    if len(rows) > limit:
        out["next_page_token"] = encode_token(offset + limit)
    return out


async def get_history(ctx: Ctx) -> dict[str, Any]:
    run_id = ctx.params.run_id()
    key = ctx.params.req("metric_key")
    await run_row(ctx.pool, ctx.project, run_id)
    limit = min(_limit(ctx, MAX_HISTORY, 10**9), MAX_HISTORY)
    offset = decode_token(ctx.params.text("page_token"))
    points = await metric_history(ctx.pool, ctx.project, run_id, key, offset=offset,
                                  limit=limit + 1)  # fmt: skip
    out: dict[str, Any] = {
        "metrics": [
            {"key": key, "value": value, "timestamp": int(at.timestamp() * 1000), "step": step}
            for step, value, at in points[:limit]
        ]
    }
    if len(points) > limit:
        out["next_page_token"] = encode_token(offset + limit)
    return out


async def get_history_bulk_interval(ctx: Ctx) -> dict[str, Any]:
    run_ids = [str(r) for r in ctx.params.items("run_ids")]
    if not run_ids or len(run_ids) > 100:
        raise invalid("'run_ids' must name 1 to 100 runs")
    key = ctx.params.req("metric_key")
    start = ctx.params.integer("start_step")
    end = ctx.params.integer("end_step")
    limit = min(_limit(ctx, 320, MAX_HISTORY), MAX_HISTORY)
    out = []
    for run_id in run_ids:
        points = await metric_history(ctx.pool, ctx.project, run_id, key, offset=0,
                                      limit=10**7)  # fmt: skip
        chosen = [p for p in points if (start is None or p[0] >= start)
                  and (end is None or p[0] <= end)]  # fmt: skip
        if len(chosen) > limit:  # evenly spaced, keeping the first and the last
            stride = (len(chosen) - 1) / (limit - 1) if limit > 1 else len(chosen)
            chosen = [chosen[round(i * stride)] for i in range(limit)]
        out += [
            {"key": key, "value": v, "timestamp": int(at.timestamp() * 1000), "step": s,
             "run_id": run_id}
            for s, v, at in chosen
        ]  # fmt: skip
    return {"metrics": out}


ENDPOINTS = [
    Endpoint("POST", "/api/2.0/mlflow/runs/search", search_runs),
    Endpoint("POST", "/api/2.0/mlflow/experiments/search", search_experiments),
    Endpoint("GET", "/api/2.0/mlflow/experiments/search", search_experiments),
    Endpoint("GET", "/api/2.0/mlflow/metrics/get-history", get_history),
    Endpoint("GET", "/api/2.0/mlflow/metrics/get-history-bulk-interval", get_history_bulk_interval),
]

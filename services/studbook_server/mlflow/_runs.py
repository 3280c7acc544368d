"""`runs/*`: create, get, update, delete, restore, log-parameter, log-metric, log-batch,
set-tag, delete-tag, log-inputs.

MLflow runs are Studbook runs (run.started, run.params.logged, run.metrics.logged, run.tags.set,
run.finished, run.lifecycle.set); datasets of log-inputs are dataset versions the run used
(dataset.version.reported + run.input.used), so they are in Studbook's lineage.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import orjson

from studbook_server.mlflow._errors import MlflowError, invalid
from studbook_server.mlflow._experiments import tag_pairs
from studbook_server.mlflow._http import Ctx, Endpoint
from studbook_server.mlflow._ids import (
    DEFAULT_EXPERIMENT_ID,
    RUN_ID,
    event,
    from_ms,
    new_run_id,
    rfc3339,
)
from studbook_server.mlflow._reads import STATUS_FROM_MLFLOW, need_experiment, run, run_row

P = "/api/2.0/mlflow/runs/"
# MLflow's limits for one log-batch request.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTRIES = 1000, 100, 100, 1000
MAX_KEY, MAX_PARAM_VALUE = 250, 6000
MAX_RUN_NAME = 250
_ADJECTIVES = ("amber", "bold", "calm", "deft", "eager", "fair", "grand", "keen", "lucid",
               "merry", "noble", "quick", "sunny", "tidy", "vivid", "witty")  # fmt: skip
_NOUNS = ("badger", "crane", "dingo", "eagle", "finch", "gecko", "heron", "ibex", "koala",
          "lynx", "mole", "otter", "panda", "quail", "robin", "stoat")  # fmt: skip
_DATASET_BAD = re.compile(r"[^A-Za-z0-9._/-]+")
_VERSION_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_CONTEXT_TO_ROLE = {"training": "train", "train": "train", "validation": "validation",
                    "eval": "evaluation", "evaluation": "evaluation", "test": "test",
                    "testing": "test"}  # fmt: skip


def _run_id(ctx: Ctx) -> str:
    run_id = ctx.params.run_id()
    if not RUN_ID.match(run_id):
        raise invalid(f"'run_id' is not a valid run id: {run_id!r}")
    return run_id


async def _active_run(ctx: Ctx, run_id: str) -> Any:
    row = await run_row(ctx.pool, ctx.project, run_id)
    if row["lifecycle_stage"] != "active":
        raise invalid(f"The run {run_id} must be in the 'active' state. Current state is deleted.")
    return row


def _key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise invalid(f"{what} key must be a string of 1 to {MAX_KEY} characters; got {key!r}")
    return key


def _params(raw: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, p in enumerate(raw):
        key = _key(p.get("key"), f"params[{n}]")
        value = p.get("value")
        text = "" if value is None else str(value)
        if len(text) > MAX_PARAM_VALUE:
            raise invalid(
                f"Param value for '{key}' exceeds {MAX_PARAM_VALUE} characters: got {len(text)}"
            )
        if key in out and out[key] != text:
            raise invalid(f"Duplicate param '{key}' with different values in one request")
        out[key] = text
    return out


def _metric(m: dict[str, Any], n: int) -> dict[str, Any]:
    key = _key(m.get("key"), f"metrics[{n}]")
    value: Any = m.get("value")
    try:
        number = float(value)  # protobuf JSON may send "NaN", "Infinity" or a numeric string
    except (TypeError, ValueError):
        raise invalid(f"metric '{key}': 'value' must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise invalid(
            f"metric '{key}': value {value!r} is not finite; Studbook stores finite numbers only"
        )
    step = m.get("step", 0) or 0
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise invalid(f"metric '{key}': 'step' must be an integer; got {step!r}") from None
    if step < 0:
        raise invalid(f"metric '{key}': 'step' must be >= 0 in Studbook; got {step}")
    point: dict[str, Any] = {"key": key, "value": number, "step": step}
    ts = m.get("timestamp")
    if ts is not None:
        try:
            point["timestamp"] = rfc3339(from_ms(int(ts)))
        except (TypeError, ValueError, OverflowError, OSError):
            raise invalid(f"metric '{key}': 'timestamp' must be epoch milliseconds") from None
    return point


async def _check_params(ctx: Ctx, run_id: str, params: dict[str, str]) -> dict[str, str]:
    """MLflow's rule: a param is logged once; the same value again is fine (and not re-sent)."""
    rows = await ctx.pool.fetch(
        "SELECT key, value FROM rm.run_params WHERE project = $1 AND run_id = $2 "
        "AND key = ANY($3::text[])",
        ctx.project, run_id, list(params),
    )  # fmt: skip
    new = dict(params)
    for row in rows:
        old = row["value"] if isinstance(row["value"], str) else orjson.dumps(row["value"]).decode()
        if old != params[row["key"]]:
            raise invalid(
                f"Changing param values is not allowed. Param with key='{row['key']}' was already "
                f"logged with value='{old}' for run ID='{run_id}'. Attempted logging new value "
                f"'{params[row['key']]}'."
            )
        del new[row["key"]]
    return new


def _generated_name() -> str:
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randint(100, 999)}"


async def create(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    experiment_id = ctx.params.text("experiment_id") or DEFAULT_EXPERIMENT_ID
    experiment = await need_experiment(ctx.pool, ctx.project, experiment_id)
    if experiment["lifecycle_stage"] != "active":
        raise invalid(f"The experiment {experiment_id} must be in the 'active' state.")
    tags = tag_pairs(ctx.params.objects("tags"))
    name = ctx.params.text("run_name") or tags.get("mlflow.runName") or _generated_name()
    if len(name) > MAX_RUN_NAME:
        raise invalid(f"'run_name' exceeds {MAX_RUN_NAME} characters")
    tags["mlflow.runName"] = name
    user = ctx.params.text("user_id") or tags.get("mlflow.user")
    if user:
        tags.setdefault("mlflow.user", user)
    run_id = new_run_id()
    start = from_ms(ctx.params.integer("start_time"))
    started: dict[str, Any] = {"name": name, "experiment": experiment_id}
    parent = tags.get("mlflow.parentRunId")
    if parent:
        if not RUN_ID.match(parent):
            raise invalid(f"tag 'mlflow.parentRunId' is not a valid run id: {parent!r}")
        started["parent_run"] = parent
    actor = user or ctx.actor
    subject = f"run:{run_id}"
    docs = [
        event("run.started", ctx.project, subject, started, actor=actor, at=start),
        event("run.tags.set", ctx.project, subject, {"tags": tags}, actor=actor, at=start),
    ]
    await ctx.submit(docs)
    return {"run": await run(ctx.pool, ctx.project, run_id)}


async def get(ctx: Ctx) -> dict[str, Any]:
    return {"run": await run(ctx.pool, ctx.project, _run_id(ctx))}


async def update(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    run_id = _run_id(ctx)
    await _active_run(ctx, run_id)
    subject = f"run:{run_id}"
    docs = []
    status = ctx.params.text("status")
    if status is not None and status not in ("RUNNING", "SCHEDULED", *STATUS_FROM_MLFLOW):
        raise invalid(
            f"'status' must be one of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED; got {status!r}"
        )
    name = ctx.params.text("run_name")
    if name is not None:
        if len(name) > MAX_RUN_NAME:
            raise invalid(f"'run_name' exceeds {MAX_RUN_NAME} characters")
        docs.append(event("run.tags.set", ctx.project, subject,
                          {"tags": {"mlflow.runName": name}}, actor=ctx.actor))  # fmt: skip
    if status in STATUS_FROM_MLFLOW:
        end = from_ms(ctx.params.integer("end_time"))
        docs.append(event("run.finished", ctx.project, subject,
                          {"status": STATUS_FROM_MLFLOW[status]}, actor=ctx.actor, at=end))  # fmt: skip
    if docs:
        await ctx.submit(docs)
    return {"run_info": (await run(ctx.pool, ctx.project, run_id))["info"]}


async def _lifecycle(ctx: Ctx, stage: str) -> dict[str, Any]:
    ctx.need("write")
    run_id = _run_id(ctx)
    row = await run_row(ctx.pool, ctx.project, run_id)
    if row["lifecycle_stage"] != stage:
        await ctx.submit([event("run.lifecycle.set", ctx.project, f"run:{run_id}",
                                {"lifecycle_stage": stage}, actor=ctx.actor)])  # fmt: skip
    return {}


async def delete(ctx: Ctx) -> dict[str, Any]:
    return await _lifecycle(ctx, "deleted")


async def restore(ctx: Ctx) -> dict[str, Any]:
    return await _lifecycle(ctx, "active")


async def log_batch(
    ctx: Ctx,
    run_id: str,
    metrics: list[dict[str, Any]],
    params: list[dict[str, Any]],
    tags: list[dict[str, Any]],
) -> None:
    if len(metrics) > MAX_METRICS:
        raise invalid(f"A batch logging request can contain at most {MAX_METRICS} metrics. "
                      f"Got {len(metrics)} metrics.")  # fmt: skip
    if len(params) > MAX_PARAMS:
        raise invalid(f"A batch logging request can contain at most {MAX_PARAMS} params. "
                      f"Got {len(params)} params.")  # fmt: skip
    if len(tags) > MAX_TAGS:
        raise invalid(f"A batch logging request can contain at most {MAX_TAGS} tags. "
                      f"Got {len(tags)} tags.")  # fmt: skip
    total = len(metrics) + len(params) + len(tags)
    if total > MAX_ENTRIES:
        raise invalid(f"A batch logging request can contain at most {MAX_ENTRIES} metrics, "
                      f"params and tags in total. Got {total}.")  # fmt: skip
    ctx.need("write")
    await _active_run(ctx, run_id)
    points = [_metric(m, n) for n, m in enumerate(metrics)]
    logged = _params(params)
    tag_values = tag_pairs(tags)
    if logged:
        logged = await _check_params(ctx, run_id, logged)
    subject = f"run:{run_id}"
    docs = []
    if logged:
        docs.append(event("run.params.logged", ctx.project, subject, {"params": logged},
                          actor=ctx.actor))  # fmt: skip
    if tag_values:
        docs.append(event("run.tags.set", ctx.project, subject, {"tags": tag_values},
                          actor=ctx.actor))  # fmt: skip
    if points:
        docs.append(event("run.metrics.logged", ctx.project, subject, {"metrics": points},
                          actor=ctx.actor))  # fmt: skip
    if docs:
        await ctx.submit(docs)


async def log_batch_endpoint(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    await log_batch(ctx, _run_id(ctx), p.objects("metrics"), p.objects("params"), p.objects("tags"))
    return {}


async def log_parameter(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    await log_batch(ctx, _run_id(ctx), [], [{"key": p.req("key"), "value": p.raw("value")}], [])
    return {}


async def log_metric(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    metric = {"key": p.req("key"), "value": p.raw("value"), "timestamp": p.raw("timestamp"),
              "step": p.raw("step")}  # fmt: skip
    if metric["value"] is None:
        raise invalid("Missing value for required parameter 'value'")
    await log_batch(ctx, _run_id(ctx), [metric], [], [])
    return {}


async def set_tag(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    await log_batch(ctx, _run_id(ctx), [], [], [{"key": p.req("key"), "value": p.raw("value")}])
    return {}


async def delete_tag(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    run_id = _run_id(ctx)
    key = _key(ctx.params.req("key"), "tag")
    await _active_run(ctx, run_id)
    exists = await ctx.pool.fetchval(
        "SELECT 1 FROM rm.run_tags WHERE project = $1 AND run_id = $2 AND key = $3",
        ctx.project, run_id, key,
    )  # fmt: skip
    if not exists:
        raise MlflowError(
            "RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in run with id {run_id}", 404
        )
    await ctx.submit([event("run.tags.set", ctx.project, f"run:{run_id}", {"tags": {key: None}},
                            actor=ctx.actor)])  # fmt: skip
    return {}


def studbook_dataset(name: str) -> str:
    """A Studbook dataset name for an MLflow dataset name."""
    cleaned = _DATASET_BAD.sub("-", name).strip("-./") or "dataset"
    if not cleaned[0].isalnum():
        cleaned = "d" + cleaned
    return cleaned[:200]


def studbook_version(digest: str) -> str:
    cleaned = _VERSION_BAD.sub("-", digest).strip("-.") or "0"
    if not cleaned[0].isalnum():
        cleaned = "v" + cleaned
    return cleaned[:128]


def _source_uri(source: Any, name: str, digest: str) -> str:
    try:
        parsed = orjson.loads(source) if isinstance(source, str) else source
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        for field in ("uri", "url", "path", "table_name"):
            value = parsed.get(field)
            if isinstance(value, str) and value:
                return value[:2048]
    return f"mlflow-dataset:{name}@{digest}"[:2048]


def dataset_events(
    project: str, run_id: str, item: dict[str, Any], n: int, actor: str
) -> tuple[str, str, list[dict[str, Any]]]:
    """(dataset, version, [dataset.version.reported, run.input.used]) for one DatasetInput."""
    dataset = item.get("dataset")
    if not isinstance(dataset, dict):
        raise invalid(f"'datasets[{n}].dataset' must be an object")
    name, digest = dataset.get("name"), dataset.get("digest")
    if not isinstance(name, str) or not name:
        raise invalid(f"'datasets[{n}].dataset.name' must be a non-empty string")
    if not isinstance(digest, str) or not digest:
        raise invalid(f"'datasets[{n}].dataset.digest' must be a non-empty string")
    context = None
    for tag in item.get("tags") or []:
        if isinstance(tag, dict) and tag.get("key") == "mlflow.data.context":
            context = str(tag.get("value"))
    described: dict[str, Any] = {"name": name, "digest": digest}
    for field in ("source_type", "source", "schema", "profile"):
        if isinstance(dataset.get(field), str):
            described[field] = dataset[field]
    if context:
        described["context"] = context
    ds, version = studbook_dataset(name), studbook_version(digest)
    reported = {"version": version, "uri": _source_uri(dataset.get("source"), name, digest),
                "schema": {"mlflow": described}}  # fmt: skip
    role = _CONTEXT_TO_ROLE.get((context or "").lower(), "other")
    docs = [
        event("dataset.version.reported", project, f"dataset:{ds}", reported, actor=actor),
        event("run.input.used", project, f"run:{run_id}",
              {"dataset": ds, "version": version, "role": role}, actor=actor),
    ]  # fmt: skip
    return ds, version, docs


async def log_inputs(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    run_id = _run_id(ctx)
    await _active_run(ctx, run_id)
    docs: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for n, item in enumerate(ctx.params.objects("datasets")):
        ds, version, made = dataset_events(ctx.project, run_id, item, n, ctx.actor)
        if (ds, version) in seen:
            continue
        seen.add((ds, version))
        # Deduplicated by (name, digest): a version already known, an input already linked,
        # is not sent again (log_metric(dataset=) re-sends the dataset each time).
        known = await ctx.pool.fetchval(
            "SELECT 1 FROM rm.dataset_versions WHERE project = $1 AND dataset = $2 "
            "AND version = $3",
            ctx.project, ds, version,
        )  # fmt: skip
        linked = await ctx.pool.fetchval(
            "SELECT 1 FROM rm.lineage_edges WHERE project = $1 AND edge_type = 'input' "
            "AND src = $2 AND dst = $3",
            ctx.project, f"dataset_version:{ds}@{version}", f"run:{run_id}",
        )  # fmt: skip
        if not known:
            docs.append(made[0])
        if not linked:
            docs.append(made[1])
    if docs:
        await ctx.submit(docs)
    return {}


ENDPOINTS = [
    Endpoint("POST", P + "create", create),
    Endpoint("GET", P + "get", get),
    Endpoint("POST", P + "update", update),
    Endpoint("POST", P + "delete", delete),
    Endpoint("POST", P + "restore", restore),
    Endpoint("POST", P + "log-parameter", log_parameter),
    Endpoint("POST", P + "log-metric", log_metric),
    Endpoint("POST", P + "log-batch", log_batch_endpoint),
    Endpoint("POST", P + "set-tag", set_tag),
    Endpoint("POST", P + "delete-tag", delete_tag),
    Endpoint("POST", P + "log-inputs", log_inputs),
]

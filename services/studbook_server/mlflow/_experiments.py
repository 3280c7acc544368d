"""`experiments/*`: get, get-by-name, create, update (rename), delete, restore, tags.

Experiments are events on the subject `experiment:<id>`: `experiment.created` and
`experiment.updated` (schema/events/). Experiment "0" (Default) exists in every project without
an event and cannot be changed.
"""

from __future__ import annotations

from typing import Any

from studbook_server.mlflow._errors import already_exists, invalid, not_found
from studbook_server.mlflow._http import Ctx, Endpoint
from studbook_server.mlflow._ids import (
    DEFAULT_EXPERIMENT_ID,
    derived_event_id,
    event,
    experiment_id,
)
from studbook_server.mlflow._reads import (
    artifact_location,
    experiment_by_name,
    need_experiment,
)

P = "/api/2.0/mlflow/experiments/"
MAX_NAME = 500
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000


def _name(ctx: Ctx, field: str) -> str:
    name = ctx.params.req(field).strip()
    if not name or len(name) > MAX_NAME:
        raise invalid(f"'{field}' must be 1 to {MAX_NAME} characters")
    return name


def tag_pairs(raw: list[dict[str, Any]], field: str = "tags") -> dict[str, str]:
    tags: dict[str, str] = {}
    for n, tag in enumerate(raw):
        key, value = tag.get("key"), tag.get("value")
        if not isinstance(key, str) or not key or len(key) > MAX_TAG_KEY:
            raise invalid(f"'{field}[{n}].key' must be a string of 1 to {MAX_TAG_KEY} characters")
        text = "" if value is None else str(value)
        if len(text) > MAX_TAG_VALUE:
            raise invalid(
                f"'{field}[{n}].value' ({key}) exceeds {MAX_TAG_VALUE} characters: got {len(text)}"
            )
        tags[key] = text
    return tags


async def get_by_name(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("experiment_name")
    found = await experiment_by_name(ctx.pool, ctx.project, name)
    if found is None:
        raise not_found(f"Could not find experiment with name '{name}'")
    return {"experiment": found}


async def get(ctx: Ctx) -> dict[str, Any]:
    found = await need_experiment(ctx.pool, ctx.project, ctx.params.req("experiment_id"))
    return {"experiment": found}


async def create(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    name = _name(ctx, "name")
    existing = await experiment_by_name(ctx.pool, ctx.project, name)
    if existing is not None:
        state = " in the deleted state" if existing["lifecycle_stage"] == "deleted" else ""
        raise already_exists(f"Experiment '{name}' already exists{state}.")
    candidates = [experiment_id(ctx.project, name, n) for n in range(8)]
    rows = await ctx.pool.fetch(
        "SELECT experiment_id FROM rm.experiments WHERE project = $1 "
        "AND experiment_id = ANY($2::text[])",
        ctx.project, candidates,
    )  # fmt: skip
    taken = {r[0] for r in rows}
    free = [c for c in candidates if c not in taken]
    if not free:
        raise invalid(f"no experiment id is free for the name '{name}': choose another name")
    new_id = free[0]
    payload: dict[str, Any] = {"name": name}
    location = ctx.params.text("artifact_location")
    payload["artifact_location"] = location or artifact_location(new_id)
    tags = tag_pairs(ctx.params.objects("tags"))
    if tags:
        payload["tags"] = tags
    doc = event(
        "experiment.created", ctx.project, f"experiment:{new_id}", payload, actor=ctx.actor,
        event_id=derived_event_id(ctx.project, "experiment.created", new_id),
    )  # fmt: skip
    await ctx.submit([doc])
    return {"experiment_id": new_id}


async def _update(ctx: Ctx, payload: dict[str, Any], *, want: str | None = None) -> None:
    ctx.need("write")
    exp_id = ctx.params.req("experiment_id")
    if exp_id == DEFAULT_EXPERIMENT_ID:
        raise invalid("the Default experiment (id 0) cannot be changed in Studbook")
    found = await need_experiment(ctx.pool, ctx.project, exp_id)
    if want is not None and found["lifecycle_stage"] != want:
        raise invalid(
            f"Cannot {'restore' if want == 'deleted' else 'change'} experiment {exp_id}: it is "
            f"{found['lifecycle_stage']}"
        )
    doc = event("experiment.updated", ctx.project, f"experiment:{exp_id}", payload,
                actor=ctx.actor)  # fmt: skip
    await ctx.submit([doc])


async def update(ctx: Ctx) -> dict[str, Any]:
    new_name = _name(ctx, "new_name")
    existing = await experiment_by_name(ctx.pool, ctx.project, new_name)
    if existing is not None and existing["experiment_id"] != ctx.params.text("experiment_id"):
        raise already_exists(f"Experiment '{new_name}' already exists.")
    await _update(ctx, {"name": new_name}, want="active")
    return {}


async def delete(ctx: Ctx) -> dict[str, Any]:
    await _update(ctx, {"lifecycle_stage": "deleted"}, want="active")
    return {}


async def restore(ctx: Ctx) -> dict[str, Any]:
    await _update(ctx, {"lifecycle_stage": "active"}, want="deleted")
    return {}


async def set_tag(ctx: Ctx) -> dict[str, Any]:
    tags = tag_pairs([{"key": ctx.params.req("key"), "value": ctx.params.text("value")}], "tag")
    await _update(ctx, {"tags": tags})
    return {}


async def delete_tag(ctx: Ctx) -> dict[str, Any]:
    await _update(ctx, {"tags": {ctx.params.req("key"): None}})
    return {}


ENDPOINTS = [
    Endpoint("GET", P + "get-by-name", get_by_name),
    Endpoint("GET", P + "get", get),
    Endpoint("POST", P + "create", create),
    Endpoint("POST", P + "update", update),
    Endpoint("POST", P + "delete", delete),
    Endpoint("POST", P + "restore", restore),
    Endpoint("POST", P + "set-experiment-tag", set_tag),
    Endpoint("POST", P + "delete-experiment-tag", delete_tag),
]

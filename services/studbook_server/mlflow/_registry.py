"""MLflow's model registry: `registered-models/*` and `model-versions/*`.

A registered model is a Studbook model (`model.created`); a model version is
`model.version.registered` (its `run` links it to the run in lineage, its `digest` is the digest
of its files' manifest, see `_artifacts.manifest_digest`); aliases are `model.alias.set` /
`model.alias.removed`. What Studbook's model events do not say is in `model.updated`
(description, tags, deletion) and `model.version.updated` (description, tags, MLflow's stage,
deletion). Reads come from `rm.models`, `rm.model_versions` and `rm.assignments`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

from studbook_server.mlflow._artifacts import manifest_digest
from studbook_server.mlflow._errors import already_exists, invalid, not_found, unavailable
from studbook_server.mlflow._http import Ctx, Endpoint
from studbook_server.mlflow._models import (
    apply_filter,
    fetch_logged_model,
    listed,
    ms,
    new_event,
    parse_filter,
)

RM = "/api/2.0/mlflow/registered-models"
MV = "/api/2.0/mlflow/model-versions"
STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
# How long model-versions/create waits for its version's number in the read model, should the
# write path not have given one.
NUMBER_WAIT_S = 30.0
MAX_RESULTS = 10_000
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/(?P<id>m-[A-Za-z0-9._-]+)/?$")
_RUN_SOURCE = re.compile(r"^runs:/(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,127})/(?P<path>.*)$")


# --------------------------------------------------------------------------------- reads

_MODEL = "SELECT * FROM rm.models WHERE project = $1 AND name = $2 AND deleted_at IS NULL"
_MODELS = "SELECT * FROM rm.models WHERE project = $1 AND deleted_at IS NULL ORDER BY name"
_VERSIONS = """
SELECT * FROM rm.model_versions
WHERE project = $1 AND model = ANY($2::text[]) AND deleted_at IS NULL ORDER BY model, number
"""
_ALIASES = """
SELECT model, name, version FROM rm.assignments
WHERE project = $1 AND kind = 'alias' AND model = ANY($2::text[]) AND recorded_to IS NULL
  AND valid_to IS NULL
ORDER BY model, name
"""


def _version_json(row: Mapping[str, Any], aliases: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": row["model"],
        "version": str(row["number"]),
        "creation_timestamp": ms(row["registered_at"]),
        "last_updated_timestamp": ms(row["updated_at"] or row["registered_at"]),
        "user_id": row["registered_by"],
        "current_stage": row["stage"],
        "description": row["description"] or "",
        "source": row["artifact_uri"],
        "status": "READY",
        "tags": listed(row["tags"]),
        "aliases": list(aliases),
    }
    if row["run_id"]:
        out["run_id"] = row["run_id"]
    m = _LOGGED_MODEL_SOURCE.match(row["artifact_uri"])
    if m:
        out["model_id"] = m["id"]
    return out


class _Loaded:
    """Models with their versions and current aliases, read in three queries."""

    def __init__(self, models: list[dict[str, Any]]) -> None:
        self.models = models
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.aliases: dict[tuple[str, int], list[str]] = {}
        self.alias_rows: dict[str, list[tuple[str, int]]] = {}

    @classmethod
    async def read(cls, ctx: Ctx, models: list[dict[str, Any]]) -> _Loaded:
        loaded = cls(models)
        names = [m["name"] for m in models]
        if names:
            for row in await ctx.pool.fetch(_VERSIONS, ctx.project, names):
                loaded.versions.setdefault(row["model"], []).append(dict(row))
            for row in await ctx.pool.fetch(_ALIASES, ctx.project, names):
                loaded.aliases.setdefault((row["model"], row["version"]), []).append(row["name"])
                loaded.alias_rows.setdefault(row["model"], []).append((row["name"], row["version"]))
        return loaded

    def version(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return _version_json(row, self.aliases.get((row["model"], row["number"]), []))

    def model(self, row: Mapping[str, Any]) -> dict[str, Any]:
        versions = self.versions.get(row["name"], [])
        latest: dict[str, dict[str, Any]] = {}
        for v in versions:  # in number order: the last of each stage wins
            latest[v["stage"]] = v
        updated = max([row["updated_at"] or row["created_at"]] + [
            v["updated_at"] or v["registered_at"] for v in versions
        ])  # fmt: skip
        return {
            "name": row["name"],
            "creation_timestamp": ms(row["created_at"]),
            "last_updated_timestamp": ms(updated),
            "description": row["description"] or "",
            "user_id": row["created_by"],
            "latest_versions": [self.version(v) for v in latest.values()],
            "tags": listed(row["tags"]),
            "aliases": [
                {"alias": a, "version": str(n)} for a, n in self.alias_rows.get(row["name"], [])
            ],
        }


async def _model(ctx: Ctx, name: str) -> dict[str, Any]:
    row = await ctx.pool.fetchrow(_MODEL, ctx.project, name)
    if row is None:
        raise not_found(f"Registered Model with name={name} not found")
    return dict(row)


async def _loaded(ctx: Ctx, name: str) -> _Loaded:
    return await _Loaded.read(ctx, [await _model(ctx, name)])


def _number(ctx: Ctx) -> int:
    raw = ctx.params.text("version", required=True)
    if raw is None or not raw.isdigit() or int(raw) < 1:
        raise invalid(f"'version' must be a positive integer (as a string); got `{raw}`")
    return int(raw)


async def _version(ctx: Ctx, name: str, number: int) -> tuple[_Loaded, dict[str, Any]]:
    loaded = await _loaded(ctx, name)
    for v in loaded.versions.get(name, []):
        if v["number"] == number:
            return loaded, v
    raise not_found(f"Model Version (name={name}, version={number}) not found")


def _stage(raw: str | None) -> str:
    stage = STAGES.get((raw or "").strip().lower())
    if stage is None:
        raise invalid(f"'stage' must be one of None, Staging, Production, Archived; got `{raw}`")
    return stage


def _subject(name: str) -> str:
    return f"model:{name}"


# ----------------------------------------------------------------------- registered models


async def create_model(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    name = p.req("name")
    if await ctx.pool.fetchrow(_MODEL, ctx.project, name) is not None:
        raise already_exists(f"Registered Model (name={name}) already exists.")
    payload: dict[str, Any] = {"name": name}
    description = p.text("description")
    if description:
        payload["description"] = description
    docs = [new_event(ctx, "model.created", _subject(name), payload)]
    tags = {t["key"]: str(t.get("value", "")) for t in p.items("tags") if isinstance(t, dict)}
    if tags:
        docs.append(new_event(ctx, "model.updated", _subject(name), {"tags": tags}))
    await ctx.submit(docs)
    loaded = await _loaded(ctx, name)
    return {"registered_model": loaded.model(loaded.models[0])}


async def get_model(ctx: Ctx) -> dict[str, Any]:
    loaded = await _loaded(ctx, ctx.params.req("name"))
    return {"registered_model": loaded.model(loaded.models[0])}


async def rename_model(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    await _model(ctx, name)
    raise invalid(
        f"renaming registered model `{name}` is not supported: a Studbook model's name is its "
        "identity in lineage and history; register the versions under a new name instead"
    )


async def update_model(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    await _model(ctx, name)
    payload = {"description": ctx.params.text("description") or ""}
    await ctx.submit([new_event(ctx, "model.updated", _subject(name), payload)])
    loaded = await _loaded(ctx, name)
    return {"registered_model": loaded.model(loaded.models[0])}


async def delete_model(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    await _model(ctx, name)
    await ctx.submit([new_event(ctx, "model.updated", _subject(name), {"deleted": True})])
    return {}


async def set_model_tag(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    await _model(ctx, name)
    tags = {ctx.params.req("key"): ctx.params.text("value") or ""}
    await ctx.submit([new_event(ctx, "model.updated", _subject(name), {"tags": tags})])
    return {}


async def delete_model_tag(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    key = ctx.params.req("key")
    model = await _model(ctx, name)
    if key not in model["tags"]:
        raise not_found(f"No tag with name: {key} in registered model {name}")
    await ctx.submit([new_event(ctx, "model.updated", _subject(name), {"tags": {key: None}})])
    return {}


def _page(ctx: Ctx, rows: list[Any], default: int) -> tuple[list[Any], str | None]:
    limit = ctx.params.integer("max_results", default=default) or default
    if limit > MAX_RESULTS:
        raise invalid(f"'max_results' is at most {MAX_RESULTS}; got {limit}")
    token = ctx.params.text("page_token") or "0"
    if not token.isdigit():
        raise invalid(f"'page_token' `{token}` is not one this server gave")
    start = int(token)
    nxt = str(start + limit) if start + limit < len(rows) else None
    return rows[start : start + limit], nxt


def _model_lookup(row: Mapping[str, Any], key: str) -> Any:
    prefix, dot, rest = key.partition(".")
    if dot and prefix in ("tags", "tag"):
        return row["tags"].get(rest)
    if key == "name":
        return row["name"]
    raise invalid(f"cannot search registered models by `{key}`: use name or tags.<key>")


def _order(rows: list[dict[str, Any]], order_by: Sequence[Any], keys: Mapping[str, str]) -> None:
    for clause in reversed([str(o) for o in order_by]):
        field, _, direction = clause.strip().partition(" ")
        column = keys.get(field.removeprefix("attributes.").removeprefix("attribute."))
        if column is None:
            raise invalid(f"cannot order by `{field}`: use one of {', '.join(sorted(keys))}")
        rows.sort(key=lambda r: r[column], reverse=direction.strip().upper() == "DESC")


async def search_models(ctx: Ctx) -> dict[str, Any]:
    clauses = parse_filter(ctx.params.text("filter"))
    rows = apply_filter([dict(r) for r in await ctx.pool.fetch(_MODELS, ctx.project)], clauses,
                        _model_lookup)  # fmt: skip
    _order(rows, ctx.params.items("order_by"), {
        "name": "name", "timestamp": "created_at", "creation_timestamp": "created_at",
        "last_updated_timestamp": "created_at",
    })  # fmt: skip
    page, nxt = _page(ctx, rows, 100)
    loaded = await _Loaded.read(ctx, page)
    out: dict[str, Any] = {"registered_models": [loaded.model(m) for m in page]}
    if nxt:
        out["next_page_token"] = nxt
    return out


async def latest_versions(ctx: Ctx) -> dict[str, Any]:
    name = ctx.params.req("name")
    loaded = await _loaded(ctx, name)
    wanted = [_stage(s) for s in ctx.params.items("stages")]
    latest: dict[str, dict[str, Any]] = {}
    for v in loaded.versions.get(name, []):
        latest[v["stage"]] = v
    stages = wanted or list(STAGES.values())
    return {"model_versions": [loaded.version(latest[s]) for s in stages if s in latest]}


async def set_alias(ctx: Ctx) -> dict[str, Any]:
    name, alias = ctx.params.req("name"), ctx.params.req("alias")
    await _version(ctx, name, _number(ctx))
    payload = {"alias": alias, "version": _number(ctx)}
    await ctx.submit([new_event(ctx, "model.alias.set", _subject(name), payload)])
    return {}


async def get_by_alias(ctx: Ctx) -> dict[str, Any]:
    name, alias = ctx.params.req("name"), ctx.params.req("alias")
    loaded = await _loaded(ctx, name)
    number = dict(loaded.alias_rows.get(name, [])).get(alias)
    if number is None:
        raise not_found(f"Registered model alias {alias} not found.")
    for v in loaded.versions.get(name, []):
        if v["number"] == number:
            return {"model_version": loaded.version(v)}
    raise not_found(f"Registered model alias {alias} names version {number}, which was deleted")


async def delete_alias(ctx: Ctx) -> dict[str, Any]:
    name, alias = ctx.params.req("name"), ctx.params.req("alias")
    loaded = await _loaded(ctx, name)
    if alias not in dict(loaded.alias_rows.get(name, [])):
        raise not_found(f"Registered model alias {alias} not found.")
    await ctx.submit([new_event(ctx, "model.alias.removed", _subject(name), {"alias": alias})])
    return {}


# --------------------------------------------------------------------------- model versions


_FILES = """
SELECT path, digest, size_bytes FROM rm.artifacts
WHERE project = $1 AND subject = $2 AND starts_with(path, $3)
"""
_RUN_FILES = """
SELECT path, digest, size_bytes FROM rm.artifacts
WHERE project = $1 AND subject = $2 AND strpos(path, $3) > 0
"""


async def _files(ctx: Ctx, source: str) -> tuple[str | None, str | None]:
    """(run that made it, digest of its files' manifest) for a version's source, where known."""
    m = _LOGGED_MODEL_SOURCE.match(source)
    if m:
        model = await fetch_logged_model(ctx, m["id"])
        folder = model["artifact_uri"].removeprefix("mlflow-artifacts:/").strip("/") + "/"
        rows = await ctx.pool.fetch(_FILES, ctx.project, f"logged_model:{m['id']}", folder)
        files = [(r["path"][len(folder) :], r["digest"], r["size_bytes"]) for r in rows]
        return model["run_id"], manifest_digest(files) if files else None
    m = _RUN_SOURCE.match(source)
    if m:
        marker = f"/{m['run']}/artifacts/" + (
            m["path"].strip("/") + "/" if m["path"].strip("/") else ""
        )
        rows = await ctx.pool.fetch(_RUN_FILES, ctx.project, f"run:{m['run']}", marker)
        files = [(r["path"].split(marker, 1)[1], r["digest"], r["size_bytes"]) for r in rows]
        return m["run"], manifest_digest(files) if files else None
    return None, None


async def _wait_for_number(ctx: Ctx, event_id: str) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NUMBER_WAIT_S
    while True:
        number = await ctx.pool.fetchval(
            "SELECT number FROM rm.model_versions WHERE project = $1 AND event_id = $2::uuid",
            ctx.project, event_id,
        )  # fmt: skip
        if number is not None:
            return int(number)
        if loop.time() >= deadline:
            raise unavailable(
                "the model version was recorded but not yet numbered (the projector is behind); "
                "look it up with model-versions/search"
            )
        await asyncio.sleep(0.05)


async def create_version(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    name, source = p.req("name"), p.req("source")
    await _model(ctx, name)
    model_id = p.text("model_id")
    if model_id and not _LOGGED_MODEL_SOURCE.match(source):
        # The client names the logged model it resolved `runs:/...` to: its files are the version's.
        await fetch_logged_model(ctx, model_id)
    made_by, digest = await _files(ctx, f"models:/{model_id}" if model_id else source)
    payload: dict[str, Any] = {"artifact_uri": source}
    run = p.text("run_id") or made_by
    if run:
        payload["run"] = run
    if digest:
        payload["digest"] = digest
    description = p.text("description")
    if description:
        payload["description"] = description
    registered = new_event(ctx, "model.version.registered", _subject(name), payload)
    accepted = await ctx.submit([registered])
    # The write path numbers a version when it accepts it (a retry of the event gets the same
    # number), so the answer carries `version` and READY at once; the read model is the fallback.
    number = accepted.numbers.get(registered["event_id"])
    if number is None:
        number = await _wait_for_number(ctx, registered["event_id"])
    tags = {t["key"]: str(t.get("value", "")) for t in p.items("tags") if isinstance(t, dict)}
    if tags:
        doc = new_event(
            ctx, "model.version.updated", _subject(name), {"version": number, "tags": tags}
        )
        await ctx.submit([doc])
    loaded, row = await _version(ctx, name, number)
    return {"model_version": loaded.version(row)}


async def get_version(ctx: Ctx) -> dict[str, Any]:
    loaded, row = await _version(ctx, ctx.params.req("name"), _number(ctx))
    return {"model_version": loaded.version(row)}


async def _update_version(ctx: Ctx, payload: dict[str, Any]) -> tuple[str, int]:
    name, number = ctx.params.req("name"), _number(ctx)
    await _version(ctx, name, number)
    doc = new_event(ctx, "model.version.updated", _subject(name), {"version": number, **payload})
    await ctx.submit([doc])
    return name, number


async def update_version(ctx: Ctx) -> dict[str, Any]:
    name, number = await _update_version(ctx, {"description": ctx.params.text("description") or ""})
    loaded, row = await _version(ctx, name, number)
    return {"model_version": loaded.version(row)}


async def delete_version(ctx: Ctx) -> dict[str, Any]:
    await _update_version(ctx, {"deleted": True})
    return {}


async def set_version_tag(ctx: Ctx) -> dict[str, Any]:
    tags = {ctx.params.req("key"): ctx.params.text("value") or ""}
    await _update_version(ctx, {"tags": tags})
    return {}


async def delete_version_tag(ctx: Ctx) -> dict[str, Any]:
    name, number, key = ctx.params.req("name"), _number(ctx), ctx.params.req("key")
    _, row = await _version(ctx, name, number)
    if key not in row["tags"]:
        raise not_found(f"No tag with name: {key} for model version {name} version {number}")
    await _update_version(ctx, {"tags": {key: None}})
    return {}


async def transition_stage(ctx: Ctx) -> dict[str, Any]:
    name, number = ctx.params.req("name"), _number(ctx)
    stage = _stage(ctx.params.text("stage"))
    archive = ctx.params.flag("archive_existing_versions")
    loaded, _row = await _version(ctx, name, number)
    docs = [
        new_event(ctx, "model.version.updated", _subject(name), {"version": number, "stage": stage})
    ]
    if archive and stage in ("Staging", "Production"):
        for v in loaded.versions.get(name, []):
            if v["number"] != number and v["stage"] == stage:
                docs.append(new_event(ctx, "model.version.updated", _subject(name), {
                    "version": v["number"], "stage": "Archived",
                }))  # fmt: skip
    await ctx.submit(docs)
    loaded, row = await _version(ctx, name, number)
    return {"model_version": loaded.version(row)}


async def download_uri(ctx: Ctx) -> dict[str, Any]:
    _, row = await _version(ctx, ctx.params.req("name"), _number(ctx))
    source: str = row["artifact_uri"]
    m = _LOGGED_MODEL_SOURCE.match(source)
    if m:
        source = (await fetch_logged_model(ctx, m["id"]))["artifact_uri"]
    return {"artifact_uri": source}


def _version_lookup(row: Mapping[str, Any], key: str) -> Any:
    prefix, dot, rest = key.partition(".")
    if dot and prefix in ("tags", "tag"):
        return row["tags"].get(rest)
    if dot and prefix in ("attributes", "attribute"):
        key = rest
    if key == "name":
        return row["model"]
    if key in ("version_number", "version"):
        return row["number"]
    if key == "run_id":
        return row["run_id"]
    if key in ("source_path", "source"):
        return row["artifact_uri"]
    if key == "current_stage":
        return row["stage"]
    raise invalid(
        f"cannot search model versions by `{key}`: use name, version_number, run_id, "
        "source_path or tags.<key>"
    )


async def search_versions(ctx: Ctx) -> dict[str, Any]:
    clauses = parse_filter(ctx.params.text("filter"))
    names = [
        c.value for c in clauses if c.key == "name" and c.op == "=" and isinstance(c.value, str)
    ]
    models = [dict(r) for r in await ctx.pool.fetch(_MODELS, ctx.project)]
    if names:
        models = [m for m in models if m["name"] in names]
    loaded = await _Loaded.read(ctx, models)
    rows = [v for m in models for v in loaded.versions.get(m["name"], [])]
    rows = apply_filter(rows, clauses, _version_lookup)
    rows.sort(key=lambda r: (r["model"], -r["number"]))
    _order(rows, ctx.params.items("order_by"), {
        "name": "model", "version_number": "number", "creation_timestamp": "registered_at",
        "last_updated_timestamp": "registered_at",
    })  # fmt: skip
    page, nxt = _page(ctx, rows, MAX_RESULTS)
    out: dict[str, Any] = {"model_versions": [loaded.version(v) for v in page]}
    if nxt:
        out["next_page_token"] = nxt
    return out


ENDPOINTS: list[Endpoint] = [
    Endpoint("POST", RM + "/create", create_model),
    Endpoint("GET", RM + "/get", get_model),
    Endpoint("POST", RM + "/rename", rename_model),
    Endpoint("PATCH", RM + "/update", update_model),
    Endpoint("DELETE", RM + "/delete", delete_model),
    Endpoint("GET", RM + "/search", search_models),
    Endpoint("POST", RM + "/set-tag", set_model_tag),
    Endpoint("DELETE", RM + "/delete-tag", delete_model_tag),
    Endpoint("POST", RM + "/get-latest-versions", latest_versions),
    Endpoint("GET", RM + "/get-latest-versions", latest_versions),
    Endpoint("POST", RM + "/alias", set_alias),
    Endpoint("GET", RM + "/alias", get_by_alias),
    Endpoint("DELETE", RM + "/alias", delete_alias),
    Endpoint("POST", MV + "/create", create_version),
    Endpoint("GET", MV + "/get", get_version),
    Endpoint("PATCH", MV + "/update", update_version),
    Endpoint("DELETE", MV + "/delete", delete_version),
    Endpoint("GET", MV + "/search", search_versions),
    Endpoint("POST", MV + "/set-tag", set_version_tag),
    Endpoint("DELETE", MV + "/delete-tag", delete_version_tag),
    Endpoint("POST", MV + "/transition-stage", transition_stage),
    Endpoint("GET", MV + "/get-download-uri", download_uri),
]

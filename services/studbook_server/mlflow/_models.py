"""MLflow 3 logged models: `logged-models` create, get, status, tags, search; `runs/outputs`.

`mlflow.<flavor>.log_model` creates a logged model (`m-<32 hex>`, LOGGED_MODEL_PENDING), uploads
its files below its `artifact_uri` (`mlflow-artifacts:/<experiment>/models/<id>/artifacts`) and
marks it LOGGED_MODEL_READY. Each becomes a `logged_model.*` event (subject
`logged_model:<id>`); reads come from `rm.logged_models`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from studbook_server.domain.contract import CURRENT_VERSIONS
from studbook_server.mlflow._errors import invalid, not_found
from studbook_server.mlflow._http import Ctx, Endpoint

BASE = "/api/2.0/mlflow/logged-models"
STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")
PRODUCER = "studbook-mlflow"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_RESULTS = 1000


def new_event(
    ctx: Ctx, event_type: str, subject: str, payload: dict[str, Any], *, event_id: str | None = None
) -> dict[str, Any]:
    """A Studbook event for one MLflow fact, sent by the caller (the principal is the store's
    fact; ``actor`` repeats its name as the claim)."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "schema_version": CURRENT_VERSIONS[event_type],
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "actor": ctx.actor,
        "project": ctx.project,
        "subject": subject,
        "payload": payload,
        "producer": {"name": PRODUCER},
    }


def ms(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


def key_values(items: Iterable[Mapping[str, Any]], what: str) -> dict[str, str]:
    """MLflow's `[{key, value}]` as a mapping; each key named, each value a string."""
    out: dict[str, str] = {}
    for n, item in enumerate(items):
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise invalid(f"'{what}[{n}].key' must be a non-empty string")
        value = item.get("value", "")
        out[key] = "" if value is None else str(value)
    return out


def listed(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in sorted(mapping.items())]


# --------------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class Clause:
    key: str  # `name`, `tags.<k>`, `params.<k>`, ...
    op: str  # =, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN
    value: Any  # a string, a number, or a list for IN


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<q>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
      | (?P<list>\((?:[^()'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")*\))
      | (?P<op>!=|<>|<=|>=|=|<|>|\bNOT\s+IN\b|\bIN\b|\bNOT\s+ILIKE\b|\bNOT\s+LIKE\b|\bILIKE\b|\bLIKE\b)
      | (?P<and>\bAND\b)
      | (?P<ident>(?:[A-Za-z_][A-Za-z0-9_]*\.)?(?:`[^`]+`|"[^"]+"|[A-Za-z_][A-Za-z0-9_.:-]*))
      | (?P<num>-?\d+(?:\.\d+)?)
    )""",
    re.VERBOSE | re.IGNORECASE,
)


def _unquote(text: str) -> str:
    if text[:1] in ("'", '"'):
        body = text[1:-1]
        return body.replace("''", "'").replace("\\'", "'").replace('\\"', '"')
    return text


def _ident(text: str) -> str:
    prefix, dot, rest = text.partition(".")
    if dot and (rest.startswith("`") or rest.startswith('"')):
        return f"{prefix}.{rest[1:-1]}"
    if text.startswith("`") or text.startswith('"'):
        return text[1:-1]
    return text


def parse_filter(text: str | None) -> list[Clause]:
    """MLflow's search filter: `<key> <op> <value>` clauses joined by AND. Keys may be
    backquoted (`tag.\\`mlflow.prompt.is_prompt\\``); values are quoted strings, numbers or
    `('a', 'b')` lists. A 400 names what could not be read."""
    clauses: list[Clause] = []
    text = (text or "").strip()
    pos = 0
    expect = "ident"
    key = op = ""
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise invalid(
                f"cannot parse the filter `{text}` at character {pos}: `{text[pos : pos + 20]}`"
            )
        pos = m.end()
        kind = m.lastgroup
        token = m.group(kind or 0)
        if expect == "ident" and kind == "ident":
            key, expect = _ident(token), "op"
        elif expect == "op" and kind == "op":
            op, expect = " ".join(token.upper().split()), "value"
        elif expect == "value" and kind in ("q", "num", "list", "ident"):
            value: Any
            if kind == "q":
                value = _unquote(token)
            elif kind == "num":
                value = float(token) if "." in token else int(token)
            elif kind == "list":
                value = [
                    _unquote(v.strip())
                    for v in re.findall(
                        r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,\s()]+", token[1:-1]
                    )
                ]
            else:
                if token.lower() == "null":
                    value = None
                else:
                    raise invalid(f"filter `{text}`: the value `{token}` must be quoted")
            clauses.append(Clause(key, op, value))
            expect = "and"
        elif expect == "and" and kind == "and":
            expect = "ident"
        else:
            raise invalid(
                f"cannot parse the filter `{text}`: unexpected `{token}` (expected {expect})"
            )
    if expect != "and" and (clauses or key):
        raise invalid(f"cannot parse the filter `{text}`: it ends early")
    return clauses


def _like(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if fold else re.DOTALL) is not None


def matches(clause: Clause, actual: Any) -> bool:
    """Whether ``actual`` (None: the key is absent) satisfies ``clause``."""
    op, want = clause.op, clause.value
    if actual is None:
        return (
            op in ("!=", "<>", "NOT LIKE", "NOT ILIKE", "NOT IN") if want is not None else op == "="
        )
    if isinstance(want, (int, float)) and not isinstance(actual, (int, float)):
        try:
            actual = float(actual)
        except (TypeError, ValueError):
            return False
    elif isinstance(want, str) and not isinstance(actual, str):
        actual = str(actual)
    if op == "=":
        return bool(actual == want)
    if op in ("!=", "<>"):
        return bool(actual != want)
    if op in ("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"):
        hit = _like(str(want), str(actual), "ILIKE" in op)
        return not hit if op.startswith("NOT") else hit
    if op in ("IN", "NOT IN"):
        inside = str(actual) in [str(v) for v in want]
        return inside if op == "IN" else not inside
    try:
        if op == "<":
            return bool(actual < want)
        if op == "<=":
            return bool(actual <= want)
        if op == ">":
            return bool(actual > want)
        if op == ">=":
            return bool(actual >= want)
    except TypeError:
        return False
    raise invalid(f"unsupported comparison `{op}` in filter")


def apply_filter(
    rows: Sequence[Any], clauses: Sequence[Clause], lookup: Callable[[Any, str], Any]
) -> list[Any]:
    return [r for r in rows if all(matches(c, lookup(r, c.key)) for c in clauses)]


# --------------------------------------------------------------------------------- reads


def logged_model_json(row: Mapping[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "model_id": row["model_id"],
        "experiment_id": row["experiment"],
        "name": row["name"],
        "artifact_uri": row["artifact_uri"],
        "creation_timestamp_ms": ms(row["created_at"]),
        "last_updated_timestamp_ms": ms(row["updated_at"]),
        "status": row["status"],
        "tags": listed(row["tags"]),
    }
    if row["run_id"]:
        info["source_run_id"] = row["run_id"]
    if row["model_type"]:
        info["model_type"] = row["model_type"]
    return {"info": info, "data": {"params": listed(row["params"]), "metrics": []}}


_GET = "SELECT * FROM rm.logged_models WHERE project = $1 AND model_id = $2"


async def fetch_logged_model(ctx: Ctx, model_id: str) -> Mapping[str, Any]:
    row = await ctx.pool.fetchrow(_GET, ctx.project, model_id)
    if row is None:
        raise not_found(f"Logged model with ID '{model_id}' not found in project `{ctx.project}`")
    return dict(row)


def _model_id(ctx: Ctx) -> str:
    model_id = ctx.path_params.get("model_id") or ctx.params.text("model_id") or ""
    if not _ID.match(model_id):
        raise invalid(f"'model_id' must be a logged model id such as m-<32 hex>; got `{model_id}`")
    return model_id


# --------------------------------------------------------------------------------- handlers


async def create(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    experiment = p.req("experiment_id")
    name = p.text("name") or "model"
    model_id = "m-" + uuid.uuid4().hex
    payload: dict[str, Any] = {
        "name": name,
        "experiment": experiment,
        "artifact_uri": f"mlflow-artifacts:/{experiment}/models/{model_id}/artifacts",
        "status": "LOGGED_MODEL_PENDING",
        "params": key_values(p.items("params"), "params"),
        "tags": key_values(p.items("tags"), "tags"),
    }
    run = p.text("source_run_id")
    if run:
        payload["run"] = run
    model_type = p.text("model_type")
    if model_type:
        payload["model_type"] = model_type
    await ctx.submit([new_event(ctx, "logged_model.created", f"logged_model:{model_id}", payload)])
    return {"model": logged_model_json(await fetch_logged_model(ctx, model_id))}


async def get(ctx: Ctx) -> dict[str, Any]:
    return {"model": logged_model_json(await fetch_logged_model(ctx, _model_id(ctx)))}


async def finalize(ctx: Ctx) -> dict[str, Any]:
    model_id = _model_id(ctx)
    status = ctx.params.req("status")
    if status not in STATUSES:
        raise invalid(f"'status' must be one of {', '.join(STATUSES)}; got `{status}`")
    await fetch_logged_model(ctx, model_id)
    doc = new_event(ctx, "logged_model.updated", f"logged_model:{model_id}", {"status": status})
    await ctx.submit([doc])
    return {"model": logged_model_json(await fetch_logged_model(ctx, model_id))}


async def set_tags(ctx: Ctx) -> dict[str, Any]:
    model_id = _model_id(ctx)
    await fetch_logged_model(ctx, model_id)
    tags: dict[str, str | None] = dict(key_values(ctx.params.items("tags"), "tags"))
    if tags:
        doc = new_event(ctx, "logged_model.updated", f"logged_model:{model_id}", {"tags": tags})
        await ctx.submit([doc])
    return {"model": logged_model_json(await fetch_logged_model(ctx, model_id))}


async def delete_tag(ctx: Ctx) -> dict[str, Any]:
    model_id = _model_id(ctx)
    key = ctx.path_params.get("key") or ctx.params.req("tag_key")
    row = await fetch_logged_model(ctx, model_id)
    if key not in row["tags"]:
        raise not_found(f"No tag with key '{key}' on logged model '{model_id}'")
    doc = new_event(ctx, "logged_model.updated", f"logged_model:{model_id}", {"tags": {key: None}})
    await ctx.submit([doc])
    return {}


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    prefix, dot, rest = key.partition(".")
    if dot and prefix in ("tags", "tag"):
        return row["tags"].get(rest)
    if dot and prefix in ("params", "param"):
        return row["params"].get(rest)
    if dot and prefix in ("attributes", "attribute"):
        key = rest
    if key in ("name", "model_id", "status", "model_type"):
        return row[key]
    if key == "source_run_id":
        return row["run_id"]
    if key == "experiment_id":
        return row["experiment"]
    if key in ("creation_timestamp", "creation_time", "creation_timestamp_ms"):
        return ms(row["created_at"])
    if key in ("last_updated_timestamp", "last_updated_timestamp_ms"):
        return ms(row["updated_at"])
    if dot and prefix in ("metrics", "metric"):
        return None
    raise invalid(
        f"cannot filter logged models by `{key}`: use name, model_id, status, source_run_id, "
        "model_type, creation_timestamp, tags.<key> or params.<key>"
    )


async def search(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    clauses = parse_filter(p.text("filter"))
    experiments = [str(e) for e in p.items("experiment_ids")]
    rows = [
        dict(r)
        for r in await ctx.pool.fetch(
            "SELECT * FROM rm.logged_models WHERE project = $1 "
            "AND (cardinality($2::text[]) = 0 OR experiment = ANY($2::text[])) "
            "ORDER BY created_at DESC, model_id",
            ctx.project,
            experiments,
        )
    ]
    rows = apply_filter(rows, clauses, _lookup)
    limit = min(p.integer("max_results", default=100) or 100, MAX_RESULTS)
    start = int(p.text("page_token") or 0) if (p.text("page_token") or "0").isdigit() else 0
    page = rows[start : start + limit]
    out: dict[str, Any] = {"models": [logged_model_json(r) for r in page]}
    if start + limit < len(rows):
        out["next_page_token"] = str(start + limit)
    return out


async def run_outputs(ctx: Ctx) -> dict[str, Any]:
    """`runs/outputs {run_id, models: [{model_id, step}]}`: the logged model already names its
    run (`logged_model.created`'s `run`); each model named must exist."""
    ctx.need("write")
    ctx.params.run_id()
    for n, item in enumerate(ctx.params.items("models")):
        model_id = item.get("model_id") if isinstance(item, dict) else None
        if not isinstance(model_id, str):
            raise invalid(f"'models[{n}].model_id' must be a string")
        await fetch_logged_model(ctx, model_id)
    return {}


ENDPOINTS: list[Endpoint] = [
    Endpoint("POST", BASE, create),
    Endpoint("POST", BASE + "/search", search),
    Endpoint("GET", BASE + "/{model_id}", get),
    Endpoint("PATCH", BASE + "/{model_id}", finalize),
    Endpoint("PATCH", BASE + "/{model_id}/tags", set_tags),
    Endpoint("DELETE", BASE + "/{model_id}/tags/{key}", delete_tag),
    Endpoint("POST", "/api/2.0/mlflow/runs/outputs", run_outputs),
]

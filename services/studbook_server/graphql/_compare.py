"""compareRuns and compareModelVersions: column-aligned tables, a fixed number of statements.

Every list is aligned with `runs` (or `modelVersions`): entry i belongs to column i, null where
that column has no value. Aligned lists of scalars keep the response cheap to build: a comparison
of 100 runs x 50 metrics is 50 objects with lists of numbers, not 5000 objects.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import strawberry
from strawberry.scalars import JSON

from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput, NotFound
from studbook_server.graphql._ids import Ref, gid
from studbook_server.graphql._lineage import MAX_DEPTH, MAX_EDGES, MAX_NODES
from studbook_server.graphql._types import ModelVersion, Run

MAX_RUNS = 200
MAX_MODEL_VERSIONS = 20


@strawberry.type
class ParamComparison:
    key: str
    values: list[JSON | None]
    differs: bool


@strawberry.type(description="Per column: the latest value, its step, and the min and max.")
class MetricComparison:
    key: str
    last: list[float | None]
    step: list[int | None]
    min: list[float | None]
    max: list[float | None]
    differs: bool = strawberry.field(description="Whether the latest values are not all equal.")


@strawberry.type(
    description="One thing (a dataset version, a code version) and which columns have it."
)
class PresenceComparison:
    id: strawberry.ID | None = strawberry.field(
        description="The dataset version's id; null for code."
    )
    label: str
    columns: list[int] = strawberry.field(
        description="The columns (0-based) that have it: the compact form for wide comparisons."
    )
    present: list[bool] = strawberry.field(description="Per column: whether it has it.")
    roles: list[str | None] = strawberry.field(
        description="For dataset versions a run used directly: the role per column."
    )
    differs: bool


@strawberry.type(
    description="Per column: the code that ran (git repo, commit, dirty flag, entrypoint)."
)
class CodeComparison:
    git_repo: list[str | None]
    git_commit: list[str | None]
    git_dirty: list[bool | None]
    entrypoint: list[str | None]
    differs: bool


@strawberry.type
class RunComparison:
    runs: list[Run] = strawberry.field(description="The columns, in the order asked.")
    params: list[ParamComparison]
    metrics: list[MetricComparison]
    datasets: list[PresenceComparison] = strawberry.field(
        description="Dataset versions used as inputs."
    )
    code: CodeComparison
    environments: list[JSON | None]
    environment_differs: bool


@strawberry.type
class ModelVersionComparison:
    model_versions: list[ModelVersion] = strawberry.field(
        description="The columns, in the order asked."
    )
    runs: list[Run | None] = strawberry.field(description="The run that trained each version.")
    params: list[ParamComparison] = strawberry.field(description="The training runs' params.")
    metrics: list[MetricComparison] = strawberry.field(description="The training runs' metrics.")
    upstream_data: list[PresenceComparison] = strawberry.field(
        description=f"Dataset versions anywhere upstream (up to depth {MAX_DEPTH})."
    )
    upstream_code: list[PresenceComparison] = strawberry.field(
        description="Code versions (repo@commit) of every run upstream, training run included."
    )
    code: CodeComparison = strawberry.field(description="The training runs' code.")
    environments: list[JSON | None]
    environment_differs: bool
    truncated: bool = strawberry.field(description="Whether an upstream walk hit a server cap.")


def _differ(values: list[Any]) -> bool:
    # Compare JSON encodings: 1 and 1.0 are one value, a missing one differs from any.
    seen = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values}
    return len(seen) > 1


_RUNS = """
SELECT k.i, r.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.runs r ON r.project = k.project AND r.run_id = k.run_id
"""
_PARAMS = """
SELECT k.i, p.key, p.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_params p ON p.project = k.project AND p.run_id = k.run_id
"""
_METRICS = """
SELECT k.i, m.key, m.value, m.step, m.min_value, m.max_value
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_metrics m ON m.project = k.project AND m.run_id = k.run_id
"""
_INPUTS = """
SELECT k.i, e.src, e.role FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.lineage_edges e ON e.project = k.project AND e.dst = k.node AND e.edge_type = 'input'
"""


def _params(rows: list[Any], n: int, only_differing: bool) -> list[ParamComparison]:
    table: dict[str, list[Any]] = defaultdict(lambda: [None] * n)
    for r in rows:
        table[r["key"]][r["col"]] = r["value"]
    out = [ParamComparison(key=k, values=v, differs=_differ(v)) for k, v in sorted(table.items())]
    return [p for p in out if p.differs] if only_differing else out


def _metrics(rows: list[Any], n: int, only_differing: bool) -> list[MetricComparison]:
    table: dict[str, tuple[list[Any], list[Any], list[Any], list[Any]]] = {}
    for r in rows:
        cols = table.get(r["key"])
        if cols is None:
            cols = table[r["key"]] = ([None] * n, [None] * n, [None] * n, [None] * n)
        c = r["col"]
        cols[0][c], cols[1][c], cols[2][c], cols[3][c] = (
            r["value"], r["step"], r["min_value"], r["max_value"]
        )  # fmt: skip
    out = [
        MetricComparison(key=k, last=c[0], step=c[1], min=c[2], max=c[3], differs=_differ(c[0]))
        for k, c in sorted(table.items())
    ]
    return [m for m in out if m.differs] if only_differing else out


def _presence(
    project_of: list[str], hits: list[tuple[int, str, str | None]], n: int, only_differing: bool
) -> list[PresenceComparison]:
    """``hits``: (column, node or label, role) triples."""
    present: dict[str, list[bool]] = defaultdict(lambda: [False] * n)
    roles: dict[str, list[str | None]] = defaultdict(lambda: [None] * n)
    for col, label, role in hits:
        present[label][col] = True
        if role is not None:
            roles[label][col] = role
    out = []
    for label in sorted(present):
        cols = [c for c, p in enumerate(present[label]) if p]
        project = project_of[cols[0]]
        out.append(
            PresenceComparison(
                id=strawberry.ID(gid(project, label)) if label.startswith("dataset_") else None,
                label=label.partition(":")[2] if ":" in label else label,
                columns=cols,
                present=present[label],
                roles=roles[label],
                differs=not all(present[label]),
            )
        )
    return [p for p in out if p.differs] if only_differing else out


def _code(runs: list[Any]) -> CodeComparison:
    codes = [(r["code"] or {}) if r is not None else {} for r in runs]
    repo = [c.get("git_repo") for c in codes]
    commit = [c.get("git_commit") for c in codes]
    dirty = [c.get("git_dirty") for c in codes]
    entry = [c.get("entry_point") for c in codes]
    return CodeComparison(
        git_repo=repo,
        git_commit=commit,
        git_dirty=dirty,
        entrypoint=entry,
        differs=_differ(repo) or _differ(commit) or _differ(dirty) or _differ(entry),
    )


async def _run_columns(info: Info, keys: list[tuple[str, str]]) -> tuple[Any, ...]:
    """Runs, params, metrics and inputs of (project, run_id) columns: four statements."""
    projects = [p for p, _ in keys]
    ids = [r for _, r in keys]
    pool = info.context.pool
    runs = await pool.fetch(_RUNS, projects, ids)
    params = await pool.fetch(_PARAMS, projects, ids)
    metrics = await pool.fetch(_METRICS, projects, ids)
    inputs = await pool.fetch(_INPUTS, projects, [f"run:{r}" for r in ids])
    return runs, params, metrics, inputs


def _with_col(rows: list[Any], col_of: dict[int, list[int]]) -> list[dict[str, Any]]:
    """Rows keyed by the statement's ordinal, copied to every column that asked for it."""
    out = []
    for r in rows:
        for c in col_of.get(r["i"], []):
            d = dict(r)
            d["col"] = c
            out.append(d)
    return out


async def compare_runs(info: Info, refs: list[Ref], only_differing: bool) -> RunComparison:
    if not 1 <= len(refs) <= MAX_RUNS:
        raise BadInput(f"compare 1 to {MAX_RUNS} runs (got {len(refs)})")
    keys = list(dict.fromkeys((r.project, r.key) for r in refs))
    col_of: dict[int, list[int]] = defaultdict(list)
    for c, ref in enumerate(refs):
        col_of[keys.index((ref.project, ref.key)) + 1].append(c)
    runs, params, metrics, inputs = await _run_columns(info, keys)
    n = len(refs)
    by_col: list[Any] = [None] * n
    for r in runs:
        for c in col_of[r["i"]]:
            by_col[c] = r
    missing = [refs[c].id for c in range(n) if by_col[c] is None]
    if missing:
        raise NotFound(f"no run {', '.join(f'`{m}`' for m in missing)}")
    envs = [r["environment"] for r in by_col]
    return RunComparison(
        runs=[Run.from_row(r) for r in by_col],
        params=_params(_with_col(params, col_of), n, only_differing),
        metrics=_metrics(_with_col(metrics, col_of), n, only_differing),
        datasets=_presence(
            [r.project for r in refs],
            [(d["col"], d["src"], d["role"]) for d in _with_col(inputs, col_of)],
            n,
            only_differing,
        ),
        code=_code(by_col),
        environments=envs,
        environment_differs=_differ(envs),
    )


_MODEL_VERSIONS = """
SELECT k.i, mv.* FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(project, model, number, i)
JOIN rm.model_versions mv ON mv.project = k.project AND mv.model = k.model AND mv.number = k.number
"""

# Upstream walks of every version in one statement; then the code of every upstream run.
_UPSTREAM = """
SELECT k.i, w.truncated, u.node
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
CROSS JOIN LATERAL public.studbook_lineage_walk(k.project, k.node, true, false, $3, $4, $5, NULL, NULL) w
CROSS JOIN LATERAL unnest(w.nodes) AS u(node)
WHERE starts_with(u.node, 'dataset_version:') OR starts_with(u.node, 'run:')
"""
_UPSTREAM_CODE = """
SELECT k.i, r.code FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.runs r ON r.project = k.project AND r.run_id = k.run_id
"""


async def compare_model_versions(
    info: Info, refs: list[Ref], only_differing: bool
) -> ModelVersionComparison:
    if not 1 <= len(refs) <= MAX_MODEL_VERSIONS:
        raise BadInput(f"compare 1 to {MAX_MODEL_VERSIONS} model versions (got {len(refs)})")
    pool = info.context.pool
    n = len(refs)
    mvs = await pool.fetch(
        _MODEL_VERSIONS,
        [r.project for r in refs],
        [r.split("@")[0] for r in refs],
        [r.number for r in refs],
    )
    by_col: list[Any] = [None] * n
    for r in mvs:
        by_col[r["i"] - 1] = r
    missing = [refs[c].id for c in range(n) if by_col[c] is None]
    if missing:
        raise NotFound(f"no model version {', '.join(f'`{m}`' for m in missing)}")
    # The training runs, as columns (a version without a run has an empty column).
    run_keys = list(
        dict.fromkeys((mv["project"], mv["run_id"]) for mv in by_col if mv["run_id"] is not None)
    )
    col_of: dict[int, list[int]] = defaultdict(list)
    for c, mv in enumerate(by_col):
        if mv["run_id"] is not None:
            col_of[run_keys.index((mv["project"], mv["run_id"])) + 1].append(c)
    runs, params, metrics, _ = await _run_columns(info, run_keys)
    run_col: list[Any] = [None] * n
    for r in runs:
        for c in col_of[r["i"]]:
            run_col[c] = r
    upstream = await pool.fetch(
        _UPSTREAM,
        [r.project for r in refs],
        [r.node for r in refs],
        MAX_DEPTH,
        MAX_NODES,
        MAX_EDGES,
    )
    truncated = any(u["truncated"] for u in upstream)
    data_hits: list[tuple[int, str, str | None]] = [
        (u["i"] - 1, u["node"], None) for u in upstream if u["node"].startswith("dataset_version:")
    ]
    upstream_runs = [(u["i"] - 1, u["node"][4:]) for u in upstream if u["node"].startswith("run:")]
    code_rows = await pool.fetch(
        _UPSTREAM_CODE, [refs[c].project for c, _ in upstream_runs], [r for _, r in upstream_runs]
    )
    code_hits: list[tuple[int, str, str | None]] = []
    for row in code_rows:
        code = row["code"] or {}
        if code.get("git_commit"):
            label = f"code:{code.get('git_repo') or '?'}@{code['git_commit']}"
            code_hits.append((upstream_runs[row["i"] - 1][0], label, None))
    envs = [r["environment"] if r is not None else None for r in run_col]
    projects = [r.project for r in refs]
    return ModelVersionComparison(
        model_versions=[ModelVersion.from_row(mv) for mv in by_col],
        runs=[Run.from_row(r) if r is not None else None for r in run_col],
        params=_params(_with_col(params, col_of), n, only_differing),
        metrics=_metrics(_with_col(metrics, col_of), n, only_differing),
        upstream_data=_presence(projects, data_hits, n, only_differing),
        upstream_code=_presence(projects, sorted(set(code_hits)), n, only_differing),
        code=_code(run_col),
        environments=envs,
        environment_differs=_differ(envs),
        truncated=truncated,
    )

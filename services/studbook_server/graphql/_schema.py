"""The root types and the schema with its protections."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as max_aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as max_depth_rule

from graphql import ASTValidationRule
from studbook_server.graphql import _audit, _compare, _lineage, _search
from studbook_server.graphql import _typed as typed
from studbook_server.graphql._audit import AuditFilter, Event, UnapprovedPromotion
from studbook_server.graphql._compare import ModelVersionComparison, RunComparison
from studbook_server.graphql._context import Context, Info
from studbook_server.graphql._cost import QueryCostLimiter
from studbook_server.graphql._errors import should_mask
from studbook_server.graphql._ids import cursor, parse, uncursor
from studbook_server.graphql._lineage import Impact, Lineage, LineageDirection, NodeType
from studbook_server.graphql._loaders import Record
from studbook_server.graphql._mutations import Mutation
from studbook_server.graphql._search import RunFilter, RunOrder, RunTable
from studbook_server.graphql._subscriptions import Subscription
from studbook_server.graphql._types import (
    Connection,
    Dataset,
    DatasetVersion,
    Deployment,
    Model,
    ModelVersion,
    Node,
    Project,
    Run,
    check_time,
    connection,
    entity_from,
    page_size,
)

# Protections. Depth: the deepest useful query (lineage -> nodes -> entity -> run -> inputs ->
# datasetVersion -> producedBy -> ...) stays well under it; introspection is not counted.
MAX_DEPTH = 12
MAX_TOKENS = 5000
MAX_ALIASES = 30

_PROJECTS = """
SELECT * FROM rm.projects WHERE ($1::text[] IS NULL OR project = ANY($1::text[]))
  AND ($2::text IS NULL OR project > $2) ORDER BY project LIMIT $3
"""

# One statement for the hot path: the alias's row valid at asOf, joined to its version.
# Without knownAt it reads the current belief (partial index `assignments_current`).
_BY_ALIAS_NOW = """
SELECT mv.* FROM rm.assignments a
JOIN rm.model_versions mv ON mv.project = a.project AND mv.model = a.model AND mv.number = a.version
WHERE a.project = $1 AND a.kind = 'alias' AND a.model = $2 AND a.name = $3 AND a.recorded_to IS NULL
  AND a.valid_from <= coalesce($4, now()) AND (a.valid_to IS NULL OR coalesce($4, now()) < a.valid_to)
"""
_BY_ALIAS_KNOWN = """
SELECT mv.* FROM rm.assignments a
JOIN rm.model_versions mv ON mv.project = a.project AND mv.model = a.model AND mv.number = a.version
WHERE a.project = $1 AND a.kind = 'alias' AND a.model = $2 AND a.name = $3
  AND a.recorded_from <= $5 AND (a.recorded_to IS NULL OR $5 < a.recorded_to)
  AND a.valid_from <= coalesce($4, now()) AND (a.valid_to IS NULL OR coalesce($4, now()) < a.valid_to)
"""


async def _load(info: Info, kind: str, ref_project: str, key: str) -> Any:
    loaders = info.context.loaders
    row: Record | None
    if kind == "project":
        row = await loaders.project.load((key,))
    elif kind == "run":
        row = await loaders.run.load((ref_project, key))
    elif kind == "dataset":
        row = await loaders.dataset.load((ref_project, key))
    elif kind == "dataset_version":
        dataset, _, version = key.rpartition("@")
        row = await loaders.dataset_version.load((ref_project, dataset, version))
    elif kind == "model":
        row = await loaders.model.load((ref_project, key))
    elif kind == "model_version":
        model, _, number = key.rpartition("@")
        row = await loaders.model_version.load((ref_project, model, int(number)))
    else:
        model, _, environment = key.rpartition("/")
        row = await loaders.assignment_by_name.load(
            (ref_project, "deployment", model, environment, None, None)
        )
    return None if row is None else entity_from(kind, row)


@strawberry.type
class Query:
    @typed.field(description="Any object by its global id `<project>/<kind>:<key>`.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        ref = parse(id)
        await info.context.reader(ref.project)
        if ref.kind == "project" and ref.key != ref.project:
            return None
        result: Node | None = await _load(info, ref.kind, ref.project, ref.key)
        return result

    @typed.field(description="The projects this token may read, by name.")
    async def projects(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Project]:
        principal = await info.context.reader()
        limit = page_size(first)
        key = uncursor(after, str)
        rows = await info.context.pool.fetch(
            _PROJECTS, info.context.visible(principal), key[0] if key else None, limit + 1
        )
        return connection([(cursor(r["project"]), Project.from_row(r)) for r in rows], limit, after)

    @typed.field()
    async def project(self, info: Info, name: str) -> Project | None:
        await info.context.reader(name)
        row = await info.context.loaders.project.load((name,))
        return None if row is None else Project.from_row(row)

    @typed.field(description="A run by id, e.g. `churn/run:run-1`.")
    async def run(self, info: Info, id: strawberry.ID) -> Run | None:
        ref = parse(id, "run")
        await info.context.reader(ref.project)
        row = await info.context.loaders.run.load((ref.project, ref.key))
        return None if row is None else Run.from_row(row)

    @typed.field(description="A dataset by id, e.g. `churn/dataset:events`.")
    async def dataset(self, info: Info, id: strawberry.ID) -> Dataset | None:
        ref = parse(id, "dataset")
        await info.context.reader(ref.project)
        result: Dataset | None = await _load(info, "dataset", ref.project, ref.key)
        return result

    @typed.field(description="A dataset version by id, e.g. `churn/dataset_version:events@v1`.")
    async def dataset_version(self, info: Info, id: strawberry.ID) -> DatasetVersion | None:
        ref = parse(id, "dataset_version")
        await info.context.reader(ref.project)
        result: DatasetVersion | None = await _load(info, "dataset_version", ref.project, ref.key)
        return result

    @typed.field(description="A model by id, e.g. `churn/model:churn-clf`.")
    async def model(self, info: Info, id: strawberry.ID) -> Model | None:
        ref = parse(id, "model")
        await info.context.reader(ref.project)
        result: Model | None = await _load(info, "model", ref.project, ref.key)
        return result

    @typed.field(description="A model version by id, e.g. `churn/model_version:churn-clf@2`.")
    async def model_version(self, info: Info, id: strawberry.ID) -> ModelVersion | None:
        ref = parse(id, "model_version")
        await info.context.reader(ref.project)
        result: ModelVersion | None = await _load(info, "model_version", ref.project, ref.key)
        return result

    @typed.field(
        description="The version `alias` pointed at, at `asOf` (default now), as known at `knownAt` (default now)."
    )
    async def model_version_by_alias(
        self,
        info: Info,
        project: str,
        model: str,
        alias: str,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
    ) -> ModelVersion | None:
        await info.context.reader(project)
        check_time(as_of, "asOf")
        check_time(known_at, "knownAt")
        if known_at is None:
            row = await info.context.pool.fetchrow(_BY_ALIAS_NOW, project, model, alias, as_of)
        else:
            row = await info.context.pool.fetchrow(
                _BY_ALIAS_KNOWN, project, model, alias, as_of, known_at
            )
        return None if row is None else ModelVersion.from_row(row)

    @typed.field(
        description="A deployment (e.g. `churn/deployment:churn-clf/prod`) at `asOf`, as known at `knownAt`."
    )
    async def deployment(
        self,
        info: Info,
        id: strawberry.ID,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
    ) -> Deployment | None:
        ref = parse(id, "deployment")
        await info.context.reader(ref.project)
        model, environment = ref.split("/")
        row = await info.context.loaders.assignment_by_name.load(
            (ref.project, "deployment", model, environment,
             check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )  # fmt: skip
        return None if row is None else Deployment.from_row(row)

    @typed.field(description="Runs of a project matching `filter`, in `orderBy` order.")
    async def search_runs(
        self,
        info: Info,
        project: str,
        filter: RunFilter | None = None,
        order_by: RunOrder | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[Run]:
        await info.context.reader(project)
        return await _search.search_runs(info, project, filter, order_by, first, after)

    @typed.field(
        description="The search of `searchRuns` (same filter, order and cursors), the page as "
        "rows of one JSON value that PostgreSQL builds: for a table of many runs with their "
        "params, metrics (those in `metricKeys`, when given) and tags, without an object per "
        "value. See `RunTable.rows` for a row's fields."
    )
    async def search_run_table(
        self,
        info: Info,
        project: str,
        filter: RunFilter | None = None,
        order_by: RunOrder | None = None,
        first: int | None = None,
        after: str | None = None,
        metric_keys: list[str] | None = None,
    ) -> RunTable:
        await info.context.reader(project)
        return await _search.search_run_table(
            info, project, filter, order_by, first, after, metric_keys
        )

    @typed.field(
        description=f"Walk lineage from a dataset version, run, model version or deployment. "
        f"Each node is visited once; caps: depth {_lineage.MAX_DEPTH}, {_lineage.MAX_NODES} "
        f"nodes, {_lineage.MAX_EDGES} edges (`truncated` says when one was hit). `types` "
        "keeps only those node types in the result (the walk still passes through the others). "
        "`asOf` keeps edges that existed then (deployments: held then; default now); `knownAt` "
        "those recorded by then."
    )
    async def lineage(
        self,
        info: Info,
        from_: Annotated[strawberry.ID, strawberry.argument(name="from")],
        direction: LineageDirection = LineageDirection.UPSTREAM,
        depth: int | None = None,
        types: list[NodeType] | None = None,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Lineage:
        ref = parse(from_, what="from")
        await info.context.reader(ref.project)
        return await _lineage.walk(
            info, ref, direction, depth, types, as_of, known_at, first, after
        )

    @typed.field(
        description="Model versions downstream of a dataset version (at any depth up to the cap), "
        "with their aliases and deployments at `asOf`; with `alias`, only versions holding it."
    )
    async def impact(
        self,
        info: Info,
        dataset_version: strawberry.ID,
        alias: str | None = None,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
    ) -> Impact:
        ref = parse(dataset_version, "dataset_version", what="datasetVersion")
        await info.context.reader(ref.project)
        return await _lineage.impact(info, ref, alias, as_of, known_at)

    @typed.field(
        description=f"Compare up to {_compare.MAX_RUNS} runs: params, metrics, input data, code, environment."
    )
    async def compare_runs(
        self, info: Info, ids: list[strawberry.ID], only_differing: bool = False
    ) -> RunComparison:
        refs = [parse(i, "run", what="ids") for i in ids]
        for project in sorted({r.project for r in refs}):
            await info.context.reader(project)
        return await _compare.compare_runs(info, refs, only_differing)

    @typed.field(
        description=f"Compare up to {_compare.MAX_MODEL_VERSIONS} model versions: their training runs and everything upstream."
    )
    async def compare_model_versions(
        self, info: Info, ids: list[strawberry.ID], only_differing: bool = False
    ) -> ModelVersionComparison:
        refs = [parse(i, "model_version", what="ids") for i in ids]
        for project in sorted({r.project for r in refs}):
            await info.context.reader(project)
        return await _compare.compare_model_versions(info, refs, only_differing)

    @typed.field(
        description="The events of one subject (`<project>/project|dataset|run|model:<key>`), in order."
    )
    async def history(
        self, info: Info, subject: strawberry.ID, first: int | None = None, after: str | None = None
    ) -> Connection[Event]:
        ref = parse(subject, what="subject")
        await info.context.reader(ref.project)
        return await _audit.history(info, ref, first, after)

    @typed.field(description="Events by project, actor, type, subject and time, in store order.")
    async def audit_trail(
        self,
        info: Info,
        filter: AuditFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[Event]:
        f = filter or AuditFilter()
        principal = await info.context.reader(f.project)
        if f.subject is not None:
            await info.context.reader(parse(f.subject, what="subject").project)
        return await _audit.audit_trail(info, f, info.context.visible(principal), first, after)

    @typed.field(
        description="Governance: alias settings (promotions) of model versions whose latest "
        "decision before that moment was not an approval, as known at `knownAt` (default now)."
    )
    async def unapproved_promotions(
        self,
        info: Info,
        project: str,
        alias: str | None = None,
        known_at: datetime | None = None,
    ) -> list[UnapprovedPromotion]:
        await info.context.reader(project)
        return await _audit.unapproved_promotions(info, project, alias, known_at)


class _RequestExtensions(SchemaExtension):
    """Hands the request's `extensions` object (e.g. `consistencyToken`) to the context."""

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context.context
        if isinstance(ctx, Context):
            ctx.operation_extensions = self.execution_context.operation_extensions
        yield


# The rules `QueryDepthLimiter` and `MaxAliasesLimiter` add, made once: those extensions build a
# new rule class per request, which makes every validation a miss for `ValidationCache` (it is
# keyed by the rule classes) and costs ~2 ms per request.
_LIMITS: list[type[ASTValidationRule]] = [
    max_depth_rule(MAX_DEPTH, None, None),
    max_aliases_rule(MAX_ALIASES),
]


class _ValidationCacheAfterCost(ValidationCache):
    """Validation (cached) only for documents the cost check let through: strawberry's cache
    would validate, and overwrite the refusal, anyway."""

    def on_validate(self) -> Iterator[None]:
        if self.execution_context.pre_execution_errors:
            yield
            return
        yield from super().on_validate()


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[Project, Run, Dataset, DatasetVersion, Model, ModelVersion, Deployment],
        extensions=[
            lambda: AddValidationRules(_LIMITS),
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
            lambda: MaskErrors(should_mask_error=should_mask),
            lambda: ParserCache(maxsize=256),
            # Before validation (and its cache): a fan-out of fragments would explode it.
            QueryCostLimiter,
            lambda: _ValidationCacheAfterCost(maxsize=256),
            _RequestExtensions,
        ],
    )

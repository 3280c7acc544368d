"""The entities: projects, runs, datasets, models, their versions, aliases and deployments.

Resolvers here are thin: each nested field asks a DataLoader (one batched statement per kind of
field per request), so a list of N runs asking for their params costs one query, not N.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import strawberry
from strawberry.scalars import JSON

from studbook_server.graphql import _typed as typed
from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput
from studbook_server.graphql._ids import cursor, gid, uncursor
from studbook_server.graphql._loaders import Record

PAGE_CAP = 500
HISTORY_PAGE_CAP = 5000
DEFAULT_PAGE = 50
RUN_KEYS_CAP = 1000


def page_size(first: int | None, *, default: int = DEFAULT_PAGE, cap: int = PAGE_CAP) -> int:
    if first is None:
        return default
    if not 0 <= first <= cap:
        raise BadInput(f"`first` must be between 0 and {cap} (got {first}); page with `after`")
    return first


def check_time(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadInput(f"`{name}` needs a timezone offset, e.g. 2026-03-01T00:00:00Z")
    return value


# ----------------------------------------------------------------------------- connections

T = TypeVar("T")


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type(
    description="A page of a list; ask for the next one with `after: pageInfo.endCursor`."
)
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo
    count: strawberry.Private[Callable[[], Awaitable[int]] | None] = None

    @typed.field(description="The items of this page (the `node` of each edge).")
    def nodes(self) -> list[T]:
        return [e.node for e in self.edges]

    @typed.field(description="How many items the whole list has (costs a count query).")
    async def total_count(self) -> int | None:
        return None if self.count is None else await self.count()


def connection(
    items: Sequence[tuple[str, T]],
    limit: int,
    after: str | None,
    count: Callable[[], Awaitable[int]] | None = None,
) -> Connection[T]:
    """A page from up to ``limit + 1`` (cursor, item) pairs: the extra one says there is more."""
    edges = [Edge(cursor=c, node=n) for c, n in items[:limit]]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(items) > limit,
            has_previous_page=after is not None,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        count=count,
    )


# ------------------------------------------------------------------------------------ enums


@strawberry.enum
class RunStatus(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"


@strawberry.enum
class Decision(enum.Enum):
    APPROVED = "approved"
    REJECTED = "rejected"


# ------------------------------------------------------------------------------------ nodes


@strawberry.interface(
    description="An object with a global id `<project>/<kind>:<key>`, e.g. `churn/run:run-1`."
)
class Node:
    id: strawberry.ID


@strawberry.type
class Annotation:
    event_id: strawberry.ID
    text: str
    labels: JSON
    author: str
    added_at: datetime
    recorded_at: datetime

    @classmethod
    def from_row(cls, r: Record) -> Annotation:
        return cls(
            event_id=strawberry.ID(str(r["event_id"])),
            text=r["text"],
            labels=r["labels"],
            author=r["author"],
            added_at=r["added_at"],
            recorded_at=r["recorded_at"],
        )


async def _annotations(info: Info, project: str, subject: str) -> list[Annotation]:
    rows = await info.context.loaders.annotations.load((project, subject))
    return [Annotation.from_row(r) for r in rows]


async def _facets(info: Info, project: str, node: str) -> dict[str, Any]:
    """OpenLineage facets of a run (`run`, `job`, `inputs`/`outputs` per dataset) or of a
    dataset (by facet name)."""
    rows = await info.context.loaders.openlineage_facets.load((project, node))
    if node.startswith("dataset:"):
        return {r["name"]: r["value"] for r in rows}
    out: dict[str, Any] = {"run": {}, "job": {}, "inputs": {}, "outputs": {}}
    for r in rows:
        scope, _, dataset = r["scope"].partition(":")
        if dataset:
            out[f"{scope}s"].setdefault(dataset, {})[r["name"]] = r["value"]
        else:
            out[scope][r["name"]] = r["value"]
    return out


@strawberry.type
class Project(Node):
    name: str
    description: str | None
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, r: Record) -> Project:
        return cls(
            id=strawberry.ID(gid(r["project"], f"project:{r['project']}")),
            name=r["project"],
            description=r["description"],
            created_by=r["created_by"],
            created_at=r["created_at"],
        )

    @typed.field(description="Runs, newest first. Filter and order with `searchRuns`.")
    async def runs(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Run]:
        limit = page_size(first)
        key = uncursor(after, (str, type(None)), str)
        started = datetime.fromisoformat(key[0]) if key and key[0] else None
        rows = await info.context.loaders.project_runs_page.load(
            (self.name, started, key[1] if key else None, limit + 1)
        )
        return connection([(_run_cursor(r), Run.from_row(r)) for r in rows], limit, after)

    @typed.field(description="Datasets by name.")
    async def datasets(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Dataset]:
        limit = page_size(first)
        key = uncursor(after, str)
        rows = await info.context.loaders.project_datasets_page.load(
            (self.name, key[0] if key else None, limit + 1)
        )
        return connection([(cursor(r["name"]), Dataset.from_row(r)) for r in rows], limit, after)

    @typed.field(description="Models by name.")
    async def models(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Model]:
        limit = page_size(first)
        key = uncursor(after, str)
        rows = await info.context.loaders.project_models_page.load(
            (self.name, key[0] if key else None, limit + 1)
        )
        return connection([(cursor(r["name"]), Model.from_row(r)) for r in rows], limit, after)

    @typed.field(
        description=f"The param, metric and tag keys its runs have, by name (up to {RUN_KEYS_CAP} "
        "of each): the columns and filters a runs table can offer."
    )
    async def run_keys(self, info: Info) -> RunKeys:
        rows = await info.context.loaders.run_keys.load((self.name, RUN_KEYS_CAP))
        keys: dict[str, list[str]] = {"param": [], "metric": [], "tag": []}
        for r in rows:
            keys[r["kind"]].append(r["key"])
        return RunKeys(params=keys["param"], metrics=keys["metric"], tags=keys["tag"])

    @typed.field(description="Deployments holding at `asOf` (default now), as known at `knownAt`.")
    async def deployments(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[Deployment]:
        rows = await info.context.loaders.assignments_of_project.load(
            (self.name, "deployment", check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )
        return [Deployment.from_row(r) for r in rows]


@strawberry.type(description="The keys a project's runs have, each list by name.")
class RunKeys:
    params: list[str]
    metrics: list[str]
    tags: list[str]


def _run_cursor(r: Record) -> str:
    started = r["started_at"]
    return cursor(started.isoformat() if started else None, r["run_id"])


@strawberry.type
class Param:
    key: str
    value: JSON


@strawberry.type
class Tag:
    key: str
    value: str


@dataclass(slots=True)
class RunData:
    """A run's params, metrics and tags, fetched with the run (None: not fetched)."""

    params: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Any]] | None = None
    tags: dict[str, str] | None = None


# How a metric's `at` reads in `metricMap`: what `_search.py`'s SQL spells with to_char.
METRIC_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


def metric_entry(r: Record) -> dict[str, Any]:
    """A `metricMap` entry from an rm.run_metrics row (as the search SQL builds it)."""
    return {
        "value": r["value"],
        "step": r["step"],
        "at": r["at"].astimezone(UTC).strftime(METRIC_AT_FORMAT),
        "min": r["min_value"],
        "max": r["max_value"],
        "count": r["points"],
    }


@strawberry.type(description="A metric's latest point (by step, then time) and its range.")
class Metric:
    key: str
    value: float
    step: int
    at: datetime
    min: float
    max: float
    count: int

    @classmethod
    def from_entry(cls, key: str, m: dict[str, Any]) -> Metric:
        return cls(
            key=key,
            value=m["value"],
            step=m["step"],
            at=datetime.fromisoformat(m["at"]),
            min=m["min"],
            max=m["max"],
            count=m["count"],
        )


@strawberry.type
class MetricPoint:
    key: str
    step: int
    value: float
    at: datetime
    position: int = strawberry.field(description="The event store position that carried it.")


@strawberry.type(
    description="A dataset version named by a run or another version; `datasetVersion` is null until its own event arrives."
)
class DatasetVersionRef:
    id: strawberry.ID
    dataset: str
    version: str
    role: str | None = None

    @typed.field()
    async def dataset_version(self, info: Info) -> DatasetVersion | None:
        return await _load_dataset_version(info, self)


async def _load_dataset_version(info: Info, ref: DatasetVersionRef) -> DatasetVersion | None:
    project = ref.id.partition("/")[0]
    row = await info.context.loaders.dataset_version.load((project, ref.dataset, ref.version))
    return None if row is None else DatasetVersion.from_row(row)


def _dataset_version_ref(project: str, node: str, role: str | None = None) -> DatasetVersionRef:
    dataset, _, version = node.partition(":")[2].rpartition("@")
    return DatasetVersionRef(
        id=strawberry.ID(gid(project, node)), dataset=dataset, version=version, role=role
    )


@strawberry.type
class RunOutput:
    uri: str
    digest: str | None
    name: str | None
    produced_at: datetime
    dataset_version_ref: strawberry.Private[DatasetVersionRef | None]

    @typed.field(description="The dataset version it registered as, if any.")
    async def dataset_version(self, info: Info) -> DatasetVersion | None:
        ref = self.dataset_version_ref
        return None if ref is None else await _load_dataset_version(info, ref)


@strawberry.type(
    description="The uncommitted changes a run's working tree had (`git diff --binary HEAD`), as recorded by the SDK."
)
class CodeDiff:
    digest: str = strawberry.field(description="sha256: of the diff's bytes.")
    size_bytes: int
    encoding: str | None = strawberry.field(
        description="`utf-8` (text) or `base64` (bytes that are not UTF-8)."
    )
    text: str | None = strawberry.field(
        description="The diff in `encoding`; null when it was erased by a redaction."
    )

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> CodeDiff:
        return cls(
            digest=p["digest"],
            size_bytes=p.get("size_bytes", 0),
            encoding=p.get("encoding"),
            text=p.get("diff"),
        )


@strawberry.type
class Run(Node):
    project: str
    run_id: str
    name: str | None
    experiment: str | None
    status: RunStatus
    actor: str
    started_at: datetime | None
    finished_at: datetime | None
    recorded_at: datetime
    code: JSON | None = strawberry.field(description="git repo, commit, dirty flag, entrypoint.")
    git_commit: str | None
    environment: JSON | None
    error: JSON | None
    parent_run_id: str | None
    # Params, metrics and tags as a search page fetched them with the runs (`_search.py`), as
    # the maps `paramMap`, `metricMap` and `tagMap` return; None: ask the loaders.
    preloaded: strawberry.Private[RunData | None] = None

    @classmethod
    def from_row(cls, r: Record) -> Run:
        return cls(
            id=strawberry.ID(f"{r['project']}/run:{r['run_id']}"),
            project=r["project"],
            run_id=r["run_id"],
            name=r["name"],
            experiment=r["experiment"],
            status=RunStatus(r["status"]),
            actor=r["actor"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            recorded_at=r["recorded_at"],
            code=r["code"],
            git_commit=r["git_commit"],
            environment=r["environment"],
            error=r["error"],
            parent_run_id=r["parent_run"],
        )

    @typed.field(description="Seconds from start to finish, if both are known.")
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @typed.field()
    async def parent_run(self, info: Info) -> Run | None:
        if self.parent_run_id is None:
            return None
        row = await info.context.loaders.run.load((self.project, self.parent_run_id))
        return None if row is None else Run.from_row(row)

    async def _params(self, info: Info) -> dict[str, Any]:
        if self.preloaded is not None and self.preloaded.params is not None:
            return self.preloaded.params
        rows = await info.context.loaders.params.load((self.project, self.run_id))
        return {r["key"]: r["value"] for r in rows}

    async def _tags(self, info: Info) -> dict[str, str]:
        if self.preloaded is not None and self.preloaded.tags is not None:
            return self.preloaded.tags
        rows = await info.context.loaders.tags.load((self.project, self.run_id))
        return {r["key"]: r["value"] for r in rows}

    async def _metrics(self, info: Info) -> dict[str, dict[str, Any]]:
        if self.preloaded is not None and self.preloaded.metrics is not None:
            return self.preloaded.metrics
        rows = await info.context.loaders.metrics.load((self.project, self.run_id))
        return {r["key"]: metric_entry(r) for r in rows}

    @typed.field()
    async def params(self, info: Info) -> list[Param]:
        return [Param(key=k, value=v) for k, v in (await self._params(info)).items()]

    @typed.field()
    async def tags(self, info: Info) -> list[Tag]:
        return [Tag(key=k, value=v) for k, v in (await self._tags(info)).items()]

    @typed.field(description="Latest value, min, max and count of every metric key.")
    async def metrics(self, info: Info, keys: list[str] | None = None) -> list[Metric]:
        wanted = set(keys) if keys is not None else None
        return [
            Metric.from_entry(k, m)
            for k, m in (await self._metrics(info)).items()
            if wanted is None or k in wanted
        ]

    @typed.field(
        description="Its params as one JSON object, key to value, in key order: `params` "
        "without an object per param (cheaper for a page of many runs)."
    )
    async def param_map(self, info: Info) -> JSON:
        return JSON(await self._params(info))

    @typed.field(
        description="Its tags as one JSON object, key to value, in key order: `tags` without "
        "an object per tag."
    )
    async def tag_map(self, info: Info) -> JSON:
        return JSON(await self._tags(info))

    @typed.field(
        description="Its metrics (those in `keys`, when given) as one JSON object, key to "
        '`{"value", "step", "at", "min", "max", "count"}` (`value` the latest point, `at` its '
        "time in UTC, ISO 8601), in key order: `metrics` without an object per metric."
    )
    async def metric_map(self, info: Info, keys: list[str] | None = None) -> JSON:
        metrics = await self._metrics(info)
        if keys is not None:
            wanted = set(keys)
            metrics = {k: m for k, m in metrics.items() if k in wanted}
        return JSON(metrics)

    @typed.field(
        description=f"Every point of one metric, by step; `stepFrom`/`stepTo` bound the range (inclusive). Pages of up to {HISTORY_PAGE_CAP}."
    )
    async def metric_history(
        self,
        info: Info,
        key: str,
        step_from: int | None = None,
        step_to: int | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[MetricPoint]:
        limit = page_size(first, default=1000, cap=HISTORY_PAGE_CAP)
        pos = uncursor(after, int, int)
        rows = await info.context.loaders.metric_history.load(
            (
                self.project, self.run_id, key, step_from, step_to,
                pos[0] if pos else None, pos[1] if pos else None, limit + 1,
            )
        )  # fmt: skip
        return connection(
            [
                (
                    cursor(r["step"], r["position"]),
                    MetricPoint(
                        key=r["key"],
                        step=r["step"],
                        value=r["value"],
                        at=r["at"],
                        position=r["position"],
                    ),
                )
                for r in rows
            ],
            limit,
            after,
        )

    @typed.field(description="Dataset versions it used, with their role.")
    async def inputs(self, info: Info) -> list[DatasetVersionRef]:
        rows = await info.context.loaders.inputs.load((self.project, f"run:{self.run_id}"))
        return [_dataset_version_ref(self.project, r["src"], r["role"]) for r in rows]

    @typed.field()
    async def outputs(self, info: Info) -> list[RunOutput]:
        rows = await info.context.loaders.outputs.load((self.project, self.run_id))
        return [
            RunOutput(
                uri=r["uri"],
                digest=r["digest"],
                name=r["name"],
                produced_at=r["produced_at"],
                dataset_version_ref=(
                    _dataset_version_ref(
                        self.project, f"dataset_version:{r['dataset']}@{r['version']}"
                    )
                    if r["dataset"] is not None and r["version"] is not None
                    else None
                ),
            )
            for r in rows
        ]

    @typed.field(description="Model versions registered from this run.")
    async def model_versions(self, info: Info) -> list[ModelVersion]:
        rows = await info.context.loaders.run_model_versions.load((self.project, self.run_id))
        return [ModelVersion.from_row(r) for r in rows]

    async def _reruns(self, info: Info, sources: bool, edge_type: str) -> list[Run]:
        loaders = info.context.loaders
        loader = loaders.rerun_sources if sources else loaders.reruns
        rows = await loader.load((self.project, f"run:{self.run_id}"))
        return [Run.from_row(r) for r in rows if r["edge_type"] == edge_type]

    @typed.field(
        description="The run this run reproduces (`studbook reproduce`: same code, data, environment and params)."
    )
    async def reproduced_from(self, info: Info) -> Run | None:
        found = await self._reruns(info, True, "reproduced")
        return found[0] if found else None

    @typed.field(description="Reproductions of this run, oldest first.")
    async def reproductions(self, info: Info) -> list[Run]:
        return await self._reruns(info, False, "reproduced")

    @typed.field(
        description="The run this run re-ran with changed params (`studbook reproduce --set`)."
    )
    async def derived_from(self, info: Info) -> Run | None:
        found = await self._reruns(info, True, "derived_run")
        return found[0] if found else None

    @typed.field(description="Re-runs of this run with changed params, oldest first.")
    async def derived_runs(self, info: Info) -> list[Run]:
        return await self._reruns(info, False, "derived_run")

    @typed.field(
        description="The uncommitted changes recorded with the run, if its tree was dirty (and the diff under the SDK's size cap); `code.diff` names their digest."
    )
    async def code_diff(self, info: Info) -> CodeDiff | None:
        row = await info.context.loaders.code_diff.load((self.project, f"run:{self.run_id}"))
        return None if row is None else CodeDiff.from_payload(row["payload"])

    @typed.field()
    async def annotations(self, info: Info) -> list[Annotation]:
        return await _annotations(info, self.project, f"run:{self.run_id}")

    @typed.field(
        description="The OpenLineage facets reported for this run, the newest of each, as sent: "
        "`{run: {name: facet}, job: {...}, inputs: {dataset: {...}}, outputs: {dataset: {...}}}` "
        "(input and output facets by Studbook dataset name). Empty for runs reported otherwise."
    )
    async def facets(self, info: Info) -> JSON:
        return JSON(await _facets(info, self.project, f"run:{self.run_id}"))


@strawberry.type
class Dataset(Node):
    project: str
    name: str
    description: str | None
    uri: str | None
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, r: Record) -> Dataset:
        return cls(
            id=strawberry.ID(f"{r['project']}/dataset:{r['name']}"),
            project=r["project"],
            name=r["name"],
            description=r["description"],
            uri=r["uri"],
            created_by=r["created_by"],
            created_at=r["created_at"],
        )

    @typed.field(description="Versions, newest first.")
    async def versions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[DatasetVersion]:
        limit = page_size(first)
        key = uncursor(after, int)
        rows = await info.context.loaders.dataset_versions_page.load(
            (self.project, self.name, key[0] if key else None, limit + 1)
        )
        return connection(
            [(cursor(r["number"]), DatasetVersion.from_row(r)) for r in rows], limit, after
        )

    @typed.field()
    async def annotations(self, info: Info) -> list[Annotation]:
        return await _annotations(info, self.project, f"dataset:{self.name}")

    @typed.field(
        description="The OpenLineage dataset facets reported for it (schema, dataSource, "
        "ownership, ...), the newest of each, as sent, by facet name."
    )
    async def facets(self, info: Info) -> JSON:
        return JSON(await _facets(info, self.project, f"dataset:{self.name}"))


@strawberry.type(
    description="Where a dataset version hashed from a local path was read from, as recorded."
)
class DatasetVersionSource:
    uri: str = strawberry.field(description="The path as a `file://` uri on the recording host.")
    repo_path: str | None = strawberry.field(
        description="The path within the git repository of the recording code, if inside it."
    )


@strawberry.type
class DatasetVersion(Node):
    project: str
    dataset_name: str
    version: str
    number: int
    uri: str
    digest: str | None = strawberry.field(
        description="Content digest; null for a version a pipeline reported (OpenLineage)."
    )
    size_bytes: int | None
    row_count: int | None
    schema: JSON | None
    created_by: str
    created_at: datetime
    recorded_at: datetime
    parent_nodes: strawberry.Private[list[dict[str, str]]]
    produced_by_run: strawberry.Private[str | None]
    source_doc: strawberry.Private[dict[str, str] | None]

    @classmethod
    def from_row(cls, r: Record) -> DatasetVersion:
        return cls(
            id=strawberry.ID(f"{r['project']}/dataset_version:{r['dataset']}@{r['version']}"),
            project=r["project"],
            dataset_name=r["dataset"],
            version=r["version"],
            number=r["number"],
            uri=r["uri"],
            digest=r["digest"],
            size_bytes=r["size_bytes"],
            row_count=r["row_count"],
            schema=r["schema"],
            created_by=r["created_by"],
            created_at=r["created_at"],
            recorded_at=r["recorded_at"],
            parent_nodes=r["parents"],
            produced_by_run=r["produced_by_run"],
            source_doc=r["source"],
        )

    @typed.field(description="Where it was read from, when it was hashed from a local path.")
    def source(self) -> DatasetVersionSource | None:
        doc = self.source_doc
        if doc is None or "uri" not in doc:
            return None
        return DatasetVersionSource(uri=doc["uri"], repo_path=doc.get("repo_path"))

    @typed.field()
    async def dataset(self, info: Info) -> Dataset | None:
        row = await info.context.loaders.dataset.load((self.project, self.dataset_name))
        return None if row is None else Dataset.from_row(row)

    @typed.field(description="The versions it was derived from.")
    def parents(self) -> list[DatasetVersionRef]:
        return [
            _dataset_version_ref(self.project, f"dataset_version:{p['dataset']}@{p['version']}")
            for p in self.parent_nodes
        ]

    @typed.field(description="The versions derived from it.")
    async def children(self, info: Info) -> list[DatasetVersionRef]:
        node = f"dataset_version:{self.dataset_name}@{self.version}"
        rows = await info.context.loaders.derived_children.load((self.project, node))
        return [_dataset_version_ref(self.project, r["dst"]) for r in rows]

    @typed.field(description="The run that produced it, if it said so.")
    async def produced_by(self, info: Info) -> Run | None:
        if self.produced_by_run is None:
            return None
        row = await info.context.loaders.run.load((self.project, self.produced_by_run))
        return None if row is None else Run.from_row(row)

    @typed.field(description="Runs that used it as an input, by run id.")
    async def consumers(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Run]:
        limit = page_size(first)
        key = uncursor(after, str)
        node = f"dataset_version:{self.dataset_name}@{self.version}"
        rows = await info.context.loaders.consumers_page.load(
            (self.project, node, f"run:{key[0]}" if key else None, limit + 1)
        )
        return connection([(cursor(r["run_id"]), Run.from_row(r)) for r in rows], limit, after)


# A decision recorded this long after the time it claims is shown as back-dated.
BACKDATED_AFTER = timedelta(minutes=5)


@strawberry.type
class Approval:
    event_id: strawberry.ID
    decision: Decision
    reviewer: str = strawberry.field(
        description="Who decided, as authenticated (the token's name; `unverified:<claim>` if not)."
    )
    claimed_reviewer: str | None = strawberry.field(
        description="Who the client said decided (the event's `actor`): a claim, not a fact."
    )
    comment: str | None
    evidence: list[str]
    decided_at: datetime = strawberry.field(
        description="When it was decided, by the client's clock."
    )
    recorded_at: datetime = strawberry.field(description="When the store recorded the decision.")
    backdated: bool = strawberry.field(
        description="Recorded more than 5 minutes after the time it claims (`decidedAt`)."
    )

    @classmethod
    def from_row(cls, r: Record) -> Approval:
        return cls(
            event_id=strawberry.ID(str(r["event_id"])),
            decision=Decision(r["decision"]),
            reviewer=r["reviewer"],
            claimed_reviewer=r["claimed_by"],
            comment=r["comment"],
            evidence=r["evidence"],
            decided_at=r["decided_at"],
            recorded_at=r["recorded_at"],
            backdated=r["recorded_at"] - r["decided_at"] > BACKDATED_AFTER,
        )


@strawberry.type(
    description="An alias holding a model version over [validFrom, validTo) in occurred time, as believed over [recordedFrom, recordedTo)."
)
class AliasAssignment:
    alias: str
    model_name: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    recorded_from: datetime
    recorded_to: datetime | None
    set_by: str
    event_id: strawberry.ID
    project: strawberry.Private[str]

    @classmethod
    def from_row(cls, r: Record) -> AliasAssignment:
        return cls(
            alias=r["name"],
            model_name=r["model"],
            version=r["version"],
            valid_from=r["valid_from"],
            valid_to=r["valid_to"],
            recorded_from=r["recorded_from"],
            recorded_to=r["recorded_to"],
            set_by=r["set_by"],
            event_id=strawberry.ID(str(r["set_event"])),
            project=r["project"],
        )

    @typed.field()
    async def model_version(self, info: Info) -> ModelVersion | None:
        row = await info.context.loaders.model_version.load(
            (self.project, self.model_name, self.version)
        )
        return None if row is None else ModelVersion.from_row(row)


@strawberry.type(
    description="A model version deployed to an environment over [validFrom, validTo), as believed over [recordedFrom, recordedTo)."
)
class Deployment(Node):
    project: str
    model_name: str
    environment: str
    version: int
    target: str | None
    valid_from: datetime
    valid_to: datetime | None
    recorded_from: datetime
    recorded_to: datetime | None
    deployed_by: str
    event_id: strawberry.ID

    @classmethod
    def from_row(cls, r: Record) -> Deployment:
        return cls(
            id=strawberry.ID(f"{r['project']}/deployment:{r['model']}/{r['name']}"),
            project=r["project"],
            model_name=r["model"],
            environment=r["name"],
            version=r["version"],
            target=r["target"],
            valid_from=r["valid_from"],
            valid_to=r["valid_to"],
            recorded_from=r["recorded_from"],
            recorded_to=r["recorded_to"],
            deployed_by=r["set_by"],
            event_id=strawberry.ID(str(r["set_event"])),
        )

    @typed.field()
    async def model_version(self, info: Info) -> ModelVersion | None:
        row = await info.context.loaders.model_version.load(
            (self.project, self.model_name, self.version)
        )
        return None if row is None else ModelVersion.from_row(row)


@strawberry.type
class Model(Node):
    project: str
    name: str
    description: str | None
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, r: Record) -> Model:
        return cls(
            id=strawberry.ID(f"{r['project']}/model:{r['name']}"),
            project=r["project"],
            name=r["name"],
            description=r["description"],
            created_by=r["created_by"],
            created_at=r["created_at"],
        )

    @typed.field(description="Versions, newest first.")
    async def versions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[ModelVersion]:
        limit = page_size(first)
        key = uncursor(after, int)
        rows = await info.context.loaders.model_versions_page.load(
            (self.project, self.name, key[0] if key else None, limit + 1)
        )
        return connection(
            [(cursor(r["number"]), ModelVersion.from_row(r)) for r in rows], limit, after
        )

    @typed.field(
        description="Aliases holding at `asOf` (default now), as known at `knownAt` (default now)."
    )
    async def aliases(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[AliasAssignment]:
        rows = await info.context.loaders.assignments_of_model.load(
            (
                self.project,
                "alias",
                self.name,
                check_time(as_of, "asOf"),
                check_time(known_at, "knownAt"),
            )
        )
        return [AliasAssignment.from_row(r) for r in rows]

    @typed.field(
        description="Every interval `alias` held a version (every alias's, when `alias` is not "
        "given), in occurred order, as known at `knownAt` (default now)."
    )
    async def alias_history(
        self, info: Info, alias: str | None = None, known_at: datetime | None = None
    ) -> list[AliasAssignment]:
        rows = await info.context.loaders.assignment_history.load(
            (self.project, "alias", self.name, alias, check_time(known_at, "knownAt"))
        )
        return [AliasAssignment.from_row(r) for r in rows]

    @typed.field(description="Deployments holding at `asOf` (default now), as known at `knownAt`.")
    async def deployments(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[Deployment]:
        rows = await info.context.loaders.assignments_of_model.load(
            (
                self.project,
                "deployment",
                self.name,
                check_time(as_of, "asOf"),
                check_time(known_at, "knownAt"),
            )
        )
        return [Deployment.from_row(r) for r in rows]

    @typed.field()
    async def annotations(self, info: Info) -> list[Annotation]:
        return await _annotations(info, self.project, f"model:{self.name}")


@strawberry.type
class ModelVersion(Node):
    project: str
    model_name: str
    number: int
    run_id: str | None
    artifact_uri: str
    digest: str | None
    framework: str | None
    signature: JSON | None
    description: str | None
    registered_by: str
    registered_at: datetime
    recorded_at: datetime

    @classmethod
    def from_row(cls, r: Record) -> ModelVersion:
        return cls(
            id=strawberry.ID(f"{r['project']}/model_version:{r['model']}@{r['number']}"),
            project=r["project"],
            model_name=r["model"],
            number=r["number"],
            run_id=r["run_id"],
            artifact_uri=r["artifact_uri"],
            digest=r["digest"],
            framework=r["framework"],
            signature=r["signature"],
            description=r["description"],
            registered_by=r["registered_by"],
            registered_at=r["registered_at"],
            recorded_at=r["recorded_at"],
        )

    @typed.field()
    async def model(self, info: Info) -> Model | None:
        row = await info.context.loaders.model.load((self.project, self.model_name))
        return None if row is None else Model.from_row(row)

    @typed.field(description="The run that trained it.")
    async def run(self, info: Info) -> Run | None:
        if self.run_id is None:
            return None
        row = await info.context.loaders.run.load((self.project, self.run_id))
        return None if row is None else Run.from_row(row)

    @typed.field(
        description="Aliases it holds at `asOf` (default now), as known at `knownAt` (default now)."
    )
    async def aliases(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[AliasAssignment]:
        rows = await info.context.loaders.assignments_of_version.load(
            (self.project, "alias", self.model_name, self.number,
             check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )  # fmt: skip
        return [AliasAssignment.from_row(r) for r in rows]

    @typed.field(
        description="Environments it is deployed to at `asOf` (default now), as known at `knownAt`."
    )
    async def deployments(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[Deployment]:
        rows = await info.context.loaders.assignments_of_version.load(
            (self.project, "deployment", self.model_name, self.number,
             check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )  # fmt: skip
        return [Deployment.from_row(r) for r in rows]

    @typed.field(
        description="Approvals and rejections decided by `asOf`, as recorded by `knownAt`, in order."
    )
    async def approvals(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[Approval]:
        rows = await info.context.loaders.approvals.load(
            (self.project, self.model_name, self.number,
             check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )  # fmt: skip
        return [Approval.from_row(r) for r in rows]

    @typed.field(
        description="Whether its latest decision by `asOf` (as known at `knownAt`) is an approval."
    )
    async def approved(
        self, info: Info, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> bool:
        rows = await info.context.loaders.approvals.load(
            (self.project, self.model_name, self.number,
             check_time(as_of, "asOf"), check_time(known_at, "knownAt"))
        )  # fmt: skip
        return bool(rows) and rows[-1]["decision"] == "approved"


def entity_from(kind: str, row: Record) -> Any:
    """The GraphQL object for a read-model row of ``kind``."""
    return _FROM_ROW[kind](row)


_FROM_ROW: dict[str, Callable[[Record], Any]] = {
    "project": Project.from_row,
    "run": Run.from_row,
    "dataset": Dataset.from_row,
    "dataset_version": DatasetVersion.from_row,
    "model": Model.from_row,
    "model_version": ModelVersion.from_row,
    "deployment": Deployment.from_row,
}

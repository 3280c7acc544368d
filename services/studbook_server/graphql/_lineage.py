"""Lineage walks and impact: one SQL round trip each.

The walk itself is `public.studbook_lineage_walk` (schema/sql/0004_graphql_read_path.sql): level by
level, each node visited once, with depth, node and edge caps. The statements here page its
result: nodes in (depth, id) order (the order the walk returns them in, ids compared bytewise), and
each edge on the page of its later endpoint in that order (the walk's `seen` maps a node to its
position), so a client that reads every page gets every edge exactly once, after both its endpoints.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import strawberry

from studbook_server.graphql import _typed as typed
from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput
from studbook_server.graphql._ids import Ref, cursor, gid, node_kind, uncursor
from studbook_server.graphql._types import (
    DatasetVersion,
    Deployment,
    ModelVersion,
    PageInfo,
    Run,
    check_time,
    page_size,
)

MAX_DEPTH = 20
# Measured on the 1M-edge benchmark graph: a walk costs ~5 us per node it reaches, so these keep
# the worst walks (hubs, exploding fan-outs) near 5 ms of database time; with 2000 / 5000 the
# p95 of depth-10 walks through HTTP was ~21 ms, over the 20 ms target. See docs/graphql.md.
MAX_NODES = 1000
MAX_EDGES = 3000
DEFAULT_DEPTH = 5
LINEAGE_PAGE_DEFAULT = 100


@strawberry.enum
class LineageDirection(enum.Enum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    BOTH = "both"


@strawberry.enum
class NodeType(enum.Enum):
    DATASET_VERSION = "dataset_version"
    RUN = "run"
    MODEL_VERSION = "model_version"
    DEPLOYMENT = "deployment"


@strawberry.enum
class EdgeType(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    DERIVED = "derived"
    TRAINED = "trained"
    DEPLOYED = "deployed"
    REPRODUCED = "reproduced"
    DERIVED_RUN = "derived_run"


LineageEntity = Annotated[
    DatasetVersion | Run | ModelVersion | Deployment,
    strawberry.union("LineageEntity", description="What a lineage node is."),
]


@strawberry.type
class LineageNode:
    id: strawberry.ID
    type: NodeType
    depth: int = strawberry.field(description="Hops from the start node (0 is the start).")
    as_of: strawberry.Private[datetime | None]
    known_at: strawberry.Private[datetime | None]

    @typed.field(
        description="The dataset version, run, model version or deployment; null while a "
        "reference has not been resolved (its own event has not arrived)."
    )
    async def entity(self, info: Info) -> LineageEntity | None:
        project, _, node = self.id.partition("/")
        key = node.partition(":")[2]
        loaders = info.context.loaders
        row: Any
        if self.type is NodeType.RUN:
            row = await loaders.run.load((project, key))
            return None if row is None else Run.from_row(row)
        if self.type is NodeType.DATASET_VERSION:
            dataset, _, version = key.rpartition("@")
            row = await loaders.dataset_version.load((project, dataset, version))
            return None if row is None else DatasetVersion.from_row(row)
        if self.type is NodeType.MODEL_VERSION:
            model, _, number = key.rpartition("@")
            row = await loaders.model_version.load((project, model, int(number)))
            return None if row is None else ModelVersion.from_row(row)
        model, _, environment = key.rpartition("/")
        row = await loaders.assignment_by_name.load(
            (project, "deployment", model, environment, self.as_of, self.known_at)
        )
        return None if row is None else Deployment.from_row(row)


@strawberry.type
class LineageEdge:
    source: strawberry.ID
    destination: strawberry.ID
    type: EdgeType
    role: str | None = strawberry.field(
        description="An input's role (e.g. train), or a deployment's target."
    )


@strawberry.type(
    description="A page of a lineage walk: nodes in (depth, id) order, and the edges whose "
    "later endpoint is on this page."
)
class Lineage:
    start: strawberry.ID
    direction: LineageDirection
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    page_info: PageInfo
    total_nodes: int = strawberry.field(description="Nodes in the whole walk (after `types`).")
    truncated: bool = strawberry.field(
        description=f"True when a server cap cut the walk short: depth {MAX_DEPTH}, "
        f"{MAX_NODES} nodes or {MAX_EDGES} edges. Narrow the walk (depth, asOf) to see all."
    )
    depth_reached: int


_LINEAGE = """
WITH w AS MATERIALIZED (
    SELECT * FROM public.studbook_lineage_walk($1, $2, $3, $4, $5, $6, $7, $8, $9)
), n AS MATERIALIZED (
    SELECT u.node, u.depth, u.o FROM w, unnest(w.nodes, w.depths) WITH ORDINALITY AS u(node, depth, o)
    WHERE $10::text[] IS NULL OR split_part(u.node, ':', 1) = ANY($10::text[])
), rest AS MATERIALIZED (
    SELECT * FROM n
    WHERE $11::int IS NULL OR (depth, node COLLATE "C") > ($11::int, $12::text COLLATE "C")
), page AS MATERIALIZED (
    SELECT * FROM rest ORDER BY o LIMIT $13
), bounds AS (
    SELECT min(o) AS lo, max(o) AS hi FROM page
)
SELECT w.truncated, w.depth_reached,
       (SELECT count(*) FROM n) AS total,
       (SELECT count(*) FROM rest) AS remaining,
       (SELECT json_agg(json_build_array(node, depth) ORDER BY o) FROM page) AS nodes,
       (SELECT json_agg(json_build_array(e.src, e.dst, e.t, e.r) ORDER BY e.src, e.dst, e.t)
        FROM (SELECT DISTINCT x.src, x.dst, x.t, x.r
              FROM unnest(w.edge_src, w.edge_dst, w.edge_types, w.edge_roles) AS x(src, dst, t, r),
                   bounds b
              WHERE greatest((w.seen ->> x.src)::int, (w.seen ->> x.dst)::int) BETWEEN b.lo AND b.hi
                AND ($10::text[] IS NULL OR (split_part(x.src, ':', 1) = ANY($10::text[])
                                             AND split_part(x.dst, ':', 1) = ANY($10::text[])))
        ) e) AS edges
FROM w
"""


def _cursor(node: LineageNode | None) -> str | None:
    return None if node is None else cursor(node.depth, node.id.partition("/")[2])


def _caps(depth: int | None) -> tuple[int, bool]:
    wanted = DEFAULT_DEPTH if depth is None else depth
    if wanted < 0:
        raise BadInput(f"`depth` must be 0 or more (got {wanted})")
    return min(wanted, MAX_DEPTH), wanted > MAX_DEPTH


async def walk(
    info: Info,
    start: Ref,
    direction: LineageDirection,
    depth: int | None,
    types: list[NodeType] | None,
    as_of: datetime | None,
    known_at: datetime | None,
    first: int | None,
    after: str | None,
) -> Lineage:
    if start.kind not in {t.value for t in NodeType}:
        raise BadInput(
            f"`from` must be a dataset version, run, model version or deployment id, "
            f"not a {start.kind}: e.g. `churn/model_version:churn-clf@2`"
        )
    limit = page_size(first, default=LINEAGE_PAGE_DEFAULT)
    max_depth, clamped = _caps(depth)
    position = uncursor(after, int, str)
    check_time(as_of, "asOf")
    check_time(known_at, "knownAt")
    row = await info.context.pool.fetchrow(
        _LINEAGE,
        start.project,
        start.node,
        direction is not LineageDirection.DOWNSTREAM,
        direction is not LineageDirection.UPSTREAM,
        max_depth,
        MAX_NODES,
        MAX_EDGES,
        as_of,
        known_at,
        [t.value for t in types] if types is not None else None,
        position[0] if position else None,
        position[1] if position else None,
        limit,
    )
    project = start.project
    nodes = [
        LineageNode(
            id=strawberry.ID(gid(project, node)),
            type=NodeType(node_kind(node)),
            depth=d,
            as_of=as_of,
            known_at=known_at,
        )
        for node, d in row["nodes"] or []
    ]
    edges = [
        LineageEdge(
            source=strawberry.ID(gid(project, src)),
            destination=strawberry.ID(gid(project, dst)),
            type=EdgeType(t),
            role=r,
        )
        for src, dst, t, r in row["edges"] or []
    ]
    first_node, last_node = (nodes[0], nodes[-1]) if nodes else (None, None)
    return Lineage(
        start=strawberry.ID(start.id),
        direction=direction,
        nodes=nodes,
        edges=edges,
        page_info=PageInfo(
            has_next_page=row["remaining"] > len(nodes),
            has_previous_page=after is not None,
            start_cursor=_cursor(first_node),
            end_cursor=_cursor(last_node),
        ),
        total_nodes=row["total"],
        truncated=row["truncated"] or clamped,
        depth_reached=row["depth_reached"],
    )


# ---------------------------------------------------------------------------------- impact


@strawberry.type
class ImpactedModelVersion:
    model_version: ModelVersion
    depth: int = strawberry.field(description="Hops from the dataset version.")
    aliases: list[str] = strawberry.field(description="Aliases it holds at the impact's `asOf`.")
    as_of: strawberry.Private[datetime | None]
    known_at: strawberry.Private[datetime | None]

    @typed.field(description="Where it is deployed at the impact's `asOf`.")
    async def deployments(self, info: Info) -> list[Deployment]:
        mv = self.model_version
        rows = await info.context.loaders.assignments_of_version.load(
            (mv.project, "deployment", mv.model_name, mv.number, self.as_of, self.known_at)
        )
        return [Deployment.from_row(r) for r in rows]


@strawberry.type(
    description="Model versions (and their deployments) downstream of a dataset version, at any depth up to the server cap."
)
class Impact:
    dataset_version: strawberry.ID
    alias: str | None
    model_versions: list[ImpactedModelVersion]
    truncated: bool

    @typed.field(description="Deployments of the impacted model versions at `asOf`.")
    async def deployments(self, info: Info) -> list[Deployment]:
        keys = [
            (m.model_version.project, "deployment", m.model_version.model_name,
             m.model_version.number, m.as_of, m.known_at)
            for m in self.model_versions
        ]  # fmt: skip
        found = await info.context.loaders.assignments_of_version.load_many(keys)
        return [Deployment.from_row(r) for rows in found for r in rows]


_IMPACT = """
WITH w AS MATERIALIZED (
    SELECT * FROM public.studbook_lineage_walk($1, $2, false, true, $3, $4, $5, $6, $7)
), mv AS (
    SELECT u.depth, substring(u.node FROM '^model_version:(.*)@[0-9]{1,9}$') AS model,
           substring(u.node FROM '@([0-9]{1,9})$')::integer AS number
    FROM w, unnest(w.nodes, w.depths) AS u(node, depth)
    WHERE u.node ~ '^model_version:.*@[0-9]{1,9}$'
), held AS (
    SELECT mv.depth, m.*,
           ARRAY(SELECT a.name FROM rm.assignments a
                 WHERE a.project = $1 AND a.kind = 'alias' AND a.model = mv.model
                   AND a.version = mv.number
                   AND a.valid_from <= coalesce($6, now())
                   AND (a.valid_to IS NULL OR coalesce($6, now()) < a.valid_to)
                   AND CASE WHEN $7::timestamptz IS NULL THEN a.recorded_to IS NULL
                            ELSE a.recorded_from <= $7
                                 AND (a.recorded_to IS NULL OR $7 < a.recorded_to) END
                 ORDER BY a.name) AS aliases
    FROM mv JOIN rm.model_versions m ON m.project = $1 AND m.model = mv.model AND m.number = mv.number
)
SELECT w.truncated, h.* FROM w
LEFT JOIN LATERAL (
    SELECT * FROM held WHERE $8::text IS NULL OR $8 = ANY(held.aliases)
) h ON true
ORDER BY h.depth, h.model, h.number
"""


async def impact(
    info: Info,
    start: Ref,
    alias: str | None,
    as_of: datetime | None,
    known_at: datetime | None,
) -> Impact:
    check_time(as_of, "asOf")
    check_time(known_at, "knownAt")
    rows = await info.context.pool.fetch(
        _IMPACT, start.project, start.node, MAX_DEPTH, MAX_NODES, MAX_EDGES, as_of, known_at, alias
    )
    return Impact(
        dataset_version=strawberry.ID(start.id),
        alias=alias,
        model_versions=[
            ImpactedModelVersion(
                model_version=ModelVersion.from_row(r),
                depth=r["depth"],
                aliases=list(r["aliases"]),
                as_of=as_of,
                known_at=known_at,
            )
            for r in rows
            if r["model"] is not None
        ],
        truncated=bool(rows[0]["truncated"]) if rows else False,
    )

"""DataLoaders: one batched SQL statement per kind of thing a request asks for.

A request gets a fresh :class:`Loaders` (in `get_context`), so nothing is cached across requests.
Every batch statement takes one array per key column, unnests them `WITH ORDINALITY` and returns
the ordinal `i` (1-based) with each row, so rows map back to keys without re-deriving them.
Keys that carry a time (`asOf` / `knownAt`) pass None for "now".
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, TypeAlias

import asyncpg
from strawberry.dataloader import DataLoader

from studbook_server.adapters.postgres import Pool

Record: TypeAlias = asyncpg.Record
Key: TypeAlias = tuple[Any, ...]

# ------------------------------------------------------------------------------ predicates
# "Valid at t (default now), as believed at k (default: the current belief)" on rm.assignments,
# for a key row `k` with columns `at` and `known`.
ASSIGNMENT_AT = """
    a.valid_from <= coalesce(k.at, now()) AND (a.valid_to IS NULL OR coalesce(k.at, now()) < a.valid_to)
    AND CASE WHEN k.known IS NULL THEN a.recorded_to IS NULL
             ELSE a.recorded_from <= k.known AND (a.recorded_to IS NULL OR k.known < a.recorded_to) END
"""

# ------------------------------------------------------------------------------ statements

PROJECTS = """
SELECT k.i, p.* FROM unnest($1::text[]) WITH ORDINALITY AS k(project, i)
JOIN rm.projects p ON p.project = k.project
"""

RUNS = """
SELECT k.i, r.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.runs r ON r.project = k.project AND r.run_id = k.run_id
"""

PARAMS = """
SELECT k.i, p.key, p.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_params p ON p.project = k.project AND p.run_id = k.run_id
ORDER BY k.i, p.key
"""

TAGS = """
SELECT k.i, t.key, t.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_tags t ON t.project = k.project AND t.run_id = k.run_id
ORDER BY k.i, t.key
"""

METRICS = """
SELECT k.i, m.key, m.value, m.step, m.at, m.min_value, m.max_value, m.points
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_metrics m ON m.project = k.project AND m.run_id = k.run_id
ORDER BY k.i, m.key
"""

# A page of one series by (step, position), read from rm.metric_chunks. Chunk metadata (no
# arrays) bounds what is unpacked: taking chunks by lowest step, the first ones that surely hold
# `lim` matching points (a chunk counts only when all its points match) end at step `bound`, and
# no chunk starting past `bound` can hold a point of the page. `every` keeps every Nth point by
# logged order (ordinal = seq + index), and counts a whole chunk as its multiples of N.
METRIC_HISTORY = """
SELECT k.i, k.key, p.step, p.value, p.at, p.position
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::int[], $9::int8[])
     WITH ORDINALITY AS k(project, run_id, key, step_from, step_to, after_step, after_position,
                          lim, every, i)
JOIN rm.metric_series s ON s.project = k.project AND s.run_id = k.run_id AND s.key = k.key
CROSS JOIN LATERAL (
    WITH cand AS (
        SELECT c.seq, c.step_min,
               max(c.step_max) OVER w AS reach,
               sum(CASE WHEN c.step_min > coalesce(k.after_step, -1)
                         AND c.step_min >= coalesce(k.step_from, 0)
                         AND c.step_max <= coalesce(k.step_to, c.step_max)
                        THEN div(c.seq + c.n - 1, k.every) - div(c.seq + k.every - 1, k.every) + 1
                        ELSE 0 END) OVER w AS surely
        FROM rm.metric_chunks c
        WHERE c.series_id = s.id
          AND c.step_max >= greatest(coalesce(k.step_from, 0), coalesce(k.after_step, 0))
          AND (k.step_to IS NULL OR c.step_min <= k.step_to)
        WINDOW w AS (ORDER BY c.step_min, c.seq)
    ), bound AS (SELECT min(reach) AS reach FROM cand WHERE surely >= k.lim),
    picked AS (
        SELECT seq FROM cand WHERE step_min <= coalesce((SELECT reach FROM bound), step_min)
    )
    SELECT u.step, u.value, u.at, u.position, c.seq, u.o
    FROM picked JOIN rm.metric_chunks c ON c.series_id = s.id AND c.seq = picked.seq
    CROSS JOIN LATERAL (
        -- Whole arrays for dense reads; for sparse ones (`every` >= 64) only the subscripts
        -- wanted, so a chunk is decompressed once per point taken, not unpacked whole.
        SELECT x.step, x.value, x.at, x.position, x.o
        FROM unnest(c.steps, c.vals, c.ats, c.positions)
             WITH ORDINALITY AS x(step, value, at, position, o)
        WHERE k.every < 64 AND (k.every = 1 OR (c.seq + x.o - 1) % k.every = 0)
        UNION ALL
        SELECT c.steps[i], c.vals[i], c.ats[i], c.positions[i], i
        FROM generate_series((k.every - c.seq % k.every) % k.every + 1, c.n, k.every) AS i
        WHERE k.every >= 64
    ) u
    WHERE (k.step_from IS NULL OR u.step >= k.step_from)
      AND (k.step_to IS NULL OR u.step <= k.step_to)
      AND (k.after_step IS NULL OR (u.step, u.position) > (k.after_step, k.after_position))
    ORDER BY u.step, u.position, c.seq, u.o LIMIT k.lim
) p
ORDER BY k.i, p.step, p.position
"""

# Min/max per step bucket for a chart: `buckets` equal step ranges between the bounds (default:
# the series' own). A chunk that lies inside one bucket contributes its stored summary; only
# chunks across a bucket edge (one per edge when steps rise) are unpacked.
METRIC_BUCKETS = """
SELECT k.i, b.*
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int[])
     WITH ORDINALITY AS k(project, run_id, key, step_from, step_to, buckets, i)
JOIN rm.metric_series s ON s.project = k.project AND s.run_id = k.run_id AND s.key = k.key
CROSS JOIN LATERAL (
    WITH span AS (
        SELECT lo, hi, (hi - lo + k.buckets) / k.buckets AS width FROM (
            SELECT coalesce(k.step_from, min(c.step_min)) AS lo,
                   coalesce(k.step_to, max(c.step_max)) AS hi
            FROM rm.metric_chunks c WHERE c.series_id = s.id) x
        WHERE lo <= hi
    ), cand AS (
        SELECT c.*, span.lo, span.width,
               c.step_min >= span.lo AND c.step_max <= span.hi
               AND div(c.step_min - span.lo, span.width) = div(c.step_max - span.lo, span.width)
               AS inside
        FROM span JOIN rm.metric_chunks c ON c.series_id = s.id
         AND c.step_max >= span.lo AND c.step_min <= span.hi
    ), parts AS (
        SELECT div(step_min - lo, width) AS bucket, lo, width, step_min AS first_step,
               step_max AS last_step, value_min, value_max, last_value, n::int8 AS n,
               position_max AS last_position, seq + n AS last_ordinal
        FROM cand WHERE inside
        UNION ALL
        SELECT div(u.step - cand.lo, cand.width), cand.lo, cand.width, u.step, u.step, u.value,
               u.value, u.value, 1, u.position, cand.seq + u.o
        FROM cand CROSS JOIN LATERAL unnest(cand.steps, cand.vals, cand.positions)
             WITH ORDINALITY AS u(step, value, position, o)
        WHERE NOT cand.inside AND u.step BETWEEN (SELECT lo FROM span) AND (SELECT hi FROM span)
    )
    SELECT bucket, min(lo) + bucket * min(width) AS step_from,
           min(lo) + (bucket + 1) * min(width) - 1 AS step_to,
           min(first_step) AS first_step, max(last_step) AS last_step,
           min(value_min) AS value_min, max(value_max) AS value_max,
           -- The latest part's value: arrays compare element by element (no sort needed);
           -- steps, positions and ordinals stay exact in float8 below 2^53.
           (max(ARRAY[last_step, last_position, last_ordinal, last_value]))[4] AS last_value,
           sum(n)::int8 AS n
    FROM parts GROUP BY bucket
) b
ORDER BY k.i, b.bucket
"""

INPUTS = """
SELECT k.i, e.src, e.role, e.valid_from, e.recorded_from
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.lineage_edges e ON e.project = k.project AND e.dst = k.node AND e.edge_type = 'input'
ORDER BY k.i, e.src
"""

OUTPUTS = """
SELECT k.i, o.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.run_outputs o ON o.project = k.project AND o.run_id = k.run_id
ORDER BY k.i, o.produced_at, o.uri
"""

RUN_MODEL_VERSIONS = """
SELECT k.i, mv.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, run_id, i)
JOIN rm.model_versions mv ON mv.project = k.project AND mv.run_id = k.run_id
ORDER BY k.i, mv.model, mv.number
"""

DATASETS = """
SELECT k.i, d.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, name, i)
JOIN rm.datasets d ON d.project = k.project AND d.name = k.name
"""

DATASET_VERSIONS = """
SELECT k.i, dv.* FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(project, dataset, version, i)
JOIN rm.dataset_versions dv ON dv.project = k.project AND dv.dataset = k.dataset AND dv.version = k.version
"""

DATASET_VERSIONS_PAGE = """
SELECT k.i, dv.* FROM unnest($1::text[], $2::text[], $3::int[], $4::int[])
     WITH ORDINALITY AS k(project, dataset, before, lim, i)
CROSS JOIN LATERAL (
    SELECT * FROM rm.dataset_versions dv
    WHERE dv.project = k.project AND dv.dataset = k.dataset AND (k.before IS NULL OR dv.number < k.before)
    ORDER BY dv.number DESC LIMIT k.lim
) dv
ORDER BY k.i, dv.number DESC
"""

# Derived children of a dataset version (its parents are a column of the row itself).
DERIVED_CHILDREN = """
SELECT k.i, e.dst FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.lineage_edges e ON e.project = k.project AND e.src = k.node AND e.edge_type = 'derived'
ORDER BY k.i, e.dst
"""

# Runs that used a dataset version, in run id order (the edge primary key's order).
CONSUMERS_PAGE = """
SELECT k.i, e.role, r.* FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
     WITH ORDINALITY AS k(project, node, after, lim, i)
CROSS JOIN LATERAL (
    SELECT e.dst, e.role FROM rm.lineage_edges e
    WHERE e.project = k.project AND e.src = k.node AND e.edge_type = 'input'
      AND (k.after IS NULL OR e.dst > k.after)
    ORDER BY e.dst LIMIT k.lim
) e
JOIN rm.runs r ON r.project = k.project AND 'run:' || r.run_id = e.dst
ORDER BY k.i, e.dst
"""

# Re-runs made by `studbook reproduce`: edges `reproduced` / `derived_run` from the original run
# to the re-run. RERUNS: the re-runs of a run; RERUN_SOURCES: the run a run re-ran.
RERUNS = """
SELECT k.i, e.edge_type, r.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.lineage_edges e ON e.project = k.project AND e.src = k.node
                       AND e.edge_type IN ('reproduced', 'derived_run')
JOIN rm.runs r ON r.project = k.project AND 'run:' || r.run_id = e.dst
ORDER BY k.i, r.started_at, r.run_id
"""

RERUN_SOURCES = """
SELECT k.i, e.edge_type, r.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.lineage_edges e ON e.project = k.project AND e.dst = k.node
                       AND e.edge_type IN ('reproduced', 'derived_run')
JOIN rm.runs r ON r.project = k.project AND 'run:' || r.run_id = e.src
ORDER BY k.i, r.started_at, r.run_id
"""

# A run's recorded diff: its first `run.diff.recorded` event (sent right after run.started, so
# the subject's index finds it within a few rows), unless that event was dead-lettered.
CODE_DIFFS = """
SELECT k.i, d.payload FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, subject, i)
CROSS JOIN LATERAL (
    SELECT e.payload FROM public.events e
    WHERE e.project = k.project AND e.subject = k.subject AND e.type = 'run.diff.recorded'
      AND NOT EXISTS (SELECT 1 FROM public.dead_letters dl WHERE dl.position = e.position)
    ORDER BY e.subject_seq LIMIT 1
) d
"""

MODELS = """
SELECT k.i, m.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, name, i)
JOIN rm.models m ON m.project = k.project AND m.name = k.name
"""

MODEL_VERSIONS = """
SELECT k.i, mv.* FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(project, model, number, i)
JOIN rm.model_versions mv ON mv.project = k.project AND mv.model = k.model AND mv.number = k.number
"""

MODEL_VERSIONS_PAGE = """
SELECT k.i, mv.* FROM unnest($1::text[], $2::text[], $3::int[], $4::int[])
     WITH ORDINALITY AS k(project, model, before, lim, i)
CROSS JOIN LATERAL (
    SELECT * FROM rm.model_versions mv
    WHERE mv.project = k.project AND mv.model = k.model AND (k.before IS NULL OR mv.number < k.before)
    ORDER BY mv.number DESC LIMIT k.lim
) mv
ORDER BY k.i, mv.number DESC
"""

PROJECT_DATASETS_PAGE = """
SELECT k.i, d.* FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(project, after, lim, i)
CROSS JOIN LATERAL (
    SELECT * FROM rm.datasets d WHERE d.project = k.project AND (k.after IS NULL OR d.name > k.after)
    ORDER BY d.name LIMIT k.lim
) d
ORDER BY k.i, d.name
"""

PROJECT_MODELS_PAGE = """
SELECT k.i, m.* FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(project, after, lim, i)
CROSS JOIN LATERAL (
    SELECT * FROM rm.models m WHERE m.project = k.project AND (k.after IS NULL OR m.name > k.after)
    ORDER BY m.name LIMIT k.lim
) m
ORDER BY k.i, m.name
"""

# A project's runs, newest first (search with filters is `searchRuns`).
PROJECT_RUNS_PAGE = """
SELECT k.i, r.* FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int[])
     WITH ORDINALITY AS k(project, after_started, after_run, lim, i)
CROSS JOIN LATERAL (
    SELECT * FROM rm.runs r WHERE r.project = k.project
      AND (k.after_run IS NULL
           OR (coalesce(r.started_at, '-infinity'::timestamptz), r.run_id)
              < (coalesce(k.after_started, '-infinity'::timestamptz), k.after_run))
    ORDER BY coalesce(r.started_at, '-infinity'::timestamptz) DESC, r.run_id DESC LIMIT k.lim
) r
ORDER BY k.i, coalesce(r.started_at, '-infinity'::timestamptz) DESC, r.run_id DESC
"""

APPROVALS = """
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[])
     WITH ORDINALITY AS k(project, model, version, at, known, i)
JOIN rm.approvals a ON a.project = k.project AND a.model = k.model AND a.version = k.version
WHERE (k.at IS NULL OR a.decided_at <= k.at) AND (k.known IS NULL OR a.recorded_at <= k.known)
ORDER BY k.i, (SELECT e.position FROM public.events e WHERE e.event_id = a.event_id)
"""

# OpenLineage facets of a run or a dataset (the newest report of each; deleted ones left out).
OPENLINEAGE_FACETS = """
SELECT k.i, f.scope, f.name, f.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, node, i)
JOIN rm.openlineage_facets f ON f.project = k.project AND f.node = k.node
WHERE f.value IS NOT NULL
ORDER BY k.i, f.scope, f.name
"""

ANNOTATIONS = """
SELECT k.i, a.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, subject, i)
JOIN rm.annotations a ON a.project = k.project AND a.subject = k.subject
ORDER BY k.i, a.added_at
"""

ASSIGNMENTS_OF_VERSION = f"""
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::timestamptz[])
     WITH ORDINALITY AS k(project, kind, model, version, at, known, i)
JOIN rm.assignments a ON a.project = k.project AND a.model = k.model AND a.version = k.version
                     AND a.kind = k.kind
WHERE {ASSIGNMENT_AT}
ORDER BY k.i, a.name
"""

ASSIGNMENTS_OF_MODEL = f"""
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
     WITH ORDINALITY AS k(project, kind, model, at, known, i)
JOIN rm.assignments a ON a.project = k.project AND a.kind = k.kind AND a.model = k.model
WHERE {ASSIGNMENT_AT}
ORDER BY k.i, a.name
"""

ASSIGNMENTS_OF_PROJECT = f"""
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
     WITH ORDINALITY AS k(project, kind, at, known, i)
JOIN rm.assignments a ON a.project = k.project AND a.kind = k.kind
WHERE {ASSIGNMENT_AT}
ORDER BY k.i, a.model, a.name
"""

ASSIGNMENT_BY_NAME = f"""
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
     WITH ORDINALITY AS k(project, kind, model, name, at, known, i)
JOIN rm.assignments a ON a.project = k.project AND a.kind = k.kind AND a.model = k.model
                     AND a.name = k.name
WHERE {ASSIGNMENT_AT}
"""

# Every interval an alias or deployment held, as believed at `known` (default now).
ASSIGNMENT_HISTORY = """
SELECT k.i, a.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS k(project, kind, model, name, known, i)
JOIN rm.assignments a ON a.project = k.project AND a.kind = k.kind AND a.model = k.model
                     AND (k.name IS NULL OR a.name = k.name)
WHERE CASE WHEN k.known IS NULL THEN a.recorded_to IS NULL
           ELSE a.recorded_from <= k.known AND (a.recorded_to IS NULL OR k.known < a.recorded_to) END
ORDER BY k.i, a.valid_from, a.name
"""

# The distinct param, metric and tag keys of a project's runs: a loose index scan (one index
# probe per key, on the `(project, key, ...)` indexes of 0004 and 0006), not a scan of the rows.
_KEYS_OF = """
    SELECT '{kind}' AS kind, x.key FROM (
        WITH RECURSIVE walk(key) AS (
            (SELECT t.key FROM {table} t WHERE t.project = k.project ORDER BY t.key LIMIT 1)
            UNION ALL
            SELECT (SELECT t.key FROM {table} t WHERE t.project = k.project AND t.key > w.key
                    ORDER BY t.key LIMIT 1)
            FROM walk w WHERE w.key IS NOT NULL
        ) SELECT walk.key FROM walk WHERE walk.key IS NOT NULL LIMIT k.lim
    ) x
"""
RUN_KEYS = f"""
SELECT k.i, x.kind, x.key FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS k(project, lim, i)
CROSS JOIN LATERAL (
    {_KEYS_OF.format(kind="param", table="rm.run_params")}
    UNION ALL {_KEYS_OF.format(kind="metric", table="rm.run_metrics")}
    UNION ALL {_KEYS_OF.format(kind="tag", table="rm.run_tags")}
) x
ORDER BY k.i, x.kind, x.key
"""


def _columns(keys: Sequence[Key]) -> list[list[Any]]:
    return [list(col) for col in zip(*keys, strict=True)]


class Loaders:
    """The request's DataLoaders, each made on first use."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def _one(self, sql: str) -> DataLoader[Key, Record | None]:
        async def load(keys: list[Key]) -> list[Record | None]:
            out: list[Record | None] = [None] * len(keys)
            for row in await self.pool.fetch(sql, *_columns(keys)):
                out[row["i"] - 1] = row
            return out

        return DataLoader(load_fn=load)

    def _many(self, sql: str) -> DataLoader[Key, list[Record]]:
        async def load(keys: list[Key]) -> list[list[Record]]:
            out: list[list[Record]] = [[] for _ in keys]
            for row in await self.pool.fetch(sql, *_columns(keys)):
                out[row["i"] - 1].append(row)
            return out

        return DataLoader(load_fn=load)

    # One row per key ---------------------------------------------------------------------
    @cached_property
    def project(self) -> DataLoader[Key, Record | None]:
        return self._one(PROJECTS)

    @cached_property
    def run(self) -> DataLoader[Key, Record | None]:
        """(project, run_id)"""
        return self._one(RUNS)

    @cached_property
    def dataset(self) -> DataLoader[Key, Record | None]:
        """(project, name)"""
        return self._one(DATASETS)

    @cached_property
    def dataset_version(self) -> DataLoader[Key, Record | None]:
        """(project, dataset, version)"""
        return self._one(DATASET_VERSIONS)

    @cached_property
    def model(self) -> DataLoader[Key, Record | None]:
        """(project, name)"""
        return self._one(MODELS)

    @cached_property
    def model_version(self) -> DataLoader[Key, Record | None]:
        """(project, model, number)"""
        return self._one(MODEL_VERSIONS)

    @cached_property
    def assignment_by_name(self) -> DataLoader[Key, Record | None]:
        """(project, kind, model, name, asOf, knownAt)"""
        return self._one(ASSIGNMENT_BY_NAME)

    @cached_property
    def code_diff(self) -> DataLoader[Key, Record | None]:
        """(project, run subject)"""
        return self._one(CODE_DIFFS)

    # Lists per key -----------------------------------------------------------------------
    @cached_property
    def params(self) -> DataLoader[Key, list[Record]]:
        return self._many(PARAMS)

    @cached_property
    def tags(self) -> DataLoader[Key, list[Record]]:
        return self._many(TAGS)

    @cached_property
    def metrics(self) -> DataLoader[Key, list[Record]]:
        return self._many(METRICS)

    @cached_property
    def metric_history(self) -> DataLoader[Key, list[Record]]:
        """(project, run_id, key, step_from, step_to, after_step, after_position, limit, every)"""
        return self._many(METRIC_HISTORY)

    @cached_property
    def metric_buckets(self) -> DataLoader[Key, list[Record]]:
        """(project, run_id, key, step_from, step_to, buckets)"""
        return self._many(METRIC_BUCKETS)

    @cached_property
    def inputs(self) -> DataLoader[Key, list[Record]]:
        """(project, run node)"""
        return self._many(INPUTS)

    @cached_property
    def outputs(self) -> DataLoader[Key, list[Record]]:
        return self._many(OUTPUTS)

    @cached_property
    def run_model_versions(self) -> DataLoader[Key, list[Record]]:
        return self._many(RUN_MODEL_VERSIONS)

    @cached_property
    def reruns(self) -> DataLoader[Key, list[Record]]:
        """(project, run node): the runs that re-ran it, with the edge type."""
        return self._many(RERUNS)

    @cached_property
    def rerun_sources(self) -> DataLoader[Key, list[Record]]:
        """(project, run node): the run it re-ran, with the edge type."""
        return self._many(RERUN_SOURCES)

    @cached_property
    def dataset_versions_page(self) -> DataLoader[Key, list[Record]]:
        """(project, dataset, before number, limit)"""
        return self._many(DATASET_VERSIONS_PAGE)

    @cached_property
    def derived_children(self) -> DataLoader[Key, list[Record]]:
        return self._many(DERIVED_CHILDREN)

    @cached_property
    def consumers_page(self) -> DataLoader[Key, list[Record]]:
        """(project, dataset version node, after run node, limit)"""
        return self._many(CONSUMERS_PAGE)

    @cached_property
    def model_versions_page(self) -> DataLoader[Key, list[Record]]:
        """(project, model, before number, limit)"""
        return self._many(MODEL_VERSIONS_PAGE)

    @cached_property
    def project_datasets_page(self) -> DataLoader[Key, list[Record]]:
        return self._many(PROJECT_DATASETS_PAGE)

    @cached_property
    def project_models_page(self) -> DataLoader[Key, list[Record]]:
        return self._many(PROJECT_MODELS_PAGE)

    @cached_property
    def project_runs_page(self) -> DataLoader[Key, list[Record]]:
        """(project, after started_at, after run_id, limit)"""
        return self._many(PROJECT_RUNS_PAGE)

    @cached_property
    def approvals(self) -> DataLoader[Key, list[Record]]:
        """(project, model, version, asOf, knownAt)"""
        return self._many(APPROVALS)

    @cached_property
    def annotations(self) -> DataLoader[Key, list[Record]]:
        """(project, subject)"""
        return self._many(ANNOTATIONS)

    @cached_property
    def openlineage_facets(self) -> DataLoader[Key, list[Record]]:
        """(project, node): `run:<id>` or `dataset:<name>`"""
        return self._many(OPENLINEAGE_FACETS)

    @cached_property
    def assignments_of_version(self) -> DataLoader[Key, list[Record]]:
        """(project, kind, model, version, asOf, knownAt)"""
        return self._many(ASSIGNMENTS_OF_VERSION)

    @cached_property
    def assignments_of_model(self) -> DataLoader[Key, list[Record]]:
        """(project, kind, model, asOf, knownAt)"""
        return self._many(ASSIGNMENTS_OF_MODEL)

    @cached_property
    def assignments_of_project(self) -> DataLoader[Key, list[Record]]:
        """(project, kind, asOf, knownAt)"""
        return self._many(ASSIGNMENTS_OF_PROJECT)

    @cached_property
    def assignment_history(self) -> DataLoader[Key, list[Record]]:
        """(project, kind, model, name or None for all, knownAt)"""
        return self._many(ASSIGNMENT_HISTORY)

    @cached_property
    def run_keys(self) -> DataLoader[Key, list[Record]]:
        """(project, limit per kind)"""
        return self._many(RUN_KEYS)

"""PostgreSQL side of the projection: load the state a batch needs, write its row changes.

Every statement here names read-model tables without a schema: connections set
`search_path = rm, public` (or `rm_new, public` during a rebuild), so the same code fills either.
One statement per table per batch: COPY for metric chunks, array-unnest or executemany for the rest.
"""

from __future__ import annotations

import io
import logging
import struct
import sys
from array import array
from typing import Any

import orjson

from studbook_server.adapters.postgres import (
    Connection,
    failure_kind,
    read_events,
    store_lock,
    stored_event,
)
from studbook_server.domain import chain
from studbook_server.domain.contract import encode_event
from studbook_server.domain.projection import (
    Assignment,
    Changes,
    MetricPoints,
    State,
    StateKeys,
    StoredEvent,
    micros,
    project,
    state_keys,
)

log = logging.getLogger(__name__)


async def load_state(con: Connection, keys: StateKeys) -> State:
    state = State()
    if keys.dataset_versions:
        p, d, v = zip(*keys.dataset_versions, strict=True)
        rows = await con.fetch(
            """SELECT dv.project, dv.dataset, dv.version, dv.digest FROM dataset_versions dv
               JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(project, dataset, version)
                 USING (project, dataset, version)""",
            list(p), list(d), list(v),
        )  # fmt: skip
        state.dataset_version_digests = {(r[0], r[1], r[2]): r[3] for r in rows}
    if keys.datasets:
        p, d = zip(*keys.datasets, strict=True)
        rows = await con.fetch(
            """SELECT k.project, k.dataset,
                      (SELECT max(number) FROM dataset_versions dv
                        WHERE dv.project = k.project AND dv.dataset = k.dataset)
               FROM unnest($1::text[], $2::text[]) AS k(project, dataset)""",
            list(p), list(d),
        )  # fmt: skip
        state.dataset_numbers = {(r[0], r[1]): r[2] or 0 for r in rows}
        rows = await con.fetch(_LATEST_VERSIONS, list(p), list(d))
        state.dataset_latest = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    if keys.reads:
        p, r, d = zip(*keys.reads, strict=True)
        rows = await con.fetch(_READS, list(p), list(r), list(d))
        state.reads = {(row[0], row[1], row[2]): row[3] for row in rows}
    if keys.models:
        p, m = zip(*keys.models, strict=True)
        rows = await con.fetch(
            """SELECT k.project, k.model,
                      (SELECT max(number) FROM model_versions mv
                        WHERE mv.project = k.project AND mv.model = k.model)
               FROM unnest($1::text[], $2::text[]) AS k(project, model)""",
            list(p), list(m),
        )  # fmt: skip
        state.model_numbers = {(r[0], r[1]): r[2] or 0 for r in rows}
    if keys.model_versions:
        p, m, n = zip(*keys.model_versions, strict=True)
        rows = await con.fetch(
            """SELECT mv.project, mv.model, mv.number, mv.event_id::text FROM model_versions mv
               JOIN unnest($1::text[], $2::text[], $3::int[]) AS k(project, model, number)
                 USING (project, model, number)""",
            list(p), list(m), list(n),
        )  # fmt: skip
        state.versions_taken = {(r[0], r[1], r[2]): r[3] for r in rows}
    if keys.assignments:
        p, kind, m, n = zip(*keys.assignments, strict=True)
        rows = await con.fetch(
            """SELECT a.* FROM assignments a
               JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(project, kind, model, name)
                 USING (project, kind, model, name)
               WHERE a.recorded_to IS NULL""",
            list(p), list(kind), list(m), list(n),
        )  # fmt: skip
        for r in rows:
            a = Assignment(**{f: r[f] for f in Assignment.__slots__})
            state.assignments.setdefault((a.project, a.kind, a.model, a.name), []).append(a)
    return state


# Each dataset's highest-numbered version (an index scan backwards on (project, dataset, number)).
_LATEST_VERSIONS = """
SELECT k.project, k.dataset, dv.version, dv.digest
FROM unnest($1::text[], $2::text[]) AS k(project, dataset)
CROSS JOIN LATERAL (
    SELECT version, digest FROM dataset_versions dv
    WHERE dv.project = k.project AND dv.dataset = k.dataset ORDER BY number DESC LIMIT 1
) dv
"""

# The version of a dataset each run read (its input edges from the dataset's versions; a dataset
# name holds no `@`, a version id neither, so the prefix names exactly that dataset's versions).
_READS = """
SELECT k.project, k.run_id, k.dataset, substr(e.src, length(k.prefix) + 1)
FROM (SELECT project, run_id, dataset, 'dataset_version:' || dataset || '@' AS prefix
      FROM unnest($1::text[], $2::text[], $3::text[]) AS u(project, run_id, dataset)) k
JOIN lineage_edges e ON e.project = k.project AND e.dst = 'run:' || k.run_id
                    AND e.edge_type = 'input' AND starts_with(e.src, k.prefix)
"""


_UPSERT_PROJECT = """
INSERT INTO projects AS t (project, description, created_by, created_at, recorded_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (project) DO {}
"""
_EXPLICIT = """UPDATE SET description = EXCLUDED.description, created_by = EXCLUDED.created_by,
                   created_at = EXCLUDED.created_at, recorded_at = EXCLUDED.recorded_at"""

_UPSERT_DATASET = """
INSERT INTO datasets AS t (project, name, description, uri, created_by, created_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (project, name) DO {}
"""
_EXPLICIT_DATASET = """UPDATE SET description = EXCLUDED.description, uri = EXCLUDED.uri,
    created_by = EXCLUDED.created_by, created_at = EXCLUDED.created_at,
    recorded_at = EXCLUDED.recorded_at"""

_UPSERT_MODEL = """
INSERT INTO models AS t (project, name, description, created_by, created_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (project, name) DO {}
"""

_RUN_STARTED = """
INSERT INTO runs AS t (project, run_id, name, experiment, parent_run, status, actor, started_at,
                       recorded_at, code, git_commit, environment)
VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9, $10, $11)
ON CONFLICT (project, run_id) DO UPDATE SET
    recorded_at = LEAST(t.recorded_at, EXCLUDED.recorded_at),
    name = EXCLUDED.name, experiment = EXCLUDED.experiment, parent_run = EXCLUDED.parent_run,
    actor = EXCLUDED.actor, started_at = EXCLUDED.started_at, code = EXCLUDED.code,
    git_commit = EXCLUDED.git_commit, environment = EXCLUDED.environment
"""

_RUN_FINISHED = """
INSERT INTO runs AS t (project, run_id, status, actor, finished_at, recorded_at, error)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (project, run_id) DO UPDATE SET
    recorded_at = LEAST(t.recorded_at, EXCLUDED.recorded_at),
    status = EXCLUDED.status, finished_at = EXCLUDED.finished_at, error = EXCLUDED.error
"""

# Values travel as JSON text: a JSON null must stay a value, not become an SQL NULL.
_PARAMS = """
INSERT INTO run_params (project, run_id, key, value)
SELECT p, r, k, v::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(p, r, k, v)
ON CONFLICT (project, run_id, key) DO UPDATE SET value = EXCLUDED.value
"""

_TAGS_SET = """
INSERT INTO run_tags (project, run_id, key, value)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (project, run_id, key) DO UPDATE SET value = EXCLUDED.value
"""

_TAGS_REMOVED = """
DELETE FROM run_tags t USING unnest($1::text[], $2::text[], $3::text[]) AS k(project, run_id, key)
WHERE t.project = k.project AND t.run_id = k.run_id AND t.key = k.key
"""

# The newest point wins by (step, time, position); min, max and count merge.
_METRICS = """
INSERT INTO run_metrics AS t (project, run_id, key, value, step, at, position, min_value,
                              max_value, points)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int8[],
                     $6::timestamptz[], $7::int8[], $8::float8[], $9::float8[], $10::int8[])
ON CONFLICT (project, run_id, key) DO UPDATE SET
    value = CASE WHEN (EXCLUDED.step, EXCLUDED.at, EXCLUDED.position) >= (t.step, t.at, t.position)
                 THEN EXCLUDED.value ELSE t.value END,
    at = CASE WHEN (EXCLUDED.step, EXCLUDED.at, EXCLUDED.position) >= (t.step, t.at, t.position)
              THEN EXCLUDED.at ELSE t.at END,
    position = CASE WHEN (EXCLUDED.step, EXCLUDED.at, EXCLUDED.position) >= (t.step, t.at, t.position)
                    THEN EXCLUDED.position ELSE t.position END,
    step = GREATEST(EXCLUDED.step, t.step),
    min_value = LEAST(EXCLUDED.min_value, t.min_value),
    max_value = GREATEST(EXCLUDED.max_value, t.max_value),
    points = t.points + EXCLUDED.points
"""

_OUTPUT = """
INSERT INTO run_outputs (project, run_id, uri, digest, name, dataset, version, produced_at, event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING
"""

_DATASET_VERSION = """
INSERT INTO dataset_versions (project, dataset, version, number, uri, digest, size_bytes, row_count,
                              schema, parents, produced_by_run, created_by, created_at, recorded_at,
                              source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""

_MODEL_VERSION = """
INSERT INTO model_versions (project, model, number, run_id, artifact_uri, digest, framework,
                            signature, description, registered_by, registered_at, recorded_at,
                            event_id, registered_by_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""

_ASSIGNMENT_COLUMNS = [
    "created_position", "part", "project", "kind", "model", "name", "version", "valid_from",
    "valid_to", "recorded_from", "recorded_to", "set_by", "set_event", "target",
]  # fmt: skip

_CLOSE_ASSIGNMENT = """
UPDATE assignments SET recorded_to = $3 WHERE created_position = $1 AND part = $2
"""

_APPROVAL = """
INSERT INTO approvals (event_id, project, model, version, decision, reviewer, comment, evidence,
                       decided_at, recorded_at, claimed_by, reviewer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (event_id) DO NOTHING
"""

_ANNOTATION = """
INSERT INTO annotations (event_id, project, subject, text, labels, author, added_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING
"""

# A version a pipeline reported (dataset.version.reported, dataset.read): no digest.
_DATASET_VERSION_REPORTED = """
INSERT INTO dataset_versions (project, dataset, version, number, uri, size_bytes, row_count,
                              schema, parents, produced_by_run, created_by, created_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""

# A later report of a digest-less version fills in what it adds: the newest schema, row count
# and size win; the first producer and digest stay. A version with a digest is left alone.
_DATASET_VERSION_FILLED = """
UPDATE dataset_versions SET schema = coalesce($4, schema), row_count = coalesce($5, row_count),
    size_bytes = coalesce($6, size_bytes), digest = coalesce(digest, $7),
    produced_by_run = coalesce(produced_by_run, $8)
WHERE project = $1 AND dataset = $2 AND version = $3 AND digest IS NULL
"""

# The newest report of a facet wins: by the OpenLineage event time, then store position.
_FACET = """
INSERT INTO openlineage_facets AS t (project, node, scope, name, value, reported_at, position,
                                     event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (project, node, scope, name) DO UPDATE SET
    value = EXCLUDED.value, reported_at = EXCLUDED.reported_at, position = EXCLUDED.position,
    event_id = EXCLUDED.event_id
WHERE (EXCLUDED.reported_at, EXCLUDED.position) >= (t.reported_at, t.position)
"""

_EDGE = """
INSERT INTO lineage_edges (project, edge_type, src, dst, role, valid_from, recorded_from, event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING
"""

# MLflow's facts (schema/sql/0012_mlflow_registry.sql). The newest store of a path wins.
_ARTIFACT = """
INSERT INTO artifacts AS t (project, path, subject, uri, size_bytes, digest, stored_by, stored_at,
                            recorded_at, event_id, position)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (project, md5(path)) DO UPDATE SET
    subject = EXCLUDED.subject, uri = EXCLUDED.uri, size_bytes = EXCLUDED.size_bytes,
    digest = EXCLUDED.digest, stored_by = EXCLUDED.stored_by, stored_at = EXCLUDED.stored_at,
    recorded_at = EXCLUDED.recorded_at, event_id = EXCLUDED.event_id, position = EXCLUDED.position
WHERE EXCLUDED.position > t.position
"""

_LOGGED_MODEL = """
INSERT INTO logged_models (project, model_id, name, experiment, run_id, artifact_uri, status,
                           model_type, params, tags, created_by, created_at, updated_at,
                           recorded_at, position)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (project, model_id) DO NOTHING
"""

# Tags merge; a null value removes the tag (jsonb_strip_nulls drops it: values are strings). An
# update recorded before the model's creation changes nothing, in whatever batch either lands.
_LOGGED_MODEL_UPDATE = """
UPDATE logged_models SET status = coalesce($3, status),
    tags = CASE WHEN $4::jsonb IS NULL THEN tags ELSE jsonb_strip_nulls(tags || $4::jsonb) END,
    updated_at = GREATEST(updated_at, $5)
WHERE project = $1 AND model_id = $2 AND position < $6
"""

_MODEL_UPDATE = """
UPDATE models SET description = CASE WHEN $4 THEN $3 ELSE description END,
    tags = CASE WHEN $5::jsonb IS NULL THEN tags ELSE jsonb_strip_nulls(tags || $5::jsonb) END,
    deleted_at = CASE WHEN $6 THEN $8 WHEN $7 THEN NULL ELSE deleted_at END,
    updated_at = CASE WHEN $7 THEN updated_at ELSE $8 END
WHERE project = $1 AND name = $2
"""

# Deleting a registered model deletes its versions (those numbered by then).
_MODEL_VERSIONS_DELETED = """
UPDATE model_versions SET deleted_at = $3
WHERE project = $1 AND model = $2 AND number <= $4 AND deleted_at IS NULL
"""

_VERSION_UPDATE = """
UPDATE model_versions SET description = CASE WHEN $5 THEN $4 ELSE description END,
    tags = CASE WHEN $6::jsonb IS NULL THEN tags ELSE jsonb_strip_nulls(tags || $6::jsonb) END,
    stage = coalesce($7, stage),
    deleted_at = CASE WHEN $8 THEN $9 ELSE deleted_at END,
    updated_at = $9
WHERE project = $1 AND model = $2 AND number = $3
"""

# MLflow tracking (schema/sql/0011_mlflow_tracking.sql).
_EXPERIMENT = """
INSERT INTO experiments (project, experiment_id, name, artifact_location, tags, created_by,
                         created_at, updated_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
ON CONFLICT (project, experiment_id) DO NOTHING
"""

# Tags merge; a null value removes the tag (jsonb_strip_nulls drops it: values are strings).
_EXPERIMENT_UPDATE = """
UPDATE experiments SET name = coalesce($3, name),
    lifecycle_stage = coalesce($4, lifecycle_stage),
    deleted_at = CASE WHEN $4::text = 'deleted' THEN $6::timestamptz
                      WHEN $4::text = 'active' THEN NULL ELSE deleted_at END,
    tags = CASE WHEN $5::jsonb IS NULL THEN tags ELSE jsonb_strip_nulls(tags || $5::jsonb) END,
    updated_at = GREATEST(updated_at, $6::timestamptz)
WHERE project = $1 AND experiment_id = $2
"""

_RUN_LIFECYCLE = """
INSERT INTO run_lifecycle AS t (project, run_id, lifecycle_stage, changed_at, position)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (project, run_id) DO UPDATE SET
    lifecycle_stage = EXCLUDED.lifecycle_stage, changed_at = EXCLUDED.changed_at,
    position = EXCLUDED.position
WHERE EXCLUDED.position > t.position
"""

_DEAD_LETTER = """
INSERT INTO public.dead_letters (event_id, position, source, reason, raw)
VALUES ($1, $2, 'store', $3, $4)
ON CONFLICT (position) WHERE position IS NOT NULL DO NOTHING
"""


# ---------------------------------------------------------------------------- metric chunks

# Points per sealed chunk (schema/sql/0010_metric_chunks.sql converts existing points with the
# same number). Big enough that the arrays are compressed and the row overhead (~100 bytes with
# its index entries) is a fraction of a byte per point; small enough that sealing a tail reads
# back little. bench/metric_storage.py measures the choice.
CHUNK_POINTS = 1024
# Points per tail row: the points past a series' last sealed chunk are kept in rows of the
# ordinals [k*32, (k+1)*32), the last one partial (schema/sql/0013_metric_tail_rows.sql). A
# batch rewrites at most that partial row per series, small enough to stay uncompressed; one
# row per event instead cost a row, and its COPY, per point for the common one-point events.
TAIL_POINTS = 32

# Each series' id and how many points it has so far (its ordinals go on from there), and the
# highest id, for the series this batch starts.
_SERIES = """
SELECT k.i, s.id, coalesce(m.points, 0), (SELECT coalesce(max(id), 0) FROM metric_series)
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(project, run_id, key, i)
LEFT JOIN metric_series s ON s.project = k.project AND s.run_id = k.run_id AND s.key = k.key
LEFT JOIN run_metrics m ON m.project = k.project AND m.run_id = k.run_id AND m.key = k.key
"""

_NEW_SERIES = """
INSERT INTO metric_series (id, project, run_id, key)
SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])
"""

# The tail rows of the series this batch seals: read back and replaced by a sealed chunk.
_TAKE_TAILS = """
DELETE FROM metric_chunks c USING unnest($1::int8[], $2::int8[]) AS k(id, seq)
WHERE c.series_id = k.id AND c.seq >= k.seq
RETURNING c.series_id, c.seq, c.steps, c.vals, c.ats, c.positions
"""

_CHUNK_COLUMNS = [
    "series_id", "seq", "n", "step_min", "step_max", "value_min", "value_max", "last_value",
    "position_min", "position_max", "steps", "vals", "ats", "positions",
]  # fmt: skip

Chunk = tuple[int, int, list[int], list[float], list[int], list[int]]


def _chunk(
    series_id: int, seq: int, steps: list[int], values: list[float], ats: list[int],
    positions: list[int],
) -> tuple[Any, ...]:  # fmt: skip
    """One rm.metric_chunks row (times in microseconds since the Unix epoch). Positions never
    decrease along a series, so the latest point (by step, then position, then order) is the
    last one holding the highest step."""
    top = max(steps)
    last = len(steps) - 1 if steps[-1] == top else len(steps) - 1 - steps[::-1].index(top)
    return (
        series_id, seq, len(steps), min(steps), top, min(values), max(values), values[last],
        positions[0], positions[-1], steps, values, ats, positions,
    )  # fmt: skip


def cut_chunks(
    series_id: int,
    first: int,
    steps: list[int],
    values: list[float],
    ats: list[int],
    positions: list[int],
    size: int = CHUNK_POINTS,
    tail: int = TAIL_POINTS,
) -> list[tuple[Any, ...]]:
    """The chunk rows of a series' points from ordinal ``first`` on, when the points before
    ``first`` are in rows of their own: a sealed chunk for each ``size`` points from a multiple
    of ``size``, and the rest in tail rows that end at multiples of ``tail`` (a divisor of
    ``size``), the last one partial."""
    rows: list[tuple[Any, ...]] = []
    n = len(steps)
    i = 0
    ordinal = first
    while i < n:
        if ordinal % size == 0 and n - i >= size:
            j = i + size
        else:
            j = i + min(n - i, tail - ordinal % tail)
        rows.append(_chunk(series_id, ordinal, steps[i:j], values[i:j], ats[i:j], positions[i:j]))
        ordinal += j - i
        i = j
    return rows


# Binary COPY, built here: asyncpg's generic encoder checks every array element's type, which
# cost more than everything else in a metric batch. See
# https://www.postgresql.org/docs/current/sql-copy.html (binary format) and array_send.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_ROW_HEAD = struct.Struct(">h" + "iq" * 2 + "ii" + "iq" * 2 + "id" * 3 + "iq" * 2)
_ARRAY_HEAD = struct.Struct(">iiiiii")
_INT8, _FLOAT8, _TIMESTAMPTZ = 20, 701, 1184
# timestamptz on the wire: microseconds since 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_SWAP = sys.byteorder == "little"


# Packing formats of short arrays (header and n elements of length 8), by (typecode, n): a tail
# row holds at most TAIL_POINTS points, for which one struct call is about 4x faster than the
# byte-interleaving below (measured at 1-32 elements).
_SHORT_ARRAY = TAIL_POINTS
_SHORT_FORMATS: dict[tuple[str, int], struct.Struct] = {}


def _array(oid: int, typecode: str, items: list[int] | list[float]) -> bytes:
    """A one-dimensional array without nulls of 8-byte elements, as `array_send` writes it."""
    n = len(items)
    if n <= _SHORT_ARRAY:
        packer = _SHORT_FORMATS.get((typecode, n))
        if packer is None:
            packer = _SHORT_FORMATS[(typecode, n)] = struct.Struct(">6i" + f"i{typecode}" * n)
        fields: list[Any] = [8] * (2 * n)
        fields[1::2] = items
        return packer.pack(20 + 12 * n, 1, 0, oid, n, 1, *fields)
    raw = array(typecode, items)
    if _SWAP:
        raw.byteswap()
    data = raw.tobytes()
    out = bytearray(12 * n)
    out[3::12] = b"\x08" * n  # each element's length, 8, as a big-endian int32
    for k in range(8):
        out[4 + k :: 12] = data[k::8]
    return _ARRAY_HEAD.pack(20 + 12 * n, 1, 0, oid, n, 1) + out


def _copy_data(rows: list[tuple[Any, ...]]) -> bytes:
    parts = [_COPY_HEADER]
    for r in rows:
        head = _ROW_HEAD.pack(
            14, 8, r[0], 8, r[1], 4, r[2], 8, r[3], 8, r[4], 8, r[5], 8, r[6], 8, r[7],
            8, r[8], 8, r[9],
        )  # fmt: skip
        parts.append(head)
        parts.append(_array(_INT8, "q", r[10]))
        parts.append(_array(_FLOAT8, "d", r[11]))
        parts.append(_array(_TIMESTAMPTZ, "q", [us - _PG_EPOCH_US for us in r[12]]))
        parts.append(_array(_INT8, "q", r[13]))
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


async def write_metric_points(con: Connection, points: MetricPoints) -> None:
    """Append a batch's points to rm.metric_chunks (see schema/sql/0010_metric_chunks.sql and
    0013_metric_tail_rows.sql).

    The layout depends only on each series' points in logged order: a series whose tail reaches
    a full chunk in this batch has its tail rows read back, deleted and written sealed; any other
    series with a partial tail row has that row read back and written again with the new points
    (at most ``TAIL_POINTS`` - 1 of them, uncompressed). Nothing compressed is ever rewritten.
    Runs before the rm.run_metrics upsert, whose `points` say where each series stands.
    """
    keys = list(points)
    p, r, k = (list(c) for c in zip(*keys, strict=True))
    found = await con.fetch(_SERIES, p, r, k)
    found.sort(key=lambda row: row[0])
    top = found[0][3] if found else 0
    new_ids: list[int] = []
    ids: list[int] = []
    totals: list[int] = []
    for row in found:
        sid = row[1]
        if sid is None:
            top += 1
            sid = top
            new_ids.append(len(ids))
        ids.append(sid)
        totals.append(row[2])
    if new_ids:
        await con.execute(
            _NEW_SERIES,
            [ids[i] for i in new_ids], [p[i] for i in new_ids], [r[i] for i in new_ids],
            [k[i] for i in new_ids],
        )  # fmt: skip
    size, tail = CHUNK_POINTS, TAIL_POINTS
    taking: list[int] = []  # indexes of series whose tail rows this batch reads back
    take_from: list[int] = []  # the ordinal from which they are taken
    for i, key in enumerate(keys):
        total = totals[i]
        chunk_start = total // size * size
        if total > chunk_start and total + len(points[key].steps) >= chunk_start + size:
            taking.append(i)  # sealed by this batch: every tail row
            take_from.append(chunk_start)
        elif total % tail:
            taking.append(i)  # the partial tail row (rows from before it stay)
            take_from.append(total // tail * tail)
    tails: dict[int, list[Any]] = {}
    if taking:
        taken = await con.fetch(_TAKE_TAILS, [ids[i] for i in taking], take_from)
        for row in sorted(taken, key=lambda t: (t[0], t[1])):
            tails.setdefault(row[0], []).append(row)
    records: list[tuple[Any, ...]] = []
    for i, key in enumerate(keys):
        sp = points[key]
        sid, total = ids[i], totals[i]
        old = tails.get(sid)
        if old:
            steps: list[int] = []
            values: list[float] = []
            ats: list[int] = []
            positions: list[int] = []
            for row in old:
                steps.extend(row[2])
                values.extend(row[3])
                ats.extend([micros(at) for at in row[4]])
                positions.extend(row[5])
            first = old[0][1]
            records += cut_chunks(
                sid, first, steps + sp.steps, values + sp.values, ats + sp.ats,
                positions + sp.positions, size,
            )  # fmt: skip
        else:
            records += cut_chunks(sid, total, sp.steps, sp.values, sp.ats, sp.positions, size)
    await con.copy_to_table(
        "metric_chunks",
        source=io.BytesIO(_copy_data(records)),  # bytes would be read as a file name
        columns=_CHUNK_COLUMNS,
        schema_name=await _schema(con),
        format="binary",
    )


def _columns(rows: list[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(n)]


async def _upsert_named(
    con: Connection, sql: str, explicit_sql: str, rows: list[tuple[Any, ...]]
) -> None:
    implicit = [r[:-1] for r in rows if not r[-1]]
    explicit = [r[:-1] for r in rows if r[-1]]
    if implicit:
        await con.executemany(sql.format("NOTHING"), implicit)
    if explicit:
        await con.executemany(sql.format(explicit_sql), explicit)


async def write_changes(con: Connection, ch: Changes) -> None:
    """Write one batch's changes. Runs inside the caller's transaction."""
    await _upsert_named(con, _UPSERT_PROJECT, _EXPLICIT, list(ch.projects.values()))
    await _upsert_named(con, _UPSERT_DATASET, _EXPLICIT_DATASET, list(ch.datasets.values()))
    await _upsert_named(con, _UPSERT_MODEL, _EXPLICIT, list(ch.models.values()))
    if ch.runs_started:
        await con.executemany(_RUN_STARTED, ch.runs_started)
    if ch.runs_finished:
        await con.executemany(_RUN_FINISHED, ch.runs_finished)
    if ch.params:
        params = [(p, r, k, orjson.dumps(v).decode()) for p, r, k, v in ch.params.values()]
        await con.execute(_PARAMS, *_columns(params, 4))
    if ch.tags_removed:
        await con.execute(_TAGS_REMOVED, *_columns(sorted(ch.tags_removed), 3))
    if ch.tags_set:
        await con.execute(_TAGS_SET, *_columns(list(ch.tags_set.values()), 4))
    if ch.metric_points:
        await write_metric_points(con, ch.metric_points)
    if ch.metric_summaries:
        rows = [
            (*k, m.value, m.step, m.at, m.position, m.min_value, m.max_value, m.points)
            for k, m in ch.metric_summaries.items()
        ]
        await con.execute(_METRICS, *_columns(rows, 10))
    if ch.outputs:
        await con.executemany(_OUTPUT, ch.outputs)
    if ch.dataset_versions:
        await con.executemany(_DATASET_VERSION, ch.dataset_versions)
    if ch.dataset_versions_reported:
        await con.executemany(_DATASET_VERSION_REPORTED, ch.dataset_versions_reported)
    if ch.dataset_versions_filled:  # after the inserts: a version may be made and filled in a batch
        await con.executemany(_DATASET_VERSION_FILLED, ch.dataset_versions_filled)
    if ch.model_versions:
        await con.executemany(_MODEL_VERSION, ch.model_versions)
    if ch.assignments_new:
        await con.copy_records_to_table(
            "assignments",
            records=[tuple(getattr(a, c) for c in _ASSIGNMENT_COLUMNS) for a in ch.assignments_new],
            columns=_ASSIGNMENT_COLUMNS,
            schema_name=await _schema(con),
        )
    if ch.assignments_closed:  # after the inserts: a row may be made and closed in one batch
        await con.executemany(_CLOSE_ASSIGNMENT, ch.assignments_closed)
    if ch.approvals:
        await con.executemany(_APPROVAL, ch.approvals)
    if ch.annotations:
        await con.executemany(_ANNOTATION, ch.annotations)
    if ch.artifacts:
        await con.executemany(_ARTIFACT, list(ch.artifacts.values()))
    if ch.logged_models:
        await con.executemany(_LOGGED_MODEL, ch.logged_models)
    if ch.logged_model_updates:  # after the inserts, in event order
        await con.executemany(_LOGGED_MODEL_UPDATE, ch.logged_model_updates)
    if ch.model_updates:
        await con.executemany(_MODEL_UPDATE, [r[:8] for r in ch.model_updates])
    if ch.version_updates:
        await con.executemany(_VERSION_UPDATE, ch.version_updates)
    if ch.model_updates:  # after the versions' own updates: a deletion wins
        deleted = [(r[0], r[1], r[7], r[8]) for r in ch.model_updates if r[5]]
        if deleted:
            await con.executemany(_MODEL_VERSIONS_DELETED, deleted)
    if ch.experiments:
        await con.executemany(_EXPERIMENT, ch.experiments)
    if ch.experiment_updates:  # after the inserts, in event order
        await con.executemany(_EXPERIMENT_UPDATE, ch.experiment_updates)
    if ch.run_lifecycle:  # in event order; the newest position wins
        await con.executemany(_RUN_LIFECYCLE, ch.run_lifecycle)
    if ch.edges:
        await con.executemany(_EDGE, list(ch.edges.values()))
    if ch.facets:
        await con.executemany(_FACET, list(ch.facets.values()))
    for redaction in ch.redactions:
        await _redact(con, redaction.event, redaction.fields, redaction.reason)
    if ch.rejected:
        await con.executemany(
            _DEAD_LETTER,
            [
                (s.event.event_id, s.position, reason, encode_event(s.event))
                for s, reason in ch.rejected
            ],
        )
        for s, reason in ch.rejected:
            log.warning(
                "dead-lettered event %s at position %d: %s", s.event.event_id, s.position, reason
            )
    if ch.last_position:
        await con.execute(
            "UPDATE checkpoint SET position = GREATEST(position, $1)", ch.last_position
        )


async def _schema(con: Connection) -> str:
    """The read-model schema this connection writes to (first on its search_path)."""
    name: str = await con.fetchval("SELECT current_schema()")
    return name


_SUBJECT_ROWS = """
SELECT position, hash_version, payload, salts, redacted FROM public.events
WHERE project = $1 AND subject = $2 AND position < $3 ORDER BY position FOR UPDATE
"""

_ERASE = """
UPDATE public.events SET payload = $2, salts = $3, redacted = $4, redacted_by = $5::uuid
WHERE position = $1
"""


def _erase(payload: dict[str, Any], steps: list[str]) -> bool:
    """Remove the value at ``steps`` (object keys) from ``payload``; whether it was there."""
    node: Any = payload
    for step in steps[:-1]:
        node = node.get(step) if isinstance(node, dict) else None
    if isinstance(node, dict) and steps[-1] in node:
        del node[steps[-1]]
        return True
    return False


async def _redact(con: Connection, s: StoredEvent, fields: tuple[str, ...], reason: str) -> None:
    """Erase payload fields of the subject's earlier events; keep ids, types and lineage.

    A hash-version-2 row keeps each erased leaf's commitment (with the redaction's event id)
    and loses its salt, so the row still verifies and the value cannot be guessed back. The
    subject's dead letters are scrubbed the same way. Re-applying (on a rebuild) finds nothing
    left to erase.
    """
    e = s.event
    pointers = [chain.dotted_pointer(f) for f in fields]
    for row in await con.fetch(_SUBJECT_ROWS, e.project, e.subject, s.position):
        payload = row["payload"]
        leaves = chain.leaves(payload)
        hit = [p for p in leaves if any(chain.covers(ptr, p) for ptr in pointers)]
        if not hit:
            continue
        salts = dict(row["salts"] or {})
        redacted = dict(row["redacted"] or {})
        if row["hash_version"] >= 2:
            for p in hit:
                redacted[p] = [chain.commitment(salts.pop(p), p, leaves[p]), e.event_id]
        for f in fields:
            _erase(payload, f.split("."))
        await con.execute(
            _ERASE, row["position"], payload, salts or None, redacted or None, e.event_id
        )
    await _scrub_dead_letters(con, s, fields)
    # The events it covers (the subject's earlier events), not the rows an UPDATE touched: on a
    # rebuild the rows are already redacted, and the count must come out the same.
    count = await con.fetchval(
        "SELECT count(*) FROM public.events WHERE project = $1 AND subject = $2 AND position < $3",
        e.project, e.subject, s.position,
    )  # fmt: skip
    await con.execute(
        """INSERT INTO redactions (event_id, project, subject, fields, reason, redacted_by,
                                   redacted_at, events_redacted)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING""",
        e.event_id, e.project, e.subject, list(fields), reason, s.who, e.occurred_at, count,
    )  # fmt: skip
    if e.subject_kind == "run":
        # Re-derive the run's descriptive columns from its (now redacted) start event.
        rows = await con.fetch(
            """SELECT position, event_id::text, type, schema_version, project, subject,
                      principal_id, principal, actor, occurred_at, recorded_at, correlation_id,
                      causation_id, producer, payload
               FROM public.events WHERE project = $1 AND subject = $2 AND type = 'run.started'
               ORDER BY position""",
            e.project, e.subject,
        )  # fmt: skip
        for row in rows:
            started = stored_event(row)
            ch = project([started], State())
            await con.executemany(_RUN_STARTED, ch.runs_started)


async def _scrub_dead_letters(con: Connection, s: StoredEvent, fields: tuple[str, ...]) -> None:
    """Erase the same fields from the subject's dead letters (their raw copies)."""
    e = s.event
    rows = await con.fetch(
        "SELECT id, raw FROM public.dead_letters WHERE position IS NULL OR position < $1",
        s.position,
    )
    for row in rows:
        try:
            doc = orjson.loads(row["raw"])
        except orjson.JSONDecodeError:
            continue  # not JSON: it cannot be attributed to a subject
        if not isinstance(doc, dict) or (doc.get("project"), doc.get("subject")) != (
            e.project,
            e.subject,
        ):
            continue
        payload = doc.get("payload")
        if isinstance(payload, dict) and any([_erase(payload, f.split(".")) for f in fields]):
            await con.execute(
                "UPDATE public.dead_letters SET raw = $2, "
                "reason = reason || ' (fields erased by redaction ' || $3 || ')' WHERE id = $1",
                row["id"], orjson.dumps(doc), e.event_id,
            )  # fmt: skip


async def apply_batch(con: Connection, events: list[StoredEvent]) -> Changes:
    """Project stored events into the read models (inside the caller's transaction)."""
    state = await load_state(con, state_keys(events))
    changes = project(events, state)
    await write_changes(con, changes)
    return changes


async def catch_up(con: Connection, *, batch: int = 5000, until: int | None = None) -> int:
    """Apply stored events past the read models' checkpoint; return how many were applied.

    One transaction per batch, each holding the store lock, so this never interleaves with an
    append-and-project transaction of a Kafka projector or with a rebuild's swap. When a batch
    fails for any reason but a transient one (the connection, a lock timeout), it is applied
    event by event and the event that fails is dead-lettered with its reason and skipped, so no
    event can stall the read models; a transient failure propagates (the caller retries).
    """
    total = 0
    while True:
        events: list[StoredEvent] = []
        try:
            async with con.transaction():
                await store_lock(con)
                after = await con.fetchval("SELECT position FROM checkpoint")
                events = await read_events(con, after, batch)
                if until is not None:
                    events = [e for e in events if e.position <= until]
                if not events:
                    return total
                await apply_batch(con, events)
        except Exception as exc:
            if failure_kind(exc) == "retry" or not events:
                raise
            await _apply_one_by_one(con, events)
        total += len(events)


async def _apply_one_by_one(con: Connection, events: list[StoredEvent]) -> None:
    for stored in events:
        try:
            async with con.transaction():
                await store_lock(con)
                # Re-read under the lock: another tailer may have applied it meanwhile.
                if await con.fetchval("SELECT position FROM checkpoint") >= stored.position:
                    continue
                await apply_batch(con, [stored])
        except Exception as exc:
            if failure_kind(exc) == "retry":
                raise
            reason = f"could not be applied: {type(exc).__name__}: {exc}"
            log.warning("dead-lettered event at position %d: %s", stored.position, reason)
            async with con.transaction():
                await store_lock(con)
                await con.execute(
                    _DEAD_LETTER, stored.event.event_id, stored.position, reason,
                    encode_event(stored.event),
                )  # fmt: skip
                await con.execute(
                    "UPDATE checkpoint SET position = GREATEST(position, $1)", stored.position
                )

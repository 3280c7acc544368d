"""PostgreSQL side of the projection: load the state a batch needs, write its row changes.

Every statement here names read-model tables without a schema: connections set
`search_path = rm, public` (or `rm_new, public` during a rebuild), so the same code fills either.
One statement per table per batch: COPY for metric points, array-unnest or executemany for the rest.
"""

from __future__ import annotations

import logging
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
    State,
    StateKeys,
    StoredEvent,
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

_DEAD_LETTER = """
INSERT INTO public.dead_letters (event_id, position, source, reason, raw)
VALUES ($1, $2, 'store', $3, $4)
ON CONFLICT (position) WHERE position IS NOT NULL DO NOTHING
"""


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
        await con.copy_records_to_table(
            "run_metric_points",
            records=ch.metric_points,
            columns=["project", "run_id", "key", "step", "value", "at", "position"],
            schema_name=await _schema(con),
        )
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

"""PostgreSQL: the pool, migrations, and the event store (append, read, verify)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias

import asyncpg
import orjson

from studbook_server.domain import chain
from studbook_server.domain.contract import Event, schema_dir, upcast
from studbook_server.domain.projection import UNVERIFIED, StoredEvent, StoredPrincipal
from studbook_server.errors import ConfigError

log = logging.getLogger(__name__)

# One advisory lock serialises appends (positions and the hash chain are a single sequence) and
# projection transactions (so `rebuild` can swap read models between two of them).
STORE_LOCK = 0x5354_5544  # "STUD"
READ_MODEL_SCHEMA = "rm"
NOTIFY_CHANNEL = "studbook_events"

Pool: TypeAlias = asyncpg.Pool
Connection: TypeAlias = asyncpg.Connection


FailureKind = Literal["retry", "data", "fatal"]

# SQLSTATE classes: 08 connection, 53 insufficient resources, 57 operator intervention (shutdown,
# statement cancelled or timed out), 58 system error. 40001/40P01: serialisation failure and
# deadlock; 55P03: lock not available. A unique violation (23505) is not among them: appends and
# projections run under the store lock, so one is a fact about the data (or a bug), and retrying
# it would stall the pipeline forever.
_RETRY_CLASSES = frozenset({"08", "53", "57", "58"})
_RETRY_STATES = frozenset({"40001", "40P01", "55P03"})
# 22 data exception, 23 integrity constraint violation, 54 program limit exceeded: the data.
_DATA_CLASSES = frozenset({"22", "23", "54"})


def failure_kind(exc: BaseException) -> FailureKind:
    """What a failed write means: `retry` (nothing is wrong with the data: back off and try the
    same again), `data` (the data broke a statement: find the event and dead-letter it) or
    `fatal` (a bug: let the process fail loudly)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return "retry"
    if isinstance(exc, asyncpg.exceptions.InvalidCachedStatementError):
        return "retry"  # a rebuild swapped the read models under a prepared statement
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state in _RETRY_STATES or state[:2] in _RETRY_CLASSES:
            return "retry"
        if state[:2] in _DATA_CLASSES:
            return "data"
    return "fatal"


# `\u0000` preceded by an even number of backslashes in JSON text: a NUL character, which
# PostgreSQL's text and jsonb cannot hold (an escaped backslash followed by "u0000" is fine).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def contains_nul(encoded: bytes) -> bool:
    """Whether JSON text holds a NUL character, which the store cannot keep."""
    return b"u0000" in encoded and _ESCAPED_NUL.search(encoded) is not None


async def store_lock(con: Connection) -> None:
    """Take the store lock for the rest of the caller's transaction."""
    await con.execute("SELECT pg_advisory_xact_lock($1)", STORE_LOCK)


async def _init_connection(con: Connection) -> None:
    # Binary, so COPY can carry JSON too: jsonb's binary form is a version byte, then the text.
    await con.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        format="binary",
    )
    await con.set_type_codec(
        "json", schema="pg_catalog", encoder=orjson.dumps, decoder=orjson.loads, format="binary"
    )


def _server_settings(search_path: str = READ_MODEL_SCHEMA) -> dict[str, str]:
    return {"search_path": f"{search_path}, public", "application_name": "studbook"}


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 5, statement_timeout_ms: int = 0
) -> Pool:
    """A pool; ``statement_timeout_ms`` > 0 bounds every statement its connections run (the
    server cancels it: SQLSTATE 57014)."""
    if not url:
        raise ConfigError(
            "STUDBOOK_DATABASE_URL is not set: give a postgresql:// URL (see docs/operations.md)"
        )
    settings = _server_settings()
    if statement_timeout_ms > 0:
        settings["statement_timeout"] = str(statement_timeout_ms)
    pool: Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=settings,
        # A connection attempt that hangs (PostgreSQL stopped mid-handshake) gives up.
        timeout=10,
    )
    return pool


async def connect(url: str, search_path: str = READ_MODEL_SCHEMA) -> Connection:
    con: Connection = await asyncpg.connect(url, server_settings=_server_settings(search_path))
    await _init_connection(con)
    return con


# ------------------------------------------------------------------------------- migrations

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, Path]]:
    found = []
    for path in sorted((schema_dir() / "sql").iterdir()):
        m = _MIGRATION.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return found


async def migrate(con: Connection) -> list[int]:
    """Apply pending forward-only migrations, each in its own transaction; return those applied."""
    await con.execute(
        """CREATE TABLE IF NOT EXISTS public.schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    applied: list[int] = []
    for version, path in migration_files():
        async with con.transaction():
            # Serialise concurrent starters: the second waits, then sees the version applied.
            await con.execute("SELECT pg_advisory_xact_lock($1)", STORE_LOCK + 1)
            done = await con.fetchval(
                "SELECT 1 FROM public.schema_migrations WHERE version = $1", version
            )
            if done:
                continue
            await con.execute(path.read_text())
            await con.execute(
                "INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)",
                version,
                path.name,
            )
            applied.append(version)
            log.info("applied migration %s", path.name)
    return applied


# ------------------------------------------------------------------------------ event store


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated event to append: the wire document as sent (its own schema version), the
    same event upcast for projection, and who sent it as the server authenticated them."""

    doc: dict[str, Any]
    event: Event
    # Set only by `import-events`, which restores another store's history as it was recorded.
    recorded_at: datetime | None = None
    principal: StoredPrincipal = UNVERIFIED


_APPEND_HEAD = """
SELECT clock_timestamp() AS now,
       (SELECT position FROM public.events ORDER BY position DESC LIMIT 1) AS position,
       (SELECT chain_hash FROM public.events ORDER BY position DESC LIMIT 1) AS chain_hash
"""

_EXISTING = """
SELECT event_id::text, type, schema_version, occurred_at, actor, project, subject, correlation_id,
       causation_id, producer, payload, redacted IS NOT NULL OR redacted_by IS NOT NULL AS redacted
FROM public.events WHERE event_id = ANY($1::uuid[])
"""


@dataclass(frozen=True, slots=True)
class Conflict:
    """An event whose id is already taken by a different event (stored, or earlier in the same
    append): it is not stored; the caller refuses or dead-letters it."""

    incoming: Incoming
    stored_digest: str
    digest: str

    @property
    def reason(self) -> str:
        return (
            f"event id {self.incoming.event.event_id} is already taken by a different event "
            f"(stored {self.stored_digest}, this one {self.digest}): an event id names one "
            "event; send a new id for a new event"
        )


def body_digest(doc: dict[str, Any], event: Event) -> str:
    """The digest of an event as sent (see :func:`chain.body_digest`)."""
    return chain.body_digest(
        type=event.type, schema_version=int(doc["schema_version"]),
        occurred_at=event.occurred_at, actor=event.actor, project=event.project,
        subject=event.subject, correlation_id=event.correlation_id,
        causation_id=event.causation_id, producer=event.producer, payload=doc["payload"],
    )  # fmt: skip


def _stored_digest(row: asyncpg.Record) -> str:
    return chain.body_digest(
        type=row["type"], schema_version=row["schema_version"], occurred_at=row["occurred_at"],
        actor=row["actor"], project=row["project"], subject=row["subject"],
        correlation_id=row["correlation_id"], causation_id=row["causation_id"],
        producer=row["producer"], payload=row["payload"],
    )  # fmt: skip


_SUBJECT_SEQS = """
SELECT s.project, s.subject,
       (SELECT max(e.subject_seq) FROM public.events e
         WHERE e.project = s.project AND e.subject = s.subject) AS seq
FROM unnest($1::text[], $2::text[]) AS s(project, subject)
"""

EVENT_COLUMNS = [
    "position", "event_id", "type", "schema_version", "project", "subject", "subject_seq",
    "principal_id", "principal", "actor", "occurred_at", "recorded_at", "correlation_id",
    "causation_id", "producer", "payload", "hash_version", "salts", "content_hash", "chain_hash",
]  # fmt: skip


async def _taken(con: Connection | Pool, incoming: Sequence[Incoming]) -> dict[str, str | None]:
    """Stored event ids among ``incoming``'s, each with the digest of the event holding it
    (None: redacted, so any body of that id matches)."""
    rows = await con.fetch(_EXISTING, [i.doc["event_id"] for i in incoming])
    return {r["event_id"]: None if r["redacted"] else _stored_digest(r) for r in rows}


def _split(
    incoming: Sequence[Incoming], seen: dict[str, str | None], conflicts: list[Conflict] | None
) -> list[Incoming]:
    """The events not stored yet, once each; conflicts (same id, other body) into ``conflicts``."""
    fresh: list[Incoming] = []
    taken_here: dict[str, Incoming] = {}  # digests only when an id comes twice (rare)
    for item in incoming:
        eid = item.event.event_id.lower()
        if eid not in seen and eid not in taken_here:
            taken_here[eid] = item
            fresh.append(item)
            continue
        if conflicts is None:
            continue
        first = taken_here.get(eid)
        held = body_digest(first.doc, first.event) if first is not None else seen[eid]
        if held is None:
            continue  # redacted: its stored body no longer shows what was sent
        digest = body_digest(item.doc, item.event)
        if digest != held:
            conflicts.append(Conflict(item, held, digest))
    return fresh


def conflicts_within(incoming: Sequence[Incoming]) -> list[Conflict]:
    """Event ids that ``incoming`` itself uses for two different events (no I/O)."""
    conflicts: list[Conflict] = []
    _split(incoming, {}, conflicts)
    return conflicts


async def find_conflicts(con: Connection | Pool, incoming: Sequence[Incoming]) -> list[Conflict]:
    """The conflicts :func:`append` would find now, without appending (a gateway's early answer;
    only the append under the store lock is final)."""
    conflicts: list[Conflict] = []
    _split(incoming, await _taken(con, incoming), conflicts)
    return conflicts


async def append(
    con: Connection, incoming: Sequence[Incoming], conflicts: list[Conflict] | None = None
) -> list[StoredEvent]:
    """Append the events not stored yet (by event_id) to the store; return them as stored.

    An event whose id is stored (or earlier in ``incoming``) with the same body is a duplicate
    and skipped; with a different body it is a conflict: not stored, and added to ``conflicts``
    (when given). A redacted stored event matches any body of its id (its payload changed).
    Must run inside a transaction: it takes the store lock, which is held until commit, so
    positions and the hash chain are assigned in commit order.
    """
    await store_lock(con)
    if not incoming:
        return []
    fresh = _split(incoming, await _taken(con, incoming), conflicts)
    if not fresh:
        return []
    head = await con.fetchrow(_APPEND_HEAD)
    recorded_at: datetime = head["now"]
    position: int = head["position"] or 0
    previous: bytes = head["chain_hash"] or chain.GENESIS
    subjects = sorted({(i.event.project, i.event.subject) for i in fresh})
    seqs = {
        (r["project"], r["subject"]): r["seq"] or 0
        for r in await con.fetch(_SUBJECT_SEQS, [p for p, _ in subjects], [s for _, s in subjects])
    }
    rows = []
    stored = []
    for item in fresh:
        doc, e = item.doc, item.event
        payload = doc["payload"]
        if chain.needs_jsonb_normal(orjson.dumps(payload)):
            payload = chain.jsonb_normal(payload)
            e = replace(e, payload=chain.jsonb_normal(e.payload))
        position += 1
        seq = seqs[(e.project, e.subject)] + 1
        seqs[(e.project, e.subject)] = seq
        leaves = chain.leaves(payload)
        salts = chain.new_salts(leaves)
        fields: dict[str, Any] = {
            "position": position,
            "event_id": e.event_id.lower(),
            "type": e.type,
            "schema_version": doc["schema_version"],
            "project": e.project,
            "subject": e.subject,
            "subject_seq": seq,
            "principal_id": item.principal.token_id,
            "principal": item.principal.name,
            "actor": e.actor,
            "occurred_at": e.occurred_at,
            "recorded_at": item.recorded_at or recorded_at,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "producer": e.producer,
        }
        content = chain.content_hash_v2(
            **fields, payload_commitments=chain.commitments(leaves, salts, {})
        )
        previous = chain.link(previous, content)
        rows.append((*fields.values(), payload, chain.HASH_VERSION, salts, content, previous))
        stored.append(StoredEvent(e, position, fields["recorded_at"], item.principal))
    await con.copy_records_to_table(
        "events", schema_name="public", records=rows, columns=EVENT_COLUMNS
    )
    await con.execute(f"NOTIFY {NOTIFY_CHANNEL}, '{position}'")
    return stored


_READ_EVENTS = """
SELECT position, event_id::text, type, schema_version, project, subject, principal_id, principal,
       actor, occurred_at, recorded_at, correlation_id, causation_id, producer, payload
FROM public.events WHERE position > $1 ORDER BY position LIMIT $2
"""


def stored_event(row: asyncpg.Record) -> StoredEvent:
    """A store row as the projection sees it: upcast to the current schema version."""
    doc = upcast(
        {"type": row["type"], "schema_version": row["schema_version"], "payload": row["payload"]}
    )
    event = Event(
        event_id=row["event_id"],
        type=row["type"],
        schema_version=doc["schema_version"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        project=row["project"],
        subject=row["subject"],
        payload=doc["payload"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        producer=row["producer"],
    )
    # Rows written before principals were recorded name no principal: the claim is all there is.
    principal = StoredPrincipal(row["principal_id"], row["principal"] or UNVERIFIED.name)
    return StoredEvent(event, row["position"], row["recorded_at"], principal)


async def read_events(con: Connection, after: int, limit: int) -> list[StoredEvent]:
    return [stored_event(r) for r in await con.fetch(_READ_EVENTS, after, limit)]


async def head_position(con: Connection) -> int:
    value = await con.fetchval("SELECT coalesce(max(position), 0) FROM public.events")
    return int(value)


async def head(con: Connection) -> tuple[int, bytes]:
    """The last position and its chain hash (0 and the genesis hash for an empty store)."""
    row = await con.fetchrow(
        "SELECT position, chain_hash FROM public.events ORDER BY position DESC LIMIT 1"
    )
    if row is None:
        return 0, chain.GENESIS
    return int(row["position"]), bytes(row["chain_hash"])


async def server_key(con: Connection, name: str) -> bytes:
    """A secret the services share through the database, made on first use."""
    await con.execute(
        "INSERT INTO public.server_keys (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        name,
        secrets.token_bytes(32),
    )
    secret: bytes = await con.fetchval(
        "SELECT secret FROM public.server_keys WHERE name = $1", name
    )
    return secret

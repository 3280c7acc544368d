"""The event store's hash chain: what a row's hash covers, and how rows link. Pure.

Each row stores ``content_hash = sha256(canonical JSON of the row's content)`` and
``chain_hash = sha256(previous chain_hash || content_hash)``; the first row's predecessor is 32
zero bytes. Editing any stored field, or deleting or reordering rows, breaks the chain from there.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = bytes(32)


def canonical_time(value: datetime) -> str:
    """Microsecond UTC text: what PostgreSQL's timestamptz keeps, so hashes survive a round trip."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def content_hash(
    *,
    position: int,
    event_id: str,
    type: str,
    schema_version: int,
    project: str,
    subject: str,
    subject_seq: int,
    actor: str,
    occurred_at: datetime,
    recorded_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    producer: Any,
    payload: Any,
) -> bytes:
    doc = {
        "position": position,
        "event_id": event_id,
        "type": type,
        "schema_version": schema_version,
        "project": project,
        "subject": subject,
        "subject_seq": subject_seq,
        "actor": actor,
        "occurred_at": canonical_time(occurred_at),
        "recorded_at": canonical_time(recorded_at),
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "producer": producer,
        "payload": payload,
    }
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()


def link(previous: bytes, content: bytes) -> bytes:
    return hashlib.sha256(previous + content).digest()

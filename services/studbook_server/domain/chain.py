"""The event store's hash chain: what a row's hash covers, and how rows link. Pure.

Each row stores ``content_hash = sha256(canonical JSON of the row's content)`` and
``chain_hash = sha256(previous chain_hash || content_hash)``; the first row's predecessor is 32
zero bytes. Editing any stored field, or deleting or reordering rows, breaks the chain from there.
"""

from __future__ import annotations

import hashlib
import re
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


# Numbers jsonb does not give back as they were sent: -0.0 (numeric has no negative zero) and
# integral floats from 1e16 up to the 64-bit range (jsonb prints them without an exponent, so
# they come back as integers). orjson writes exactly those as `-0.0` and `...e+16` to `e+19`.
_JSONB_CHANGES = re.compile(rb"-0\.0(?![0-9])|e\+1[6-9](?![0-9])")


def needs_jsonb_normal(encoded: bytes) -> bool:
    return _JSONB_CHANGES.search(encoded) is not None


def jsonb_normal(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb will return it, so the hash made before storing matches
    the one `verify` makes from the stored row (and a rebuild sees what the projection saw)."""
    if isinstance(value, float):
        if value == 0.0:
            return 0.0
        if value.is_integer() and abs(value) >= 1e16 and -(2**63) <= value < 2**64:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: jsonb_normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonb_normal(v) for v in value]
    return value

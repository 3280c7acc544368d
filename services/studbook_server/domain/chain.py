"""The event store's hash chain: what a row's hash covers, and how rows link. Pure.

Each row stores ``content_hash = sha256(canonical JSON of the row's content)`` and
``chain_hash = sha256(previous chain_hash || content_hash)``; the first row's predecessor is 32
zero bytes. Editing any stored field, or deleting or reordering rows, breaks the chain from there.

Hash version 2 (every row written since migration 0005) covers the authenticated principal, and
commits to the payload leaf by leaf: each leaf (a value that is not a non-empty object, named by
its JSON Pointer) gets its own random salt, and the content hash covers
``sha256(salt || pointer || 0x00 || canonical JSON of the value)`` instead of the value. A
redaction erases a leaf and its salt and keeps its commitment, so everything else in the row
still verifies, and the erased value cannot be recovered by guessing and hashing candidates.
Version 1 rows (written before) hash the whole payload; they verify only while unredacted.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = bytes(32)
HASH_VERSION = 2


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


def _pointer_step(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


def leaves(payload: Any, prefix: str = "") -> dict[str, Any]:
    """The payload's leaves by JSON Pointer: objects are walked, anything else is a leaf (an
    array, a scalar, an empty object). ``{"a": {"b": 1}, "c": [2]}`` -> ``{"/a/b": 1, "/c": [2]}``."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [(prefix, payload)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict) and node:
            stack.extend((where + _pointer_step(k), v) for k, v in node.items())
        else:
            out[where] = node
    return out


def dotted_pointer(path: str) -> str:
    """The JSON Pointer of a redaction's dotted path: ``code.git_repo`` -> ``/code/git_repo``."""
    return "".join(_pointer_step(step) for step in path.split("."))


def covers(pointer: str, leaf: str) -> bool:
    """Whether erasing ``pointer`` erases ``leaf`` (the same place, or a place below it)."""
    return leaf == pointer or leaf.startswith(pointer + "/")


def new_salts(pointers: Collection[str]) -> dict[str, str]:
    """An independent random 16-byte salt (hex) per pointer, from one read of the OS's source."""
    pool = os.urandom(16 * len(pointers)).hex()
    return {p: pool[32 * i : 32 * i + 32] for i, p in enumerate(pointers)}


def commitment(salt: str, pointer: str, value: Any) -> str:
    body = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"%s%s\x00%s" % (bytes.fromhex(salt), pointer.encode(), body)).hexdigest()


def commitments(
    payload_leaves: Mapping[str, Any], salts: Mapping[str, str], redacted: Mapping[str, Any]
) -> dict[str, str]:
    """Every leaf's commitment: computed for the leaves present, kept for the erased ones
    (``redacted`` maps a pointer to ``[commitment, redaction event id]``)."""
    out = {p: commitment(salts[p], p, v) for p, v in payload_leaves.items()}
    for p, kept in redacted.items():
        out[p] = kept[0]
    return out


def content_hash_v2(
    *,
    position: int,
    event_id: str,
    type: str,
    schema_version: int,
    project: str,
    subject: str,
    subject_seq: int,
    principal_id: str | None,
    principal: str | None,
    actor: str,
    occurred_at: datetime,
    recorded_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    producer: Any,
    payload_commitments: Mapping[str, str],
) -> bytes:
    doc = {
        "hash_version": 2,
        "position": position,
        "event_id": event_id,
        "type": type,
        "schema_version": schema_version,
        "project": project,
        "subject": subject,
        "subject_seq": subject_seq,
        "principal_id": principal_id,
        "principal": principal,
        "actor": actor,
        "occurred_at": canonical_time(occurred_at),
        "recorded_at": canonical_time(recorded_at),
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "producer": producer,
        "payload": payload_commitments,
    }
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()


def body_digest(
    *,
    type: str,
    schema_version: int,
    occurred_at: datetime,
    actor: str,
    project: str,
    subject: str,
    correlation_id: str | None,
    causation_id: str | None,
    producer: Any,
    payload: Any,
) -> str:
    """What a client sent as an event, under its event id, as a digest: two sends of one
    event id with different digests are a conflict, not a duplicate."""
    doc = {
        "type": type,
        "schema_version": schema_version,
        "occurred_at": canonical_time(occurred_at),
        "actor": actor,
        "project": project,
        "subject": subject,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "producer": producer,
        "payload": jsonb_normal(payload),
    }
    return "sha256:" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


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

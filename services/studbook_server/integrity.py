"""Integrity of the event store: `verify` walks the hash chain, `seal` anchors its head outside.

`verify` recomputes every row's content hash and chain link from the genesis, checks that each
erased (redacted) value was erased by a `subject.redacted` event of the same subject, recorded
after it and naming that field, and, given a seal log, that the chain still passes through every
sealed head. What this proves, and against whom, is in docs/security.md.

A seal is one NDJSON line: the head's position and chain hash, when it was sealed, the previous
line's SHA-256 (so lines cannot be dropped from the middle unnoticed) and an Ed25519 signature
over all of that, made with a private key kept outside PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Connection
from studbook_server.domain import chain
from studbook_server.domain.projection import refused_redactions
from studbook_server.errors import ChainBroken, ConfigError

# ------------------------------------------------------------------------------------- seals


@dataclass(frozen=True, slots=True)
class Seal:
    line: int  # 1-based line number in the seal log
    position: int
    chain_hash: bytes
    sealed_at: str


def _signed_part(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in doc.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS
    )


def create_key(path: Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (0600) and its public key beside it
    (``path.pub``); return the public key's path. Refuses to overwrite."""
    if path.exists():
        raise ConfigError(f"{path} exists: a seal key is never overwritten (choose another path)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the seal key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; a private key file gives its public half."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the seal key {path}: {exc}") from exc
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"cannot read the seal public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def _key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def append_seal(
    log_path: Path, key: Ed25519PrivateKey, position: int, chain_hash: bytes
) -> dict[str, Any]:
    """Sign ``(position, chain_hash)`` and append it to the seal log; return the new line."""
    previous = None
    if log_path.exists():
        lines = [ln for ln in log_path.read_bytes().splitlines() if ln.strip()]
        if lines:
            previous = hashlib.sha256(lines[-1]).hexdigest()
    doc: dict[str, Any] = {
        "position": position,
        "chain_hash": chain_hash.hex(),
        "sealed_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "key_id": _key_id(key.public_key()),
        "previous": previous,
    }
    doc["signature"] = base64.b64encode(key.sign(_signed_part(doc))).decode()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as f:
        f.write(orjson.dumps(doc) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return doc


def read_seals(log_path: Path, key: Ed25519PublicKey) -> list[Seal]:
    """The seals of a log, each signature and link checked; raise ConfigError naming the
    first line that fails (the log itself was altered)."""
    try:
        lines = log_path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the seal log {log_path}: {exc}") from exc
    seals: list[Seal] = []
    previous: str | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"seal log {log_path} line {number}"
        try:
            doc = orjson.loads(line)
            signature = base64.b64decode(doc["signature"])
            key.verify(signature, _signed_part(doc))
        except InvalidSignature:
            raise ConfigError(
                f"{where}: the signature does not match (the line was altered, or signed by "
                "another key)"
            ) from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not a seal ({exc})") from exc
        if doc.get("previous") != previous:
            raise ConfigError(f"{where}: does not follow the line before it (lines were removed)")
        previous = hashlib.sha256(line).hexdigest()
        seals.append(
            Seal(number, int(doc["position"]), bytes.fromhex(doc["chain_hash"]), doc["sealed_at"])
        )
    return seals


# ------------------------------------------------------------------------------------ verify

_VERIFY = """
SELECT position, event_id::text, type, schema_version, project, subject, subject_seq,
       principal_id, principal, actor, occurred_at, recorded_at, correlation_id, causation_id,
       producer, payload, hash_version, salts, redacted, content_hash, chain_hash,
       redacted_by::text
FROM public.events WHERE position > $1 ORDER BY position LIMIT $2
"""

_REDACTIONS = """
SELECT event_id::text, position, project, subject, payload FROM public.events
WHERE type = 'subject.redacted'
"""

_V1_FIELDS = (
    "position", "event_id", "type", "schema_version", "project", "subject", "subject_seq",
    "actor", "occurred_at", "recorded_at", "correlation_id", "causation_id", "producer", "payload",
)  # fmt: skip
_V2_FIELDS = (
    "position", "event_id", "type", "schema_version", "project", "subject", "subject_seq",
    "principal_id", "principal", "actor", "occurred_at", "recorded_at", "correlation_id",
    "causation_id", "producer",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    redacted: int
    seals: int
    head: int


@dataclass(frozen=True, slots=True)
class _Redaction:
    position: int
    project: str
    subject: str
    pointers: tuple[str, ...]


def _check_redactions(r: Any, redacted: dict[str, Any], redactions: dict[str, _Redaction]) -> None:
    position = r["position"]
    for pointer, kept in redacted.items():
        by = kept[1] if isinstance(kept, list) and len(kept) == 2 else None
        found = redactions.get(by) if isinstance(by, str) else None
        if found is None:
            raise ChainBroken(position, f"`{pointer}` was erased, but not by a stored redaction")
        if (found.project, found.subject) != (
            r["project"],
            r["subject"],
        ) or found.position <= position:
            raise ChainBroken(
                position,
                f"`{pointer}` was erased by `{by}`, which is not a later redaction of this subject",
            )
        if not any(chain.covers(p, pointer) for p in found.pointers):
            raise ChainBroken(
                position, f"`{pointer}` was erased, but redaction `{by}` does not name it"
            )
        steps = [step.replace("~1", "/").replace("~0", "~") for step in pointer.split("/")[1:]]
        if refused_redactions([".".join(steps)]):
            raise ChainBroken(position, f"`{pointer}` identifies the subject and may not be erased")
    latest = r["redacted_by"]
    if (latest is None) != (not redacted) or (
        latest is not None and latest not in {kept[1] for kept in redacted.values()}
    ):
        raise ChainBroken(position, "`redacted_by` does not match the erased fields")


def _content_v2(r: Any, redactions: dict[str, _Redaction]) -> bytes:
    position = r["position"]
    leaves = chain.leaves(r["payload"])
    salts: dict[str, str] = r["salts"] or {}
    redacted: dict[str, Any] = r["redacted"] or {}
    # An object left empty because everything in it was erased is not a leaf of its own.
    for pointer, value in list(leaves.items()):
        if (
            value == {}
            and pointer not in salts
            and any(p.startswith(pointer + "/") for p in redacted)
        ):
            del leaves[pointer]
    if leaves.keys() != salts.keys():
        raise ChainBroken(
            position, "payload fields do not match their salts (fields were added or removed)"
        )
    if leaves.keys() & redacted.keys():
        raise ChainBroken(position, "a field is both present and erased")
    _check_redactions(r, redacted, redactions)
    fields = {k: r[k] for k in _V2_FIELDS}
    return chain.content_hash_v2(
        **fields, payload_commitments=chain.commitments(leaves, salts, redacted)
    )


async def verify(con: Connection, seals: Sequence[Seal] = (), batch: int = 5000) -> VerifyReport:
    """Walk the whole chain; raise :class:`ChainBroken` naming the first position that fails."""
    redactions = {
        r["event_id"]: _Redaction(
            r["position"], r["project"], r["subject"],
            tuple(chain.dotted_pointer(f) for f in (r["payload"] or {}).get("fields", [])),
        )
        for r in await con.fetch(_REDACTIONS)
    }  # fmt: skip
    sealed: dict[int, list[Seal]] = {}
    for s in seals:
        sealed.setdefault(s.position, []).append(s)
    previous = chain.GENESIS
    expected_position = 0
    checked = redacted = seals_checked = 0
    newest_version = 1
    last_good_seal = 0
    while True:
        rows = await con.fetch(_VERIFY, expected_position, batch)
        if not rows:
            break
        for r in rows:
            expected_position += 1
            position = r["position"]
            if position != expected_position:
                raise ChainBroken(expected_position, "row is missing (positions must be gapless)")
            version = r["hash_version"]
            if version < newest_version:
                raise ChainBroken(
                    position, f"hash version {version} after version {newest_version} rows"
                )
            newest_version = version
            if version == 1:
                if r["redacted_by"] is not None:
                    raise ChainBroken(
                        position,
                        "redacted, but stored before hash version 2: its content cannot be checked",
                    )
                content = chain.content_hash(**{k: r[k] for k in _V1_FIELDS})
            elif version == 2:
                content = _content_v2(r, redactions)
            else:
                raise ChainBroken(position, f"unknown hash version {version}")
            if content != r["content_hash"]:
                raise ChainBroken(position, "content does not match its content_hash")
            if chain.link(previous, r["content_hash"]) != r["chain_hash"]:
                raise ChainBroken(position, "chain_hash does not follow from the previous row")
            previous = r["chain_hash"]
            if r["redacted"]:
                redacted += 1
            for seal in sealed.get(position, ()):
                if bytes(r["chain_hash"]) != seal.chain_hash:
                    raise ChainBroken(
                        position,
                        f"does not match seal line {seal.line} (sealed {seal.sealed_at}): the "
                        f"history after position {last_good_seal} was rewritten and its chain "
                        "recomputed",
                    )
                seals_checked += 1
                last_good_seal = position
            checked += 1
    for seal in sorted(seals, key=lambda s: s.position):
        if seal.position > expected_position:
            raise ChainBroken(
                expected_position + 1,
                f"row is missing: seal line {seal.line} (sealed {seal.sealed_at}) covers "
                f"position {seal.position}, but the store ends at {expected_position} "
                "(rows were deleted)",
            )
    return VerifyReport(checked, redacted, seals_checked, expected_position)


async def seal(con: Connection, key: Ed25519PrivateKey, log_path: Path) -> dict[str, Any]:
    """Seal the store's current head: sign it and append it to the seal log."""
    position, chain_hash = await postgres.head(con)
    return append_seal(log_path, key, position, chain_hash)

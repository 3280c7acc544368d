"""Who sent a Kafka record, attested by the gateway that authenticated them. Pure.

The gateway (and the API, for its mutations) authenticates the sender's token and attaches two
headers to every record it produces: the principal (token id, name and scopes, as JSON) and an
HMAC-SHA256 over the principal and the record's value, keyed with a secret the services share
through PostgreSQL (`public.server_keys`). The projector records the principal only when the
signature holds; a record produced straight to Kafka (the SDK's `kafka://` transport, or anyone
with access to the topic) carries the client's claim only, and is stored as unverified.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

HEADER_PRINCIPAL = "studbook-principal"
HEADER_SIGNATURE = "studbook-signature"
KEY_NAME = "kafka-principal-hmac"


@dataclass(frozen=True, slots=True)
class Attested:
    token_id: str | None
    name: str
    scopes: frozenset[str]


def _mac(key: bytes, principal: bytes, value: bytes) -> bytes:
    mac = hmac.new(key, principal, hashlib.sha256)
    mac.update(b"\n")
    mac.update(value)
    return mac.digest()


def headers(key: bytes, value: bytes, who: Attested) -> list[tuple[str, bytes]]:
    """The headers that attest ``who`` sent the record ``value``."""
    principal = orjson.dumps(
        {"token_id": who.token_id, "name": who.name, "scopes": sorted(who.scopes)}
    )
    return [(HEADER_PRINCIPAL, principal), (HEADER_SIGNATURE, _mac(key, principal, value))]


def verify(
    key: bytes, value: bytes, record_headers: Iterable[tuple[str, bytes]]
) -> Attested | None:
    """The attested principal of a record, or None when it has none or its signature fails."""
    found = dict(record_headers or ())
    principal, signature = found.get(HEADER_PRINCIPAL), found.get(HEADER_SIGNATURE)
    if principal is None or signature is None:
        return None
    if not hmac.compare_digest(_mac(key, principal, value), signature):
        return None
    doc = orjson.loads(principal)
    return Attested(doc["token_id"], doc["name"], frozenset(doc["scopes"]))

"""API tokens: `sbk_<id>_<secret>`, stored as SHA-256, carrying scopes and a project list.

Scopes: `read` (queries), `write` (send events, run mutations), `approve` (governance decisions:
approve or reject a model version), `admin` (everything, and tokens). `admin` implies the others;
`write` does not imply `approve`, so a training job's token cannot approve what it trained. A
project list of `*` means every project.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from studbook_server.adapters.postgres import Connection, Pool, failure_kind
from studbook_server.errors import StudbookError

SCOPES = ("read", "write", "approve", "admin")
# Event types that record a governance decision: sending one needs the `approve` scope.
GOVERNANCE_TYPES = frozenset({"model.version.approved", "model.version.rejected"})
PREFIX = "sbk_"
# A token lookup that PostgreSQL does not answer in time is a 503, not a hung request.
LOOKUP_TIMEOUT_S = 5.0


class AuthUnavailable(StudbookError):
    """The token could not be checked (PostgreSQL unreachable): the caller answers 503."""


MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's id, name, scopes and projects (or everyone, with auth
    disabled: no token id)."""

    token_id: str | None
    name: str
    scopes: frozenset[str]
    projects: frozenset[str]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_access(self, project: str) -> bool:
        return "*" in self.projects or project in self.projects

    def may_send(self, event_type: str) -> bool:
        """Whether this principal's scopes allow sending an event of ``event_type``."""
        if event_type in GOVERNANCE_TYPES:
            return self.has_scope("approve")
        return self.has_scope("write")


ANONYMOUS_ADMIN = Principal(None, "auth-disabled", frozenset(SCOPES), frozenset({"*"}))


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    name: str
    scopes: tuple[str, ...]
    projects: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """A fresh (token_id, token)."""
    token_id = secrets.token_hex(6)
    return token_id, f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


async def create_token(
    con: Connection, name: str, scopes: list[str], projects: list[str]
) -> tuple[str, str]:
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise ValueError(
            f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}"
        )
    if not projects:
        raise ValueError("give at least one project, or `*` for every project")
    if not 1 <= len(name) <= MAX_NAME:
        # The name is recorded with every event the token sends, as the authenticated principal.
        raise ValueError(f"a token name must be 1 to {MAX_NAME} characters")
    token_id, token = new_token()
    await con.execute(
        "INSERT INTO public.api_tokens (token_id, name, token_hash, scopes, projects) "
        "VALUES ($1, $2, $3, $4, $5)",
        token_id, name, hash_token(token), sorted(set(scopes)), sorted(set(projects)),
    )  # fmt: skip
    return token_id, token


async def token_is_active(con: Connection, token: str) -> bool:
    found = await con.fetchval(
        "SELECT 1 FROM public.api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token),
    )
    return found is not None


async def revoke_token(con: Connection, token_id: str) -> bool:
    status = await con.execute(
        "UPDATE public.api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
        token_id,
    )
    return bool(status.endswith(" 1"))


async def list_tokens(con: Connection) -> list[TokenInfo]:
    rows = await con.fetch(
        "SELECT token_id, name, scopes, projects, created_at, revoked_at FROM public.api_tokens "
        "ORDER BY created_at"
    )
    return [TokenInfo(r[0], r[1], tuple(r[2]), tuple(r[3]), r[4], r[5]) for r in rows]


async def authenticate(pool: Pool, header: str | None) -> Principal | None:
    """The principal for an `Authorization` header, or None if it is missing, malformed,
    unknown or revoked."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(PREFIX):
        return None
    try:
        row = await pool.fetchrow(
            "SELECT token_id, name, scopes, projects FROM public.api_tokens "
            "WHERE token_hash = $1 AND revoked_at IS NULL",
            hash_token(token.strip()),
            timeout=LOOKUP_TIMEOUT_S,
        )
    except asyncpg.UndefinedTableError:  # pragma: no cover - migrations run at start-up
        return None
    except Exception as exc:
        if failure_kind(exc) == "retry":
            raise AuthUnavailable(
                "cannot check the token: PostgreSQL is unreachable; retry later"
            ) from exc
        raise
    if row is None:
        return None
    return Principal(
        row["token_id"], row["name"], frozenset(row["scopes"]), frozenset(row["projects"])
    )

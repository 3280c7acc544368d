"""The one write path: what happens to events a client sends, whichever way they come in.

The ingest gateway (`POST /v1/events`), the GraphQL mutations and the adapters for foreign
clients all hand their events to :meth:`Writer.submit` with the authenticated principal. It
validates every event against the contract (and refuses NUL characters, which PostgreSQL cannot
store), checks the principal's projects and scopes (and four eyes where configured), and
publishes them (Kafka in a deployment, the event store in embedded mode), recording the
principal with each event. Nothing else writes events; nothing at all writes read models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from studbook_server import governance, numbering
from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Incoming, Pool, failure_kind
from studbook_server.adapters.publish import (
    PublishConflict,
    Publisher,
    PublishRefused,
    PublishTooLarge,
    PublishUnavailable,
)
from studbook_server.auth import Principal
from studbook_server.config import Settings
from studbook_server.consistency import Token
from studbook_server.domain.contract import InvalidEvent, Violation, event_from_dict

# Bounds on one request, so no single request can hold the gateway: at most this many events
# (the SDK sends at most 500), at most this many problems listed (then a count), and bodies past
# this size are validated off the event loop, so other requests are answered meanwhile.
MAX_EVENTS_PER_REQUEST = 10_000
MAX_PROBLEMS_LISTED = 100
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    """Every event was handed over (or was already stored: sending again is safe)."""

    event_ids: list[str]
    token: Token
    # Numbers the server allocated on acceptance (see studbook_server.numbering): event id ->
    # number, e.g. the version number of each `model.version.registered` event.
    numbers: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was handed over. ``status`` is the HTTP status that fits; ``violations`` name
    the events and fields at fault when the refusal is about them; ``conflicts`` the event ids
    already taken by different events (409)."""

    status: int
    message: str
    violations: list[Violation] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    problems_not_listed: int = 0
    events_not_checked: int = 0

    def body(self) -> dict[str, Any]:
        """The JSON body of Studbook's own API for this refusal."""
        out: dict[str, Any] = {}
        if self.status != 422 or not self.violations:
            out["error"] = self.message
        if self.violations:
            out["errors"] = [
                {"index": v.index, "path": v.path, "message": v.message} for v in self.violations
            ]
        if self.problems_not_listed:
            out["errors_not_listed"] = self.problems_not_listed
        if self.events_not_checked:
            out["events_not_checked"] = self.events_not_checked
        if self.conflicts:
            out["conflicts"] = self.conflicts
        return out


def _conflicted(conflicts: Sequence[postgres.Conflict], incoming: Sequence[Incoming]) -> Refused:
    where = {id(i.doc): n for n, i in enumerate(incoming)}  # the doc survives a publisher's copy
    return Refused(
        409,
        conflicts[0].reason,
        conflicts=[
            {
                "index": where.get(id(c.incoming.doc)),
                "event_id": c.incoming.event.event_id,
                "stored_digest": c.stored_digest,
                "digest": c.digest,
            }
            for c in conflicts
        ],
    )


def _nul_paths(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, str):
        if "\x00" in node:
            yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            if "\x00" in k:
                yield f"{path}/{k}"
            yield from _nul_paths(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nul_paths(v, f"{path}/{i}")


def validated(docs: Sequence[Any], raw: bytes | None = None) -> list[Incoming] | Refused:
    """Every event checked against the contract (CPU only: safe to run in a thread)."""
    violations: list[Violation] = []
    incoming: list[Incoming] = []
    for index, doc in enumerate(docs):
        try:
            incoming.append(Incoming(doc, event_from_dict(doc, index)))  # validates once
        except InvalidEvent as exc:
            violations.extend(exc.violations)
        if len(violations) > MAX_PROBLEMS_LISTED:
            break  # enough to fix the client; the rest are counted, not described
    if violations:
        shown = violations[:MAX_PROBLEMS_LISTED]
        return Refused(
            422, "invalid events", shown, problems_not_listed=len(violations) - len(shown),
            events_not_checked=len(docs) - index - 1,
        )  # fmt: skip
    if raw is None or postgres.contains_nul(raw):
        for index, doc in enumerate(docs):
            for path in _nul_paths(doc):
                violations.append(
                    Violation(index, path, "must not contain a NUL character (\\u0000)")
                )
        if violations:
            return Refused(422, "invalid events", violations[:MAX_PROBLEMS_LISTED])
    return incoming


@dataclass(slots=True)
class Writer:
    settings: Settings
    pool: Pool
    publisher: Publisher

    async def submit(
        self, principal: Principal, docs: Sequence[Any], *, raw: bytes | None = None
    ) -> Accepted | Refused:
        """Validate, authorise and publish ``docs`` (events as parsed from JSON) sent by
        ``principal``. ``raw``, the request body they were parsed from, lets the NUL check
        skip a walk of every event when the body has none."""
        if not docs:
            return Refused(422, "no events in the request", [Violation(0, "", "no events")])
        if len(docs) > MAX_EVENTS_PER_REQUEST:
            return Refused(
                413,
                f"{len(docs)} events in one request; at most {MAX_EVENTS_PER_REQUEST}: send "
                "smaller batches",
            )
        if raw is not None and len(raw) > OFFLOAD_BYTES:
            checked = await asyncio.to_thread(validated, docs, raw)
        else:
            checked = validated(docs, raw)
        if isinstance(checked, Refused):
            return checked
        incoming = checked
        forbidden = sorted({d["project"] for d in docs if not principal.may_access(d["project"])})
        if forbidden:
            return Refused(
                403, f"token `{principal.name}` may not write to project(s) {', '.join(forbidden)}"
            )
        problem = governance.scope_problem(principal, docs) or await governance.four_eyes_problem(
            self.pool, self.settings, principal, docs
        )
        if problem is not None:
            # The event is named, so a client can tell this from a refused token.
            return Refused(403, problem.message, [problem])
        claims = numbering.client_claims(incoming)
        if claims:
            return Refused(422, "invalid events", claims[:MAX_PROBLEMS_LISTED])
        try:  # before the conflict checks: a retry is stamped with the number it got first
            numbers = await numbering.stamp(self.pool, incoming)
        except Exception as exc:
            if failure_kind(exc) != "retry":
                raise
            return Refused(503, "the event store is unavailable; retry later (re-sending is safe)")
        # The same event id with another body is a conflict, not a retry. Within the request it
        # is found here; against the store, the event store's append refuses it itself, and for
        # Kafka the store is checked first.
        conflicts = postgres.conflicts_within(incoming)
        if not conflicts and not self.publisher.refuses_conflicts:
            conflicts = await postgres.find_conflicts(self.pool, incoming)
        if conflicts:
            return _conflicted(conflicts, incoming)
        # The same event twice in one request is published once.
        incoming = list({i.event.event_id: i for i in reversed(incoming)}.values())[::-1]
        try:
            token = await self.publisher.publish(incoming, principal)
        except PublishConflict as exc:
            return _conflicted(exc.conflicts, incoming)
        except PublishTooLarge as exc:
            return Refused(413, str(exc))
        except PublishRefused as exc:
            return Refused(422, str(exc))
        except PublishUnavailable as exc:
            return Refused(503, f"{exc}; retry later (re-sending is safe)")
        return Accepted(list(dict.fromkeys(i.event.event_id for i in incoming)), token, numbers)

"""Audit: the event store read back (history of a subject, audit trail) and governance checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from studbook_server.domain.contract import upcast
from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput
from studbook_server.graphql._ids import Ref, cursor, gid, parse, uncursor
from studbook_server.graphql._types import (
    Connection,
    Decision,
    ModelVersion,
    check_time,
    connection,
    page_size,
)


@strawberry.type(
    description="An event as the store holds it (payload upcast to the current schema version)."
)
class Event:
    position: int
    event_id: strawberry.ID
    type: str
    schema_version: int = strawberry.field(description="The version as sent.")
    project: str
    subject: strawberry.ID
    subject_seq: int
    actor: str = strawberry.field(
        description="Who sent it, as the server authenticated them (the token's name); "
        "`unverified:<claim>` when nobody was authenticated (a record produced straight to Kafka)."
    )
    principal_id: str | None = strawberry.field(
        description="The id of the token that sent it; null when it was not authenticated."
    )
    claimed_actor: str = strawberry.field(
        description="Who the client said it was (the event's `actor` field): a claim, not a fact."
    )
    occurred_at: datetime = strawberry.field(description="When it happened, by the client's clock.")
    recorded_at: datetime = strawberry.field(description="When the store recorded it.")
    correlation_id: str | None
    causation_id: str | None
    producer: JSON | None
    payload: JSON
    redacted: bool = strawberry.field(
        description="Fields were erased by a `subject.redacted` event."
    )

    @classmethod
    def from_row(cls, r: Any) -> Event:
        doc = upcast(
            {"type": r["type"], "schema_version": r["schema_version"], "payload": r["payload"]}
        )
        return cls(
            position=r["position"],
            event_id=strawberry.ID(str(r["event_id"])),
            type=r["type"],
            schema_version=r["schema_version"],
            project=r["project"],
            subject=strawberry.ID(gid(r["project"], r["subject"])),
            subject_seq=r["subject_seq"],
            actor=r["principal"] or f"unverified:{r['actor']}",
            principal_id=r["principal_id"],
            claimed_actor=r["actor"],
            occurred_at=r["occurred_at"],
            recorded_at=r["recorded_at"],
            correlation_id=r["correlation_id"],
            causation_id=r["causation_id"],
            producer=r["producer"],
            payload=doc["payload"],
            redacted=r["redacted_by"] is not None,
        )


_COLUMNS = """position, event_id, type, schema_version, project, subject, subject_seq, actor,
              principal_id, principal, occurred_at, recorded_at, correlation_id, causation_id,
              producer, payload, redacted_by"""

_HISTORY = f"""
SELECT {_COLUMNS} FROM public.events
WHERE project = $1 AND subject = $2 AND subject_seq > $3
ORDER BY subject_seq LIMIT $4
"""

SUBJECT_KINDS = ("project", "dataset", "run", "model")


async def history(info: Info, ref: Ref, first: int | None, after: str | None) -> Connection[Event]:
    if ref.kind not in SUBJECT_KINDS:
        parent = "model" if ref.kind in ("model_version", "deployment") else "dataset"
        name = ref.split("/")[0] if ref.kind == "deployment" else ref.split("@")[0]
        raise BadInput(
            f"events are kept per project, dataset, run or model: ask for "
            f"`{ref.project}/{parent}:{name}`"
        )
    limit = page_size(first)
    key = uncursor(after, int)
    rows = await info.context.pool.fetch(
        _HISTORY, ref.project, ref.node, key[0] if key else 0, limit + 1
    )
    return connection([(cursor(r["subject_seq"]), Event.from_row(r)) for r in rows], limit, after)


@strawberry.input(
    description="Every condition given must hold. `from`/`to` bound the occurred time, `recordedFrom`/`recordedTo` the recorded time (to is exclusive)."
)
class AuditFilter:
    project: str | None = None
    actor: str | None = strawberry.field(
        default=None, description="The authenticated sender (a token's name)."
    )
    claimed_actor: str | None = strawberry.field(
        default=None, description="The `actor` the client claimed."
    )
    types: list[str] | None = None
    subject: strawberry.ID | None = None
    from_: datetime | None = strawberry.field(default=None, name="from")
    to: datetime | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None


async def audit_trail(
    info: Info,
    f: AuditFilter,
    visible: list[str] | None,
    first: int | None,
    after: str | None,
) -> Connection[Event]:
    """Events in store order; ``visible`` limits the projects (None: all)."""
    limit = page_size(first)
    key = uncursor(after, int)
    args: list[Any] = [key[0] if key else 0]
    where = ["position > $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.project is not None:
        where.append(f"project = {arg(f.project)}")
    elif visible is not None:
        where.append(f"project = ANY({arg(visible)}::text[])")
    if f.subject is not None:
        ref = parse(f.subject, *SUBJECT_KINDS, what="subject")
        where.append(f"project = {arg(ref.project)} AND subject = {arg(ref.node)}")
    if f.actor is not None:
        where.append(f"principal = {arg(f.actor)}")
    if f.claimed_actor is not None:
        where.append(f"actor = {arg(f.claimed_actor)}")
    if f.types:
        where.append(f"type = ANY({arg(f.types)}::text[])")
    for value, name, column, op in (
        (f.from_, "from", "occurred_at", ">="),
        (f.to, "to", "occurred_at", "<"),
        (f.recorded_from, "recordedFrom", "recorded_at", ">="),
        (f.recorded_to, "recordedTo", "recorded_at", "<"),
    ):
        if value is not None:
            check_time(value, name)
            where.append(f"{column} {op} {arg(value)}")
    statement = (
        f"SELECT {_COLUMNS} FROM public.events WHERE {' AND '.join(where)} "
        f"ORDER BY position LIMIT {arg(limit + 1)}"
    )
    rows = await info.context.pool.fetch(statement, *args)
    return connection([(cursor(r["position"]), Event.from_row(r)) for r in rows], limit, after)


# ------------------------------------------------------------------------------ governance


@strawberry.type(
    description="An alias set on a model version whose latest decision before that moment was not an approval."
)
class UnapprovedPromotion:
    alias: str
    promoted_at: datetime
    promoted_by: str
    event_id: strawberry.ID
    latest_decision: Decision | None = strawberry.field(
        description="The decision in force when it was promoted: null (never reviewed) or REJECTED."
    )
    latest_decision_at: datetime | None
    model_version: ModelVersion | None


# A promotion is the `model.alias.set` event behind believed alias rows; its moment is the
# earliest valid_from of those rows (a later correction may have split it into pieces). Whether
# it was approved is judged in the order the store recorded events, never on the client's clock:
# the decision in force is the latest one stored before the promotion, so a decision back-dated
# after the fact does not make an earlier promotion approved.
_UNAPPROVED = """
WITH promotions AS (
    SELECT a.set_event, a.project, a.model, a.name, a.version, a.set_by, min(a.valid_from) AS at,
           (SELECT e.position FROM public.events e WHERE e.event_id = a.set_event) AS stored
    FROM rm.assignments a
    WHERE a.project = $1 AND a.kind = 'alias' AND ($2::text IS NULL OR a.name = $2)
      AND CASE WHEN $3::timestamptz IS NULL THEN a.recorded_to IS NULL
               ELSE a.recorded_from <= $3 AND (a.recorded_to IS NULL OR $3 < a.recorded_to) END
    GROUP BY a.set_event, a.project, a.model, a.name, a.version, a.set_by
)
SELECT p.set_event, p.name AS alias, p.set_by, p.at, d.decision, d.decided_at, mv.*
FROM promotions p
LEFT JOIN LATERAL (
    SELECT ap.decision, ap.decided_at FROM rm.approvals ap
    JOIN public.events e ON e.event_id = ap.event_id
    WHERE ap.project = p.project AND ap.model = p.model AND ap.version = p.version
      AND e.position < p.stored AND ($3::timestamptz IS NULL OR ap.recorded_at <= $3)
    ORDER BY e.position DESC LIMIT 1
) d ON true
LEFT JOIN rm.model_versions mv ON mv.project = p.project AND mv.model = p.model AND mv.number = p.version
WHERE d.decision IS DISTINCT FROM 'approved'
ORDER BY p.at, p.model, p.name
"""


async def unapproved_promotions(
    info: Info, project: str, alias: str | None, known_at: datetime | None
) -> list[UnapprovedPromotion]:
    check_time(known_at, "knownAt")
    rows = await info.context.pool.fetch(_UNAPPROVED, project, alias, known_at)
    return [
        UnapprovedPromotion(
            alias=r["alias"],
            promoted_at=r["at"],
            promoted_by=r["set_by"],
            event_id=strawberry.ID(str(r["set_event"])),
            latest_decision=Decision(r["decision"]) if r["decision"] else None,
            latest_decision_at=r["decided_at"],
            model_version=ModelVersion.from_row(r) if r["number"] is not None else None,
        )
        for r in rows
    ]

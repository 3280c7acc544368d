"""Numbers the write path allocates when it accepts an event, so the client learns them at once.

A model version's number (1, 2, ... per model) is what users and aliases name, and a client that
registers a version needs it in the answer, not after the projector has caught up. The write path
(:class:`studbook_server.writepath.Writer`) therefore reserves the number when it accepts a
``model.version.registered`` event and writes it into the event's payload (``version``) before
publishing, so the event store alone still determines the read models (``rebuild`` gives the
same numbers). Reservations are kept per event id in ``public.event_numbers``: a retry of the
same event (the SDK's spool, a client re-sending after a timeout) gets the same number, so
re-sending can never make a second version. A number can be skipped (a reservation whose event
then failed to publish and was never re-sent) but never given twice.

Events that reach the event store without passing the write path (the SDK's ``kafka://``
transport, events imported from an older store) carry no number; the projector numbers them
after the highest number it knows, as it always did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from studbook_server.adapters.postgres import Incoming, Pool
from studbook_server.domain.contract import Event, Violation


@dataclass(frozen=True, slots=True)
class Numbered:
    """An event type whose events get a number from a sequence when they are accepted."""

    field: str  # the payload field the number is written to
    sequence: Callable[[Event], str]  # which sequence, within the event's project
    # The highest number already used outside the reservations ($2 project, $3 sequence), for
    # events that were numbered by the projector (see the module's docstring).
    floor_sql: str | None = None


NUMBERED: dict[str, Numbered] = {
    "model.version.registered": Numbered(
        "version",
        lambda e: e.subject,
        "SELECT max(number) FROM rm.model_versions WHERE project = $2 AND model = substr($3, 7)",
    ),
}

_RESERVE = """
INSERT INTO public.event_numbers (event_id, project, sequence, number)
SELECT $1::uuid, $2, $3, 1 + greatest(
    (SELECT coalesce(max(number), 0) FROM public.event_numbers WHERE project = $2 AND sequence = $3),
    coalesce(({floor}), 0))
ON CONFLICT (event_id) DO NOTHING
RETURNING number
"""

_RESERVED = "SELECT number FROM public.event_numbers WHERE event_id = $1::uuid"


def client_claims(incoming: Sequence[Incoming]) -> list[Violation]:
    """A number is the server's to give: an event that arrives with one is refused."""
    out = []
    for index, i in enumerate(incoming):
        numbered = NUMBERED.get(i.event.type)
        if numbered is not None and numbered.field in i.event.payload:
            out.append(
                Violation(
                    index,
                    f"/payload/{numbered.field}",
                    "is assigned by the server when it accepts the event: leave it out "
                    "(the answer carries it)",
                )
            )
    return out


async def _reserve(con: asyncpg.Connection, event: Event, numbered: Numbered) -> int:
    sequence = numbered.sequence(event)
    sql = _RESERVE.format(floor=numbered.floor_sql or "SELECT 0")
    for _ in range(100):
        try:
            number = await con.fetchval(sql, event.event_id, event.project, sequence)
        except asyncpg.UniqueViolationError:
            continue  # another request took that number first: take the next
        if number is None:  # this event id holds a number already: a retry
            number = await con.fetchval(_RESERVED, event.event_id)
        if number is not None:
            return int(number)
    raise RuntimeError(f"could not reserve a number in `{sequence}` after 100 attempts")


async def stamp(pool: Pool, incoming: Sequence[Incoming]) -> dict[str, int]:
    """Reserve numbers for the numbered events in ``incoming`` and write them into each event's
    payload (the wire document and the upcast event both). Returns event id -> number."""
    wanted = [(i, NUMBERED[i.event.type]) for i in incoming if i.event.type in NUMBERED]
    if not wanted:
        return {}
    out: dict[str, int] = {}
    async with pool.acquire() as con:
        for i, numbered in wanted:
            number = out.get(i.event.event_id)
            if number is None:
                number = await _reserve(con, i.event, numbered)
                out[i.event.event_id] = number
            i.event.payload[numbered.field] = number
            payload = i.doc.get("payload")
            if isinstance(payload, dict):
                payload[numbered.field] = number
    return out

"""Consistency tokens: what a write returns so a later read can wait for the projection.

Two forms, one per transport:

- `s1.<position>` (embedded mode): caught up when the read models' checkpoint reaches the position.
- `k1.<base64 JSON {"t": topic, "o": {partition: offset}}>` (Kafka): caught up when the projector
  group's stored offset of every named partition is past the offset.

A wait (`wait_until`) is woken by the projector: each batch it commits sends a NOTIFY on
`PROJECTED_CHANNEL` in its transaction, and one LISTEN connection per pool (held only while a wait
is in progress) wakes every waiter to check again. A wait therefore ends within a notification of
the batch that carries the token's events, not at the next tick of a polling interval. Polling
every `FALLBACK_POLL_S` remains only for notifications that cannot come (another projector version,
a lost connection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from studbook_server.adapters.postgres import Pool

log = logging.getLogger(__name__)

# NOTIFY'd by the projector in every transaction that moves its stored offsets or checkpoint.
PROJECTED_CHANNEL = "studbook_projected"
FALLBACK_POLL_S = 0.2


class BadToken(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StoreToken:
    position: int

    def encode(self) -> str:
        return f"s1.{self.position}"


@dataclass(frozen=True, slots=True)
class KafkaToken:
    topic: str
    offsets: dict[int, int]

    def encode(self) -> str:
        doc = {"t": self.topic, "o": {str(p): o for p, o in sorted(self.offsets.items())}}
        return "k1." + base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


Token = StoreToken | KafkaToken


def decode(text: str) -> Token:
    try:
        if text.startswith("s1."):
            return StoreToken(int(text[3:]))
        if text.startswith("k1."):
            raw = text[3:]
            doc = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            return KafkaToken(str(doc["t"]), {int(p): int(o) for p, o in doc["o"].items()})
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadToken(f"not a consistency token: {text!r}") from exc
    raise BadToken(f"not a consistency token: {text!r} (expected `s1.` or `k1.`)")


async def caught_up(pool: Pool, token: Token, consumer_group: str) -> bool:
    if isinstance(token, StoreToken):
        position = await pool.fetchval("SELECT position FROM rm.checkpoint")
        return bool(position >= token.position)
    rows = await pool.fetch(
        "SELECT partition, next_offset FROM public.consumer_offsets "
        "WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[])",
        consumer_group, token.topic, list(token.offsets),
    )  # fmt: skip
    stored = {r[0]: r[1] for r in rows}
    return all(stored.get(p, 0) > o for p, o in token.offsets.items())


class _Listener:
    """One LISTEN connection of a pool, shared by every wait in progress on it, and returned to
    the pool when the last one ends (so an idle service holds no connection for it)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.waiters: set[asyncio.Event] = set()
        self.con: Any = None
        self.lock = asyncio.Lock()

    def _notified(self, *_: object) -> None:
        for event in self.waiters:
            event.set()

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[tuple[asyncio.Event, bool]]:
        """An event set on every notification, and whether notifications will come."""
        event = asyncio.Event()
        async with self.lock:
            self.waiters.add(event)
            if self.con is None:
                try:
                    con = await self.pool.acquire()
                    try:
                        await con.add_listener(PROJECTED_CHANNEL, self._notified)
                    except BaseException:
                        await self.pool.release(con)
                        raise
                    self.con = con
                except Exception as exc:  # polling still works
                    log.warning("consistency waits poll: cannot LISTEN (%s)", exc)
            listening = self.con is not None and not self.con.is_closed()
        try:
            yield event, listening
        finally:
            async with self.lock:
                self.waiters.discard(event)
                if not self.waiters:
                    if _listeners.get(id(self.pool)) is self:
                        del _listeners[id(self.pool)]
                    if self.con is not None:
                        con, self.con = self.con, None
                        with contextlib.suppress(Exception):
                            await con.remove_listener(PROJECTED_CHANNEL, self._notified)
                        await self.pool.release(con)


# By id(pool) (a pool takes no weak reference); an entry lives only while a wait is in progress.
_listeners: dict[int, _Listener] = {}


async def wait_until(pool: Pool, token: Token, consumer_group: str, timeout_s: float) -> bool:
    """Wait until caught up or the timeout passes; return whether it caught up. Woken by the
    projector's notification of each committed batch (polling only as a fallback)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    listener = _listeners.get(id(pool))
    if listener is None or listener.pool is not pool:
        listener = _listeners[id(pool)] = _Listener(pool)
    async with listener.waiting() as (notified, listening):
        delay = 0.01
        while True:
            notified.clear()  # before the check: a batch committed after it wakes the wait
            if await caught_up(pool, token, consumer_group):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            pause = min(FALLBACK_POLL_S if listening else delay, left)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(notified.wait(), pause)
            delay = min(delay * 2, FALLBACK_POLL_S)

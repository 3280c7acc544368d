"""Consistency tokens: what a write returns so a later read can wait for the projection.

Two forms, one per transport:

- `s1.<position>` (embedded mode): caught up when the read models' checkpoint reaches the position.
- `k1.<base64 JSON {"t": topic, "o": {partition: offset}}>` (Kafka): caught up when the projector
  group's stored offset of every named partition is past the offset.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import orjson

from studbook_server.adapters.postgres import Pool


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


async def wait_until(pool: Pool, token: Token, consumer_group: str, timeout_s: float) -> bool:
    """Poll until caught up or the timeout passes; return whether it caught up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.01
    while True:
        if await caught_up(pool, token, consumer_group):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.2)

"""Where accepted events go: Kafka (deployment) or straight into the event store (embedded)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Incoming
from studbook_server.auth import Principal
from studbook_server.consistency import KafkaToken, StoreToken, Token
from studbook_server.domain import attestation
from studbook_server.domain.projection import StoredPrincipal
from studbook_server.errors import StudbookError

# The largest event Kafka takes: the broker's message.max.bytes (scripts/stack.py,
# docker-compose.yml) is set to the same.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class PublishUnavailable(StudbookError):
    """The transport could not take the events; nothing was acknowledged (clients retry)."""


class PublishTooLarge(StudbookError):
    """An event is larger than Kafka accepts; retrying cannot help (the client must split it)."""


class PublishRefused(StudbookError):
    """The event store refused an event as data (e.g. a value out of its column's range)."""


class PublishConflict(StudbookError):
    """An event id is already taken by a different event; nothing was stored."""

    def __init__(self, conflicts: Sequence[postgres.Conflict]) -> None:
        super().__init__("; ".join(c.reason for c in conflicts))
        self.conflicts = list(conflicts)


class Publisher(Protocol):
    async def publish(self, events: Sequence[Incoming], sender: Principal) -> Token:
        """Hand over events sent by ``sender`` (the authenticated principal, recorded with
        each event); return a token for reading them back once projected."""

    async def problem(self) -> str | None:
        """None when the transport is reachable, else what is wrong."""


class StorePublisher:
    """Embedded mode: append to the event store; the tailer projects from there."""

    def __init__(self, pool: postgres.Pool) -> None:
        self.pool = pool

    async def publish(self, events: Sequence[Incoming], sender: Principal) -> Token:
        who = StoredPrincipal(sender.token_id, sender.name)
        conflicts: list[postgres.Conflict] = []
        try:
            async with self.pool.acquire() as con, con.transaction():
                stored = await postgres.append(
                    con, [replace(i, principal=who) for i in events], conflicts
                )
                if conflicts:
                    raise PublishConflict(conflicts)  # rolls the whole request back
                position = stored[-1].position if stored else await postgres.head_position(con)
        except PublishConflict:
            raise
        except Exception as exc:
            if postgres.failure_kind(exc) == "retry":
                raise PublishUnavailable(f"the event store is unreachable: {exc}") from exc
            raise PublishRefused(f"the event store refused the events: {exc}") from exc
        return StoreToken(position)

    async def problem(self) -> str | None:
        return None  # the pool's own check covers it


class KafkaPublisher:
    """Deployment: produce to the events topic (idempotent producer, acks=all, key = subject)."""

    def __init__(self, bootstrap: str, topic: str, key: bytes) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.key = key  # signs the sender's principal on each record (domain/attestation.py)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_EVENT_BYTES,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, events: Sequence[Incoming], sender: Principal) -> Token:
        who = attestation.Attested(sender.token_id, sender.name, sender.scopes)
        try:
            futures = []
            for i in events:
                value = orjson.dumps(i.doc)
                futures.append(
                    await self.producer.send(
                        self.topic,
                        value,
                        key=i.event.subject.encode(),
                        headers=attestation.headers(self.key, value, who),
                    )
                )
            sent = await asyncio.gather(*futures)
        except MessageSizeTooLargeError as exc:
            raise PublishTooLarge(
                f"an event is larger than Kafka accepts ({MAX_EVENT_BYTES} bytes): send fewer "
                "metric points per event"
            ) from exc
        except KafkaError as exc:
            # Some events of the request may have been written: a retry re-sends them, and the
            # projector stores each event id once.
            raise PublishUnavailable(f"Kafka did not acknowledge every event: {exc}") from exc
        offsets: dict[int, int] = {}
        for meta in sent:
            offsets[meta.partition] = max(offsets.get(meta.partition, -1), meta.offset)
        return KafkaToken(self.topic, offsets)

    async def problem(self) -> str | None:
        try:
            await asyncio.wait_for(self.producer.client.force_metadata_update(), 3)
        except (KafkaError, TimeoutError) as exc:
            return f"unreachable: {exc!r}"
        return None

"""Where accepted events go: Kafka (deployment) or straight into the event store (embedded)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerIdMapping,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

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
# The most one partition's batch of records may carry in one produce request (aiokafka: 16 KiB).
PRODUCER_MAX_BATCH_BYTES = 1024 * 1024


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
    # Whether `publish` itself refuses a reused event id (PublishConflict), atomically with the
    # append; when not, the write path checks the store first.
    refuses_conflicts: bool

    async def publish(self, events: Sequence[Incoming], sender: Principal) -> Token:
        """Hand over events sent by ``sender`` (the authenticated principal, recorded with
        each event); return a token for reading them back once projected."""

    async def problem(self) -> str | None:
        """None when the transport is reachable, else what is wrong."""


class StorePublisher:
    """Embedded mode: append to the event store; the tailer projects from there."""

    refuses_conflicts = True

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


# Errors after which an idempotent producer never recovers by itself (after a broker restart its
# sequence numbers no longer match: every send fails until the process restarts): replace it.
_WEDGED = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced, InvalidProducerIdMapping)


class KafkaPublisher:
    """Deployment: produce to the events topic (idempotent producer, acks=all, key = subject).

    A publish answers within ``timeout_s`` (then :class:`PublishUnavailable`: the gateway says
    503 and the client retries, which is safe). A producer that failed is replaced before the
    next publish, so the gateway recovers by itself when the broker comes back.
    """

    refuses_conflicts = False  # the projector dead-letters a conflict that slips past

    def __init__(
        self, bootstrap: str, topic: str, key: bytes, timeout_s: float = 10.0,
        *, max_batch_bytes: int = PRODUCER_MAX_BATCH_BYTES,
    ) -> None:  # fmt: skip
        self.topic = topic
        self.max_batch_bytes = max_batch_bytes
        self.bootstrap = bootstrap
        self.key = key  # signs the sender's principal on each record (domain/attestation.py)
        self.timeout_s = timeout_s
        self.producer = self._new_producer()
        self._replace = False
        self._replacing = asyncio.Lock()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            acks="all",
            # A record waits at most 5 ms for others to share its request. aiokafka has one
            # request in flight per broker, so a request must be able to carry everything that
            # waited meanwhile: with the 16 KiB default, a steady 5k events/s of ~1 KB outgrew
            # what one request per round trip could carry, and acks (and freshness) fell
            # seconds behind. Memory is what is waiting, not this bound (docs/operations.md).
            linger_ms=5,
            max_batch_size=self.max_batch_bytes,
            max_request_size=MAX_EVENT_BYTES,
            # A send the broker does not answer fails in time for the gateway to say 503.
            request_timeout_ms=int(self.timeout_s * 1000),
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def _fresh_producer(self) -> None:
        async with self._replacing:
            if not self._replace:
                return
            old, self.producer = self.producer, self._new_producer()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), self.timeout_s)
            await asyncio.wait_for(self.producer.start(), self.timeout_s)
            # Only now: a producer whose start failed (the brokers still down) is replaced
            # again by the next publish, instead of taking records it can never deliver.
            self._replace = False

    async def publish(self, events: Sequence[Incoming], sender: Principal) -> Token:
        try:
            sent = await asyncio.wait_for(self._send(events, sender), self.timeout_s)
        except MessageSizeTooLargeError as exc:
            raise PublishTooLarge(
                f"an event is larger than Kafka accepts ({MAX_EVENT_BYTES} bytes): send fewer "
                "metric points per event"
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            # Some events of the request may have been written: a retry re-sends them, and the
            # projector stores each event id once.
            self._replace = isinstance(exc, (*_WEDGED, TimeoutError)) or self._replace
            raise PublishUnavailable(
                f"Kafka did not acknowledge every event within {self.timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from exc
        offsets: dict[int, int] = {}
        for meta in sent:
            offsets[meta.partition] = max(offsets.get(meta.partition, -1), meta.offset)
        return KafkaToken(self.topic, offsets)

    async def _send(self, events: Sequence[Incoming], sender: Principal) -> list[Any]:
        if self._replace:
            await self._fresh_producer()
        who = attestation.Attested(sender.token_id, sender.name, sender.scopes)
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
        return list(await asyncio.gather(*futures))

    async def problem(self) -> str | None:
        """None when a record can be delivered now, else what is wrong (operator terms)."""
        try:
            updated = await asyncio.wait_for(self.producer.client.force_metadata_update(), 3)
        except (KafkaError, TimeoutError):
            updated = False
        if not updated:
            return "the Kafka brokers do not answer"
        if self.producer.client.cluster.leader_for_partition(TopicPartition(self.topic, 0)) in (
            None,
            -1,
        ):
            return f"topic {self.topic} has no leader for partition 0"
        if self._replace:  # the brokers answer again: replace a failed producer now
            try:
                await self._fresh_producer()
            except (KafkaError, TimeoutError):
                return "the Kafka producer could not be restarted"
        return None

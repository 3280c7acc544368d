"""The projector: events in, trustworthy read models out.

Kafka mode (`STUDBOOK_KAFKA_BOOTSTRAP` set): a consumer group on the events topic. For each batch of
records, ONE PostgreSQL transaction appends the new events to the store, applies them to the read
models and stores the consumer offsets; offsets are never committed to Kafka, and on partition
assignment the consumer seeks to the offsets stored in PostgreSQL (effectively-once). Records that
are not valid events go to `dead_letters` with their reason and raw bytes, in the same transaction.

Embedded mode (no Kafka): the event store itself is the transport; the same projection code tails
it from the read models' checkpoint, woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from studbook_server import consistency
from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Incoming
from studbook_server.adapters.readmodels import apply_batch, catch_up
from studbook_server.adapters.retry import retrying, transient
from studbook_server.auth import GOVERNANCE_TYPES
from studbook_server.config import Settings, load_settings
from studbook_server.domain import attestation
from studbook_server.domain.contract import InvalidEvent, event_from_dict
from studbook_server.domain.projection import UNVERIFIED, StoredPrincipal

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Stats:
    """Counters a projector keeps; logged when it stops (dead letters are also logged one by
    one, and kept in `public.dead_letters`)."""

    batches: int = 0
    records: int = 0
    appended: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    invalid: int = 0  # records that are not valid events
    refused: int = 0  # valid events a projection rule refused
    conflicts: int = 0  # event ids already taken by a different event
    failed: int = 0  # records the database refused, stored one by one
    metric_points: int = 0
    retries: int = 0


class ProjectorMetrics:
    """The projector's Prometheus metrics (served on `/metrics` by `up`, and on
    STUDBOOK_METRICS_PORT by `studbook-server projector`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "studbook_projector_events", "Events appended to the store and projected",
            registry=registry,
        )  # fmt: skip
        self.points = Counter(
            "studbook_projector_metric_points", "Metric points projected", registry=registry
        )
        self.duplicates = Counter(
            "studbook_projector_duplicates", "Records already stored (re-deliveries)",
            registry=registry,
        )  # fmt: skip
        self.dead_letters = Counter(
            "studbook_projector_dead_letters",
            "Records dead-lettered, by kind: invalid (not a valid event), refused (by a "
            "projection rule), conflict (event id taken by another event), failed (the "
            "database refused it)",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "studbook_projector_retries", "Batches retried after a transient failure",
            registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "studbook_projector_batch_seconds", "Time to store and project one batch",
            registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )  # fmt: skip
        self.lag = Gauge(
            "studbook_projector_lag",
            "Not yet projected: records per Kafka partition, or events of the store (embedded)",
            ["partition"], registry=registry,
        )  # fmt: skip

    def observe(self, before: Stats, after: Stats) -> None:
        self.events.inc(after.appended - before.appended)
        self.points.inc(after.metric_points - before.metric_points)
        self.duplicates.inc(after.duplicates - before.duplicates)
        for kind, field_name in (
            ("invalid", "invalid"), ("refused", "refused"), ("conflict", "conflicts"),
            ("failed", "failed"),
        ):  # fmt: skip
            delta = getattr(after, field_name) - getattr(before, field_name)
            if delta:
                self.dead_letters.labels(kind).inc(delta)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: str | None
    source: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class Decoded:
    incoming: list[Incoming] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)  # id(incoming) -> where it came from


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decode_record(
    raw: bytes | None,
    source: str,
    headers: Sequence[tuple[str, bytes]] = (),
    key: bytes | None = None,
) -> Incoming | DeadLetter:
    """One Kafka record -> a validated event with its attested sender, or a dead letter saying
    what is wrong. ``key`` checks the gateway's signature over the sender (none: unverified)."""
    if raw is None:  # a tombstone (a key with no value, as sent to delete a key when compacting)
        return DeadLetter(None, source, "not an event: a record with no value (a tombstone)", b"")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(None, source, f"not valid JSON: {exc}", raw)
    except RecursionError:
        return DeadLetter(None, source, "not valid JSON: nested too deeply", raw)
    event_id = doc.get("event_id") if isinstance(doc, dict) else None
    # Only a well-formed id is kept: anything else (say, with a NUL) could not even be stored.
    event_id = event_id if isinstance(event_id, str) and _UUID.fullmatch(event_id) else None
    try:
        event = event_from_dict(doc)  # validates once, then upcasts
    except InvalidEvent as exc:
        reason = "; ".join(f"{v.path or '/'}: {v.message}" for v in exc.violations[:20])
        return DeadLetter(event_id, source, f"invalid event: {reason}", raw)
    if postgres.contains_nul(raw):
        # PostgreSQL's text and jsonb cannot hold NUL; storing it would fail the whole batch.
        return DeadLetter(
            event_id, source, "contains a NUL character (\\u0000), which cannot be stored", raw
        )
    sender = attestation.verify(key, raw, headers) if key is not None else None
    if event.type in GOVERNANCE_TYPES and (
        sender is None or not ({"approve", "admin"} & sender.scopes)
    ):
        return DeadLetter(
            event_id, source,
            f"`{event.type}` needs a sender authenticated with the `approve` scope, and this "
            "record carries no valid signature of one: send decisions through the gateway "
            "(POST /v1/events) or the GraphQL API with an `approve` token",
            raw,
        )  # fmt: skip
    principal = UNVERIFIED if sender is None else StoredPrincipal(sender.token_id, sender.name)
    return Incoming(doc, event, principal=principal)


_DEAD_LETTER = """
INSERT INTO public.dead_letters (event_id, position, source, reason, raw) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (position) WHERE position IS NOT NULL DO NOTHING
"""

_NOTIFY_PROJECTED = f"NOTIFY {consistency.PROJECTED_CHANNEL}"

_STORE_OFFSETS = """
INSERT INTO public.consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, $2, p, o FROM unnest($3::int[], $4::int8[]) AS x(p, o)
ON CONFLICT (group_id, topic, partition)
DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)
"""


async def store_batch(
    con: postgres.Connection,
    decoded: Decoded,
    *,
    group_id: str,
    topic: str,
    next_offsets: dict[int, int],
    stats: Stats,
) -> None:
    """Append, project, dead-letter and record offsets: one transaction."""
    async with con.transaction():
        conflicts: list[postgres.Conflict] = []
        stored = await postgres.append(con, decoded.incoming, conflicts)
        changes = await apply_batch(con, stored)
        # The same event id with another body: not a duplicate, a fact worth a dead letter.
        dead = decoded.dead + [
            DeadLetter(
                c.incoming.event.event_id, decoded.sources.get(id(c.incoming), "kafka"), c.reason,
                orjson.dumps(c.incoming.doc),
            )
            for c in conflicts
        ]  # fmt: skip
        if dead:
            await con.executemany(
                _DEAD_LETTER, [(d.event_id, None, d.source, d.reason, d.raw) for d in dead]
            )
        if next_offsets:
            parts = sorted(next_offsets)
            await con.execute(
                _STORE_OFFSETS, group_id, topic, parts, [next_offsets[p] for p in parts]
            )
            # Delivered at commit: wakes readers waiting on a consistency token at once.
            await con.execute(_NOTIFY_PROJECTED)
    stats.batches += 1
    stats.appended += len(stored)
    stats.duplicates += len(decoded.incoming) - len(stored) - len(conflicts)
    stats.conflicts += len(conflicts)
    stats.invalid += len(decoded.dead)
    stats.refused += len(changes.rejected)
    stats.dead_letters += len(dead) + len(changes.rejected)
    stats.metric_points += len(changes.metric_points)
    for d in dead:
        log.warning("dead-lettered record %s: %s", d.source, d.reason)


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, continue from the offsets PostgreSQL holds, not Kafka's."""

    def __init__(self, projector: KafkaProjector) -> None:
        self._p = projector

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Let the batch in flight commit first, so the next owner starts after it.
        async with self._p.busy:
            self._p.positioned.clear()
            self._p._assignments += 1

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._p.seek_to_stored(list(assigned))


class KafkaProjector:
    def __init__(
        self, settings: Settings, pool: postgres.Pool, *, name: str = "projector",
        metrics: ProjectorMetrics | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.pool = pool
        self.stats = Stats()
        self.name = name
        self.metrics = metrics
        self._done: dict[int, int] = {}  # partition -> next offset stored
        self._stopping = asyncio.Event()
        self._floor: dict[int, int] = {}
        # Set once the assigned partitions are positioned at the offsets PostgreSQL holds;
        # aiokafka completes an assignment before it awaits our listener, so `run` waits for it.
        self.positioned = asyncio.Event()
        self.busy = asyncio.Lock()  # held while a batch is being stored
        self.key: bytes | None = None  # checks the gateway's signature on each record's sender
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max_records,
            # Prefetch is memory: 4 MiB in all keeps the projector small (measured: 64 MiB of
            # prefetch took it past 300 MiB on long streams) without slowing it (bench/README.md).
            fetch_max_bytes=4 * 1024 * 1024,
            max_partition_fetch_bytes=1024 * 1024,
            # A fetch that finds nothing waits at the broker for at most this long; meanwhile no
            # other fetch goes to that broker, so it bounds how late a record on a partition
            # left out of that fetch is seen (docs/operations.md#freshness).
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        self._assignments = 0  # counts revocations: a batch gathered across one is dropped

    def stop(self) -> None:
        self._stopping.set()

    async def seek_to_stored(self, assigned: Sequence[TopicPartition]) -> None:
        """Position a new assignment at the offsets PostgreSQL holds (the rebalance listener)."""
        await self._position(assigned, "assigned")
        self.positioned.set()

    async def _position(self, assigned: Sequence[TopicPartition], why: str) -> None:
        if not assigned:
            return
        # Without the stored offsets nothing may be consumed: wait for PostgreSQL.
        async for attempt in retrying(self._stopping, f"{self.name}: reading stored offsets"):
            with attempt:
                rows = await self.pool.fetch(
                    """SELECT partition, next_offset FROM public.consumer_offsets
                       WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[])""",
                    self.settings.consumer_group,
                    self.settings.events_topic,
                    [tp.partition for tp in assigned],
                )
        stored = {r["partition"]: r["next_offset"] for r in rows}
        current = self.consumer.assignment()  # a rebalance may have begun while reading
        for tp in assigned:
            # Partitions without a stored offset start at the beginning by themselves
            # (auto_offset_reset=earliest, and nothing is ever committed to Kafka).
            if tp.partition in stored and tp in current:
                self.consumer.seek(tp, stored[tp.partition])
        # aiokafka may hand out records fetched before this seek ran; they are skipped below.
        self._floor.update(stored)
        log.info(
            "%s %s %s, resuming at %s",
            self.name,
            why,
            sorted(tp.partition for tp in assigned),
            stored,
        )

    async def run(self) -> None:
        async with self.pool.acquire() as con:
            self.key = await postgres.server_key(con, attestation.KEY_NAME)
        self.consumer.subscribe([self.settings.events_topic], listener=_SeekToStoredOffsets(self))
        await self.consumer.start()
        try:
            while not self._stopping.is_set():
                if not self.positioned.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.positioned.wait(), timeout=0.2)
                    continue
                batch = await self._next_batch()
                if batch:
                    await self._process(batch)
        finally:
            await self.consumer.stop()
            log.info("%s stopped: %s", self.name, self.stats)

    async def _next_batch(self) -> dict[TopicPartition, list[Any]]:
        """The next batch to store: what the consumer holds once a record is there, plus what
        it receives while more keeps coming (a gap of ``batch_idle_ms`` closes the batch), for
        at most ``batch_latency_ms`` after the first record and ``batch_max_records`` records.

        ``batch_timeout_ms`` only bounds one wait of an idle projector for a first record; it
        never delays a batch. See docs/operations.md#freshness."""
        s = self.settings
        assignments = self._assignments
        # At most 1 s at a time, so that a stop request is seen promptly whatever the setting.
        batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(
            timeout_ms=max(1, min(s.batch_timeout_ms, 1000)), max_records=s.batch_max_records
        )
        if not batch:
            return batch
        loop = asyncio.get_running_loop()
        close_at = loop.time() + s.batch_latency_ms / 1000
        count = sum(len(records) for records in batch.values())
        while s.batch_latency_ms > 0 and count < s.batch_max_records:
            left_ms = (close_at - loop.time()) * 1000
            if left_ms <= 0:
                break
            # Draining the buffer above sent the next fetch: its answer (what the broker has
            # now) comes within a round trip, or nothing more is immediately available.
            more = await self.consumer.getmany(
                timeout_ms=max(1, int(min(s.batch_idle_ms, left_ms))),
                max_records=s.batch_max_records - count,
            )
            if not more:
                break
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        if self._assignments != assignments:
            # Partitions were revoked meanwhile, so this batch may mix records of the old
            # assignment with records fetched after the new one was positioned. Drop it all, and
            # position again at the offsets PostgreSQL holds: the records fetched after the
            # listener's seek moved the position past themselves, and would otherwise never come
            # again (they were lost this way). Not yet positioned, the listener's seek is to come.
            if self.positioned.is_set():
                await self._position(
                    list(self.consumer.assignment()), "dropped a batch gathered across a rebalance:"
                )
            return {}
        return batch

    def _decode(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> list[tuple[int, int, bytes, Incoming | DeadLetter]]:
        """(partition, offset, raw value, decoded item) of the records not consumed before."""
        out = []
        for tp, records in batch.items():
            floor = self._floor.get(tp.partition, 0)
            for r in records:
                if r.offset >= floor:
                    source = f"kafka:{tp.topic}/{tp.partition}@{r.offset}"
                    item = decode_record(r.value, source, r.headers, self.key)
                    out.append((tp.partition, r.offset, r.value, item))
        self.stats.records += len(out)
        return out

    async def _store(
        self,
        con: postgres.Connection,
        items: Sequence[tuple[int, int, bytes, Incoming | DeadLetter]],
    ) -> None:
        decoded = Decoded()
        next_offsets: dict[int, int] = {}
        for partition, offset, _, item in items:
            if isinstance(item, DeadLetter):
                decoded.dead.append(item)
            else:
                decoded.incoming.append(item)
                decoded.sources[id(item)] = (
                    f"kafka:{self.settings.events_topic}/{partition}@{offset}"
                )
            next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
        await store_batch(
            con, decoded, group_id=self.settings.consumer_group,
            topic=self.settings.events_topic, next_offsets=next_offsets, stats=self.stats,
        )  # fmt: skip

    def _count_retry(self) -> None:
        self.stats.retries += 1
        if self.metrics is not None:  # now, not once the batch is stored: an outage shows
            self.metrics.retries.inc()

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        before, started = replace(self.stats), time.perf_counter()
        await self._process_items(batch)
        for tp, records in batch.items():
            if records:
                self._done[tp.partition] = max(
                    self._done.get(tp.partition, 0), records[-1].offset + 1
                )
        if self.metrics is not None:
            self.metrics.observe(before, self.stats)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            for tp in self.consumer.assignment():
                high = self.consumer.highwater(tp)
                if high is not None and tp.partition in self._done:
                    self.metrics.lag.labels(str(tp.partition)).set(
                        max(high - self._done[tp.partition], 0)
                    )

    def lag(self) -> int | None:
        """Records of the assigned partitions not projected yet (None: not known yet)."""
        total, known = 0, False
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None and tp.partition in self._done:
                total += max(high - self._done[tp.partition], 0)
                known = True
        return total if known else None

    async def _process_items(self, batch: dict[TopicPartition, list[Any]]) -> None:
        items = self._decode(batch)
        if not items:
            return
        async with self.busy:
            try:
                # Nothing is committed by a failed attempt: retry the same batch, never skip it.
                async for attempt in retrying(
                    self._stopping, f"{self.name}: storing a batch", self._count_retry
                ):
                    with attempt:
                        async with self.pool.acquire() as con:
                            await self._store(con, items)
            except Exception as exc:
                if postgres.failure_kind(exc) == "retry":
                    # Stopping: the offsets were not stored either, so this batch comes again.
                    log.warning("%s: stopping with an unstored batch (%s)", self.name, exc)
                    return
                # Not transient, so about some record of the batch: store event by event,
                # dead-lettering the one(s) responsible, so one bad event never stops the
                # pipeline (nor stops it again on every restart).
                log.warning(
                    "%s: a batch failed (%s: %s); storing it event by event",
                    self.name, type(exc).__name__, exc,
                )  # fmt: skip
                await self._store_one_by_one(items)

    async def _store_one_by_one(
        self, items: Sequence[tuple[int, int, bytes, Incoming | DeadLetter]]
    ) -> None:
        for one in items:
            try:
                async for attempt in retrying(
                    self._stopping, f"{self.name}: storing one record", self._count_retry
                ):
                    with attempt:
                        async with self.pool.acquire() as con:
                            try:
                                await self._store(con, [one])
                            except Exception as exc:
                                if postgres.failure_kind(exc) == "retry":
                                    raise
                                await self._store_refused(con, one, exc)
            except Exception as exc:
                if postgres.failure_kind(exc) == "retry":  # stopping: the rest comes again
                    return
                raise

    async def _store_refused(
        self, con: postgres.Connection, one: tuple[int, int, bytes, Incoming | DeadLetter],
        exc: BaseException,
    ) -> None:  # fmt: skip
        """Keep a record that cannot be projected: a valid event in the store (as sent) and in
        the dead letters with its position and the reason; then move past it. An event the
        store itself refuses is kept as a dead letter only, with both reasons."""
        partition, offset, raw, item = one
        source = f"kafka:{self.settings.events_topic}/{partition}@{offset}"
        reason = f"could not be applied: {type(exc).__name__}: {exc}"
        event_id = item.event.event_id if isinstance(item, Incoming) else item.event_id
        position = None
        try:
            async with con.transaction():
                if isinstance(item, Incoming):
                    stored = await postgres.append(con, [item])
                    position = stored[0].position if stored else None
                else:  # a dead letter the database refused: keep the bare facts
                    reason = f"{item.reason} (stored without details: {type(exc).__name__})"
                await self._dead_letter(
                    con, event_id, position, source, reason, raw, partition, offset
                )
        except Exception as second:
            if postgres.failure_kind(second) == "retry":
                raise
            position = None
            reason = f"{reason}; not stored: {type(second).__name__}: {second}"
            async with con.transaction():
                await self._dead_letter(con, event_id, None, source, reason, raw, partition, offset)
        self.stats.dead_letters += 1
        self.stats.failed += 1
        log.warning("dead-lettered %s (position %s): %s", source, position, reason)

    async def _dead_letter(
        self, con: postgres.Connection, event_id: str | None, position: int | None, source: str,
        reason: str, raw: bytes, partition: int, offset: int,
    ) -> None:  # fmt: skip
        await con.execute(_DEAD_LETTER, event_id, position, source, reason, raw)
        await con.execute(
            _STORE_OFFSETS, self.settings.consumer_group, self.settings.events_topic,
            [partition], [offset + 1],
        )  # fmt: skip
        await con.execute(_NOTIFY_PROJECTED)


class StoreTailer:
    """Embedded mode: project events appended straight to the store (no Kafka)."""

    def __init__(
        self, settings: Settings, *, batch: int = 5000, metrics: ProjectorMetrics | None = None
    ) -> None:
        self.settings = settings
        self.batch = batch
        self.metrics = metrics
        self.behind: int | None = None  # events of the store not projected yet
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def lag(self) -> int | None:
        return self.behind

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                async for attempt in retrying(self._stopping, "tailer: connecting to PostgreSQL"):
                    with attempt:
                        con = await postgres.connect(self.settings.database_url)
            except Exception as exc:
                if transient(exc):
                    return  # asked to stop while PostgreSQL was away
                raise
            try:
                await con.add_listener(postgres.NOTIFY_CHANNEL, lambda *_: self._wake.set())
                while not self._stopping.is_set():
                    self._wake.clear()
                    started = time.perf_counter()
                    applied = await catch_up(con, batch=self.batch)
                    if applied:  # the checkpoint moved: wake readers waiting on a token
                        await con.execute(_NOTIFY_PROJECTED)
                    self.behind = await postgres.head_position(con) - await con.fetchval(
                        "SELECT position FROM checkpoint"
                    )
                    if self.metrics is not None:
                        self.metrics.events.inc(applied)
                        self.metrics.lag.labels("store").set(self.behind)
                        if applied:
                            self.metrics.batch_seconds.observe(time.perf_counter() - started)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except Exception as exc:
                if postgres.failure_kind(exc) != "retry":
                    raise
                log.warning("tailer: lost PostgreSQL (%s); reconnecting", exc)
            finally:
                if not con.is_closed():
                    await con.close()


async def run_projector(settings: Settings | None = None) -> int:
    settings = settings or load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    async with postgres_pool(settings, stop_requested) as pool:
        if pool is None:
            return 0  # asked to stop while waiting for PostgreSQL
        async with pool.acquire() as con:
            await postgres.migrate(con)
        registry = CollectorRegistry()
        metrics = ProjectorMetrics(registry)
        if settings.metrics_port:
            start_http_server(settings.metrics_port, registry=registry)
        runner: KafkaProjector | StoreTailer
        runner = (
            KafkaProjector(settings, pool, metrics=metrics)
            if not settings.embedded
            else StoreTailer(settings, metrics=metrics)
        )
        # Finish the batch in hand, commit, then exit.
        loop.create_task(_forward_stop(stop_requested, runner))  # noqa: RUF006 - ends with the loop
        try:
            await runner.run()
        except KafkaError as exc:
            log.error("Kafka failed: %s", exc)
            return 1
    return 0


async def _forward_stop(requested: asyncio.Event, runner: KafkaProjector | StoreTailer) -> None:
    await requested.wait()
    runner.stop()


class postgres_pool:
    """A pool, waiting for PostgreSQL with back-off (or until ``stopping``) at start."""

    def __init__(self, settings: Settings, stopping: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.stopping = stopping or asyncio.Event()
        self.pool: postgres.Pool | None = None

    async def __aenter__(self) -> postgres.Pool | None:
        try:
            async for attempt in retrying(self.stopping, "connecting to PostgreSQL"):
                with attempt:
                    self.pool = await postgres.create_pool(self.settings.database_url)
        except Exception as exc:
            if transient(exc):
                return None  # asked to stop while waiting for PostgreSQL
            raise
        return self.pool

    async def __aexit__(self, *exc: object) -> None:
        if self.pool is not None:
            await self.pool.close()

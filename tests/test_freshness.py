"""The projector's batching policy against the real Kafka and PostgreSQL: a batch is written once
nothing more is immediately available, never held for its timeout or its latency cap, while a
backlog still goes in full batches; and a read-your-writes wait is woken by the batch's commit.

Every bound here is a setting made huge on purpose (ten minutes), so a test fails only if the
policy waits for it, not if the machine is slow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from studbook_server import consistency
from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Incoming
from studbook_server.adapters.publish import KafkaPublisher, StorePublisher
from studbook_server.auth import Principal
from studbook_server.config import Settings
from studbook_server.consistency import KafkaToken
from studbook_server.domain.contract import event_from_dict
from studbook_server.projector import KafkaProjector, StoreTailer
from tests.conftest import Services
from tests.support import attestation_key, ev, migrated, produce, settings_for

pytestmark = pytest.mark.services

Factory = Callable[..., Coroutine[Any, Any, str]]
TEN_MINUTES_MS = 600_000
WAIT_S = 60.0  # how long a test waits for what should take milliseconds
SENDER = Principal("tok-fresh", "fresh", frozenset({"write"}), frozenset({"churn"}))


@dataclass
class Running:
    settings: Settings
    projector: KafkaProjector
    pool: postgres.Pool
    task: asyncio.Task[None]


@pytest_asyncio.fixture
async def start(
    services: Services, database_factory: Factory, topic_factory: Factory
) -> AsyncIterator[Callable[..., Coroutine[Any, Any, Running]]]:
    """Starts a KafkaProjector on a fresh database and topic, positioned, with the settings
    given; stops it at the end."""
    running: list[Running] = []

    async def make(**settings: Any) -> Running:
        url = await database_factory()
        await migrated(url)
        topic = await topic_factory(partitions=4)
        s = settings_for(
            url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}", **settings
        )
        pool = await postgres.create_pool(url, max_size=4)
        projector = KafkaProjector(s, pool)
        r = Running(s, projector, pool, asyncio.create_task(projector.run()))
        running.append(r)
        await asyncio.wait_for(projector.positioned.wait(), WAIT_S)
        return r

    try:
        yield make
    finally:
        for r in running:
            r.projector.stop()
            await asyncio.wait_for(r.task, WAIT_S)
            await r.pool.close()


async def _stored(pool: postgres.Pool, settings: Settings) -> int:
    return int(
        await pool.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
            "WHERE group_id = $1 AND topic = $2",
            settings.consumer_group,
            settings.events_topic,
        )
    )


async def _until_stored(r: Running, total: int) -> None:
    async def poll() -> None:
        while await _stored(r.pool, r.settings) < total:
            assert not r.task.done(), "the projector stopped"
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


def _run_started(run: str) -> dict[str, Any]:
    return ev("run.started", f"run:{run}", {"name": run})


async def test_a_lone_event_is_written_without_waiting_for_the_timeout_or_the_cap(
    start: Callable[..., Coroutine[Any, Any, Running]], kafka_producer: AIOKafkaProducer
) -> None:
    # Both the idle poll and the batch's latency cap are ten minutes: only "nothing more is
    # immediately available" (batch_idle_ms) can close this batch before the test gives up.
    r = await start(batch_timeout_ms=TEN_MINUTES_MS, batch_latency_ms=TEN_MINUTES_MS)
    key = await attestation_key(r.settings.database_url)
    for n in range(1, 4):  # each one alone, one after the other: each its own batch
        await produce(kafka_producer, r.settings.events_topic, [_run_started(f"lone-{n}")], key=key)
        await _until_stored(r, n)
    assert r.projector.stats.batches == 3
    assert r.projector.stats.appended == 3
    assert await r.pool.fetchval("SELECT count(*) FROM rm.runs") == 3


async def test_a_backlog_is_stored_in_full_batches(
    start: Callable[..., Coroutine[Any, Any, Running]],
    kafka_producer: AIOKafkaProducer,
    services: Services,
) -> None:
    # The projector is positioned on an empty topic; 3,000 records then arrive at once. With no
    # idle gap or cap to close a batch early, every batch fills up to batch_max_records.
    r = await start(
        batch_max_records=1000, batch_latency_ms=TEN_MINUTES_MS, batch_idle_ms=TEN_MINUTES_MS
    )
    key = await attestation_key(r.settings.database_url)
    await produce(
        kafka_producer,
        r.settings.events_topic,
        [_run_started(f"bulk-{i}") for i in range(3000)],
        key=key,
    )
    await _until_stored(r, 3000)
    assert r.projector.stats.records == 3000
    assert r.projector.stats.batches == 3, "a backlog went in smaller batches than the maximum"


async def test_a_read_your_writes_wait_is_woken_by_the_batch_commit(
    start: Callable[..., Coroutine[Any, Any, Running]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With its fallback poll at ten minutes, the wait can end in time only by the projector's
    # notification of the batch that stores the event.
    monkeypatch.setattr(consistency, "FALLBACK_POLL_S", TEN_MINUTES_MS / 1000)
    r = await start(batch_timeout_ms=TEN_MINUTES_MS)
    key = await attestation_key(r.settings.database_url)
    publisher = KafkaPublisher(r.settings.kafka_bootstrap or "", r.settings.events_topic, key)
    await publisher.start()
    try:
        wire = _run_started("ryw")

        token = await publisher.publish([Incoming(wire, event_from_dict(wire))], SENDER)
    finally:
        await publisher.stop()
    assert isinstance(token, KafkaToken)
    waits = [
        consistency.wait_until(r.pool, token, r.settings.consumer_group, TEN_MINUTES_MS / 1000)
        for _ in range(3)  # three waits share one LISTEN connection
    ]
    assert await asyncio.wait_for(asyncio.gather(*waits), WAIT_S) == [True, True, True]
    assert await r.pool.fetchval("SELECT count(*) FROM rm.runs WHERE run_id = 'ryw'") == 1
    # The last wait gave its connection back: the pool holds no LISTEN connection when idle.
    assert id(r.pool) not in consistency._listeners
    assert r.pool.get_size() - r.pool.get_idle_size() == 0


async def test_a_wait_times_out_when_nothing_is_projected(
    start: Callable[..., Coroutine[Any, Any, Running]],
) -> None:
    r = await start()
    token = KafkaToken(r.settings.events_topic, {0: 10})  # an offset nothing was written at
    assert not await consistency.wait_until(r.pool, token, r.settings.consumer_group, 0.3)


async def test_an_embedded_wait_is_woken_by_the_tailer(
    database_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consistency, "FALLBACK_POLL_S", TEN_MINUTES_MS / 1000)
    url = await database_factory()
    await migrated(url)
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None)
    tailer = StoreTailer(settings)
    pool = await postgres.create_pool(url, max_size=4)
    task = asyncio.create_task(tailer.run())
    try:
        await asyncio.sleep(0.2)  # let the tailer reach its wait (it wakes on the append too)
        wire = _run_started("embedded")
        token = await StorePublisher(pool).publish([Incoming(wire, event_from_dict(wire))], SENDER)
        done = consistency.wait_until(pool, token, "unused", TEN_MINUTES_MS / 1000)
        assert await asyncio.wait_for(done, WAIT_S)
        assert await pool.fetchval("SELECT count(*) FROM rm.runs WHERE run_id = 'embedded'") == 1
    finally:
        tailer.stop()
        await asyncio.wait_for(task, WAIT_S)
        await pool.close()

"""Smoke tests: the real broker and the real database answer, round trip included."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import Services


async def test_kafka_round_trip_keeps_per_key_order(
    services: Services,
    kafka_producer: AIOKafkaProducer,
    topic_factory: Callable[..., Coroutine[Any, Any, str]],
) -> None:
    topic = await topic_factory(partitions=3)
    sent = [(f"run:{i % 4}", {"seq": i, "id": str(uuid.uuid4())}) for i in range(40)]
    for key, value in sent:
        await kafka_producer.send(topic, orjson.dumps(value), key=key.encode())
    await kafka_producer.flush()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[tuple[str, dict[str, Any], int]] = []
    try:
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"no records within 10 s; got {len(received)} of {len(sent)}"
            for tp, records in batch.items():
                for r in records:
                    assert r.key is not None
                    received.append((r.key.decode(), orjson.loads(r.value), tp.partition))
        partitions = {tp.partition for tp in consumer.assignment()}
        assert partitions == {0, 1, 2}
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        assert sum(ends.values()) == len(sent)
    finally:
        await consumer.stop()

    assert sorted(v["id"] for _, v, _ in received) == sorted(v["id"] for _, v in sent)
    for key in {k for k, _ in sent}:
        seqs = [v["seq"] for k, v, _ in received if k == key]
        assert seqs == sorted(seqs), f"order of key {key} not kept: {seqs}"
        assert len({p for k, _, p in received if k == key}) == 1, "one key spread over partitions"


async def test_postgres_round_trip(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as con, con.transaction():
        await con.execute(
            "CREATE TEMP TABLE smoke (id int PRIMARY KEY, body jsonb NOT NULL, at timestamptz)"
        )
        rows = [(i, orjson.dumps({"n": i}).decode(), None) for i in range(1000)]
        await con.copy_records_to_table("smoke", records=rows, columns=["id", "body", "at"])
        total = await con.fetchval("SELECT sum((body->>'n')::int) FROM smoke")
        version = await con.fetchval("SHOW server_version_num")
    assert total == sum(range(1000))
    assert int(version) >= 150000


async def test_each_database_from_the_factory_is_fresh(
    database_factory: Callable[[], Coroutine[Any, Any, str]],
) -> None:
    url = await database_factory()
    con = await asyncpg.connect(url)
    try:
        tables = await con.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        name = await con.fetchval("SELECT current_database()")
    finally:
        await con.close()
    assert tables == 0
    assert name.startswith("studbook_test_")
    assert name in url

"""The Kafka transport's producer settings and records, with a fake producer (no broker)."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
import pytest
from aiokafka.errors import KafkaError

from studbook import _kafka
from studbook._transport import Sent, Unavailable


class FakeProducer:
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.records: list[tuple[str, bytes, bytes]] = []
        self.stopped = False
        self.fail = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> Any:
        if self.fail:
            raise KafkaError("broker gone")
        self.records.append((topic, key, value))
        import asyncio

        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def stop(self) -> None:
        self.stopped = True


def event(subject: str) -> bytes:
    return orjson.dumps({"subject": subject, "payload": {}})


def test_kafka_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kafka, "AIOKafkaProducer", FakeProducer)
    transport = _kafka.KafkaTransport("kafka://h1:9092,h2:9093", "studbook.events")
    try:
        assert transport.send([event("run:1"), event("model:m")]) == Sent(None)
        producer = FakeProducer.instances[-1]
        assert producer.kwargs["bootstrap_servers"] == ["h1:9092", "h2:9093"]
        assert producer.kwargs["enable_idempotence"] is True
        assert producer.kwargs["acks"] == "all"
        assert [(t, k) for t, k, _ in producer.records] == [
            ("studbook.events", b"run:1"), ("studbook.events", b"model:m"),
        ]  # fmt: skip
        assert orjson.loads(producer.records[0][2])["subject"] == "run:1"
        producer.fail = True
        assert isinstance(transport.send([event("run:1")]), Unavailable)
        assert producer.stopped  # a fresh producer next time
        assert transport.send([event("run:1")]) == Sent(None)
        assert FakeProducer.instances[-1] is not producer
    finally:
        transport.close()

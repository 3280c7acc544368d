"""The Kafka transport: an idempotent aiokafka producer on the background thread's own loop.

Imported only for ``kafka://`` urls, so that ``import studbook`` never imports aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from studbook._transport import Outcome, Refused, Sent, Unavailable


def bootstrap_servers(url: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` -> ``["h1:9092", "h2:9092"]``."""
    return [hp for hp in urlsplit(url).netloc.split(",") if hp]


class KafkaTransport:
    """Produce each envelope as one record: key = subject (orders a subject's events within
    its partition), value = the JSON envelope; ``acks="all"`` and idempotence on."""

    def __init__(self, url: str, topic: str, *, timeout_s: float = 30.0) -> None:
        self._servers = bootstrap_servers(url)
        self._topic = topic
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._producer: Any = None

    def send(self, events: Sequence[bytes]) -> Outcome:
        return self._loop.run_until_complete(self._send(events))

    async def _send(self, events: Sequence[bytes]) -> Outcome:
        try:
            producer = await self._started()
            futures = []
            for data in events:
                subject = orjson.loads(data)["subject"]
                futures.append(await producer.send(self._topic, value=data, key=subject.encode()))
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)
        except MessageSizeTooLargeError as exc:
            return Refused(413, f"Kafka refused a record as too large: {exc}")
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._reset()
            return Unavailable(f"Kafka {','.join(self._servers)}: {exc!r}")
        return Sent(None)

    async def _started(self) -> Any:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._servers,
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=int(self._timeout_s * 1000),
                max_batch_size=256 * 1024,
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout_s)
            except BaseException:
                await self._stop(producer)
                raise
            self._producer = producer
        return self._producer

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    async def _stop(self, producer: Any) -> None:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(producer.stop(), self._timeout_s)

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._reset())
        finally:
            self._loop.close()

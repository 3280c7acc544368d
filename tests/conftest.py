"""Shared fixtures: the real Kafka broker and PostgreSQL server started by `scripts/stack up`.

Every test session gets a fresh database and fresh topic names, so runs never see each other's
data. A test that needs a service and cannot reach it fails with a message saying how to start it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HOW_TO_START = (
    "run the suite with `scripts/test` (it starts the services), or start them with "
    '`eval "$(scripts/stack up)"` before running pytest'
)


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    admin_database_url: str


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def services() -> Services:
    """Where the real services are; fails (never skips) when they are not there."""
    bootstrap = os.environ.get("STUDBOOK_KAFKA_BOOTSTRAP")
    db_url = os.environ.get("STUDBOOK_DATABASE_URL")
    if not bootstrap or not db_url:
        pytest.fail(
            "STUDBOOK_KAFKA_BOOTSTRAP and STUDBOOK_DATABASE_URL are not set: " + HOW_TO_START,
            pytrace=False,
        )
    if not _reachable(bootstrap):
        pytest.fail(f"Kafka is not reachable at {bootstrap}: {HOW_TO_START}", pytrace=False)
    netloc = urlsplit(db_url).netloc.rpartition("@")[2]
    if not _reachable(netloc):
        pytest.fail(f"PostgreSQL is not reachable at {netloc}: {HOW_TO_START}", pytrace=False)
    return Services(kafka_bootstrap=bootstrap, admin_database_url=db_url)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest_asyncio.fixture(scope="session")
async def database_factory(
    services: Services,
) -> AsyncIterator[Callable[[], Coroutine[Any, Any, str]]]:
    """Creates fresh, empty databases on the real server; drops them at the end of the session."""
    created: list[str] = []
    admin = await asyncpg.connect(services.admin_database_url)

    async def make() -> str:
        name = f"studbook_test_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')  # name made above, never from input
        created.append(name)
        return _with_database(services.admin_database_url, name)

    try:
        yield make
    finally:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest_asyncio.fixture(scope="session")
async def database_url(database_factory: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """A fresh database for this test session."""
    return await database_factory()


@pytest_asyncio.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(scope="session")
async def topic_factory(
    services: Services,
) -> AsyncIterator[Callable[..., Coroutine[Any, Any, str]]]:
    """Creates fresh topics on the real broker and deletes them at the end of the session."""
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def make(partitions: int = 4) -> str:
        name = f"studbook-test-{uuid.uuid4().hex[:12]}"
        await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
        created.append(name)
        # Metadata propagates asynchronously even on one broker; wait until it lists the topic.
        for _ in range(100):
            if name in await admin.list_topics():
                break
            await asyncio.sleep(0.05)
        return name

    try:
        yield make
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest_asyncio.fixture(scope="session")
async def kafka_producer(services: Services) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer (acks=all) on the real broker, like the services use."""
    producer = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()

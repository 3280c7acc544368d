"""`studbook-server status` against the real Kafka and PostgreSQL: per-partition lag and dead
letters by kind, as an operator sees them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.conftest import Services
from tests.support import at, attestation_key, ev, migrated, produce, project_all, settings_for

Factory = Callable[..., Coroutine[Any, Any, str]]


def _status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studbook_server.cli", "status", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_status_shows_lag_per_partition_and_dead_letters_by_kind(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group)
    key = await attestation_key(url)
    good = [ev("run.started", f"run:s{i}", {"name": "s"}) for i in range(4)]
    await produce(kafka_producer, topic, good, key=key)
    await produce(
        kafka_producer,
        topic,
        [b"{not json", ev("run.started", "run:x", {"name": "x"}, when="1900-01-01T00:00:00Z")],
    )
    await produce(
        kafka_producer,
        topic,
        [ev("model.alias.set", "model:m", {"alias": "a", "version": 3}, when=at(1))],
        key=key,
    )
    await project_all(settings, 7)
    env = {
        "STUDBOOK_DATABASE_URL": url, "STUDBOOK_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "STUDBOOK_EVENTS_TOPIC": topic, "STUDBOOK_CONSUMER_GROUP": group,
    }  # fmt: skip
    done = _status(env, "--json")
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["store"]["events"] == 5  # the 4 runs and the refused alias (kept in the store)
    assert status["read_models"]["behind"] == 0
    assert status["kafka"]["partitions"] == [{"partition": 0, "end": 7, "stored": 7, "lag": 0}]
    assert status["dead_letters"]["total"] == 3
    assert status["dead_letters"]["by_kind"] == {"invalid": 2, "refused": 1}
    # Records nobody projected yet show as lag.
    await produce(
        kafka_producer, topic, [ev("run.finished", "run:s0", {"status": "completed"})] * 1, key=key
    )
    text = _status(env)
    assert text.returncode == 0, text.stderr
    assert "partition 0: end 8, stored 7, lag 1" in text.stdout
    assert "dead letters: 3 (3 in the last day): invalid 2, refused 1" in text.stdout
    assert url.split("@")[0] not in text.stdout + text.stderr  # no password


def test_status_with_nothing_running_is_one_line(tmp_path: Any) -> None:
    env = {"STUDBOOK_DATABASE_URL": "", "STUDBOOK_DATA_DIR": str(tmp_path)}
    done = _status({**{k: v for k, v in os.environ.items() if k != "STUDBOOK_DATABASE_URL"}, **env})
    assert done.returncode == 1
    assert done.stderr.startswith("studbook-server status: error:")
    assert "Traceback" not in done.stderr

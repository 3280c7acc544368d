"""Hostile and unlucky input at the gateway and on the topic, against the real Kafka and
PostgreSQL: conflicting event ids, deep nesting, huge requests. Each gets a clear answer and
nothing else is held up or lost."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from studbook_server.domain.contract import MAX_DEPTH
from studbook_server.http import build_app
from studbook_server.writepath import MAX_EVENTS_PER_REQUEST, MAX_PROBLEMS_LISTED
from tests.conftest import Services
from tests.support import attestation_key, ev, migrated, produce, project_all, settings_for

Factory = Callable[..., Coroutine[Any, Any, str]]


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        node = {"a": node}
    return node


async def test_a_reused_event_id_is_a_conflict_not_a_duplicate(database_factory: Factory) -> None:
    url = await database_factory()
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=True)
    first = ev("run.started", "run:c", {"name": "first"})
    other = {**first, "payload": {"name": "someone else's"}}
    with TestClient(build_app("up", settings)) as client:
        r = client.post("/v1/events", json=[first, first])
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == [first["event_id"]]  # listed once
        assert client.post("/v1/events", json=[first]).status_code == 202  # a retry is fine
        r = client.post(
            "/v1/events", json=[ev("run.finished", "run:c", {"status": "completed"}), other]
        )
        assert r.status_code == 409
        [conflict] = r.json()["conflicts"]
        assert (conflict["index"], conflict["event_id"]) == (1, first["event_id"])
        assert conflict["stored_digest"].startswith("sha256:")
        assert conflict["digest"].startswith("sha256:")
        assert conflict["stored_digest"] != conflict["digest"]
        # Within one request too, and nothing of a refused request is stored.
        fresh = ev("run.started", "run:d", {"name": "d"})
        r = client.post(
            "/v1/events",
            json=[
                fresh,
                {
                    **fresh,
                    "type": "run.finished",
                    "schema_version": 1,
                    "payload": {"status": "failed"},
                },
            ],
        )
        assert r.status_code == 409
        metrics = client.get("/metrics").text
        assert 'studbook_events_refused_total{status="409"} 4.0' in metrics
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.events") == 1
        assert await con.fetchval("SELECT payload->>'name' FROM public.events") == "first"
    finally:
        await con.close()


async def test_conflicts_and_deep_nesting_on_the_topic_are_dead_letters(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=1)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    first = ev("annotation.added", "run:k", {"text": "one"})
    conflicting = {**first, "payload": {"text": "two"}}
    # Nested deeper than orjson can even encode: built as text, as a hostile producer would.
    deep = ev("annotation.added", "run:k", {"text": "deep", "labels": "@"})
    deep_bytes = orjson.dumps(deep).replace(b'"@"', b'{"a":' * 300 + b'{"leaf":1}' + b"}" * 300)
    after = ev("annotation.added", "run:k", {"text": "after"})
    key = await attestation_key(url)
    await produce(kafka_producer, topic, [first, first], key=key)  # a plain re-delivery
    await produce(kafka_producer, topic, [conflicting], key=key)
    await kafka_producer.send(topic, deep_bytes, key=b"run:k")
    await produce(kafka_producer, topic, [after], key=key)
    [runner] = await project_all(settings, 5)
    assert (runner.stats.appended, runner.stats.duplicates, runner.stats.conflicts) == (2, 1, 1)
    con = await postgres.connect(url)
    try:
        texts = sorted(r[0] for r in await con.fetch("SELECT text FROM rm.annotations"))
        assert texts == ["after", "one"]
        reasons = sorted(r[0] for r in await con.fetch("SELECT reason FROM public.dead_letters"))
        assert len(reasons) == 2
        assert any(f"nested more than {MAX_DEPTH} levels deep" in r for r in reasons), reasons
        assert any("is already taken by a different event" in r for r in reasons), reasons
    finally:
        await con.close()


async def test_deep_and_huge_requests_get_bounded_answers(database_factory: Factory) -> None:
    url = await database_factory()
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=True)
    with TestClient(build_app("up", settings)) as client:
        # Nested a few hundred levels: a 422 naming the place, not a 500 (and the connection
        # stays usable for the next request).
        r = client.post(
            "/v1/events",
            json=[ev("annotation.added", "run:x", {"text": "t", "labels": _nested(300)})],
        )
        assert r.status_code == 422
        [error] = r.json()["errors"]
        assert error["path"].startswith("/payload/labels/a/a")
        assert f"more than {MAX_DEPTH} levels deep" in error["message"]
        assert (
            client.post("/v1/events", json=[ev("run.started", "run:x", {"name": "x"})]).status_code
            == 202
        )
        # 100k empty objects (300 KB): refused at once, with a short answer.
        r = client.post("/v1/events", content=b"[" + b",".join([b"{}"] * 100_000) + b"]")
        assert r.status_code == 413
        assert str(MAX_EVENTS_PER_REQUEST) in r.json()["error"]
        assert len(r.content) < 1000
        # 5000 bad events: the first problems and a count, not 5000 descriptions.
        r = client.post("/v1/events", json=[{}] * 5000)
        assert r.status_code == 422
        body = r.json()
        assert len(body["errors"]) == MAX_PROBLEMS_LISTED
        assert body["errors_not_listed"] + body["events_not_checked"] > 0
        assert len(r.content) < 100_000
        # A large valid body is validated off the event loop and accepted.
        big = [
            ev(
                "run.metrics.logged",
                "run:x",
                {
                    "metrics": [
                        {"key": "loss", "value": i / 7, "step": i} for i in range(s, s + 1000)
                    ]
                },
            )
            for s in range(0, 20_000, 1000)
        ]
        assert len(orjson.dumps(big)) > 256 * 1024
        r = client.post("/v1/events", json=big)
        assert r.status_code == 202, r.text

"""Model version numbers are given by the write path when it accepts a registration (one round
trip), once per event id, against real Kafka and PostgreSQL (docs/write-path.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from studbook_server import numbering
from studbook_server.adapters import postgres
from studbook_server.domain.contract import event_from_dict
from studbook_server.http import build_app
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import (
    assert_same_read_models,
    attestation_key,
    dump_read_models,
    ev,
    migrated,
    produce,
    project_all,
    settings_for,
)

Factory = Callable[..., Coroutine[Any, Any, str]]


def _registration(model: str, uri: str, **payload: Any) -> dict[str, Any]:
    return ev("model.version.registered", f"model:{model}", {"artifact_uri": uri, **payload})


def _wait(client: TestClient, token: str) -> None:
    for _ in range(400):
        if client.get("/v1/consistency", params={"token": token}).json()["caught_up"]:
            return
        time.sleep(0.025)
    raise AssertionError(f"the projector never reached {token}")


def _versions(client: TestClient, model: str) -> dict[int, str]:
    query = f'{{ model(id: "churn/model:{model}") {{ versions {{ nodes {{ number artifactUri }} }} }} }}'
    answer = client.post("/graphql", json={"query": query}).json()
    assert "errors" not in answer, answer
    return {v["number"]: v["artifactUri"] for v in answer["data"]["model"]["versions"]["nodes"]}


async def test_embedded_answer_carries_the_number_and_a_retry_gets_the_same(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=True)
    first, second = _registration("clf", "s3://m/1"), _registration("clf", "s3://m/2")
    with TestClient(build_app("up", settings)) as client:
        r = client.post("/v1/events", json=[first, second])
        assert r.status_code == 202, r.text
        assert r.json()["model_versions"] == [
            {"event_id": first["event_id"], "model": "clf", "version": 1},
            {"event_id": second["event_id"], "model": "clf", "version": 2},
        ]
        # The SDK's spool and clients re-send after a timeout: the same event keeps its number.
        again = client.post("/v1/events", json=[second])
        assert again.status_code == 202, again.text
        assert again.json()["model_versions"][0]["version"] == 2
        third = client.post("/v1/events", json=[_registration("clf", "s3://m/3")])
        assert third.json()["model_versions"][0]["version"] == 3
        other = client.post("/v1/events", json=[_registration("other", "s3://o/1")])
        assert other.json()["model_versions"][0]["version"] == 1  # numbered per model
        _wait(client, third.json()["consistency_token"])
        assert _versions(client, "clf") == {1: "s3://m/1", 2: "s3://m/2", 3: "s3://m/3"}

        claimed = _registration("clf", "s3://m/x", version=7)
        refused = client.post("/v1/events", json=[claimed])
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["path"] == "/payload/version"
        assert "assigned by the server" in refused.json()["errors"][0]["message"]
    con = await postgres.connect(url)
    try:
        stored = await con.fetchval(
            "SELECT payload->>'version' FROM public.events WHERE event_id = $1::uuid",
            second["event_id"],
        )
        assert stored == "2"  # the number is part of the recorded event
        assert await con.fetchval("SELECT count(*) FROM model_versions") == 4
    finally:
        await con.close()


async def test_concurrent_registrations_get_distinct_numbers(database_factory: Factory) -> None:
    url = await database_factory()
    await migrated(url)
    pool = await postgres.create_pool(url, max_size=8)
    try:
        docs = [_registration("race", f"s3://r/{n}") for n in range(24)]
        incoming = [postgres.Incoming(d, event_from_dict(d, 0)) for d in docs]
        answers = await asyncio.gather(*(numbering.stamp(pool, [i]) for i in incoming))
        numbers = sorted(n for a in answers for n in a.values())
        assert numbers == list(range(1, 25))
        # Each event carries the number it was given, in its wire document too.
        for i, a in zip(incoming, answers, strict=True):
            assert i.doc["payload"]["version"] == a[i.event.event_id]
        again = await numbering.stamp(pool, incoming[:3])
        assert again == {i.event.event_id: i.doc["payload"]["version"] for i in incoming[:3]}
    finally:
        await pool.close()


async def test_kafka_numbers_on_acceptance_after_versions_the_projector_numbered(
    services: Services,
    database_factory: Factory,
    topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group, auth_disabled=True)
    # A registration that never passed the write path (the SDK's kafka:// transport): the
    # projector numbers it, and the write path's numbers continue after it.
    direct = _registration("clf", "s3://m/direct")
    await produce(kafka_producer, topic, [direct], key=await attestation_key(url))
    await project_all(settings, 1)
    via = _registration("clf", "s3://m/gateway")
    with TestClient(build_app("up", settings)) as client:
        r = client.post("/v1/events", json=[via])
        assert r.status_code == 202, r.text
        assert r.json()["model_versions"] == [
            {"event_id": via["event_id"], "model": "clf", "version": 2}
        ]
        _wait(client, r.json()["consistency_token"])
        assert _versions(client, "clf") == {1: "s3://m/direct", 2: "s3://m/gateway"}
    # A number already given cannot be given again by a producer writing to the topic: the
    # event is dead-lettered with its reason, not lost, and version 2 stays the gateway's.
    forged = _registration("clf", "s3://m/forged", version=2)
    await produce(kafka_producer, topic, [forged], key=await attestation_key(url))
    await project_all(settings, 3)
    con = await postgres.connect(url)
    try:
        reason = await con.fetchval(
            "SELECT reason FROM public.dead_letters WHERE event_id = $1", forged["event_id"]
        )
        assert reason is not None
        assert "version 2 of model `clf` is taken" in reason
        assert (
            await con.fetchval(
                "SELECT artifact_uri FROM model_versions WHERE model = 'clf' AND number = 2"
            )
            == "s3://m/gateway"
        )
    finally:
        await con.close()
    live = await dump_read_models(url)
    await rebuild(url)  # the numbers are in the events: a rebuild gives the same ones
    assert_same_read_models(live, await dump_read_models(url))

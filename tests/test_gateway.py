"""The ingest gateway over HTTP, against real Kafka and PostgreSQL: auth, validation, limits,
publishing and consistency tokens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from starlette.testclient import TestClient

from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.http import build_app
from tests.conftest import Services
from tests.support import ev, migrated, project_all, settings_for

Factory = Callable[..., Coroutine[Any, Any, str]]


async def _tokens(url: str) -> dict[str, str]:
    con = await postgres.connect(url)
    try:
        made = {
            "writer": await auth.create_token(con, "writer", ["write"], ["churn"]),
            "reader": await auth.create_token(con, "reader", ["read"], ["*"]),
            "other": await auth.create_token(con, "other", ["write"], ["fraud"]),
            "admin": await auth.create_token(con, "admin", ["admin"], ["*"]),
            "revoked": await auth.create_token(con, "revoked", ["write"], ["*"]),
        }
        assert await auth.revoke_token(con, made["revoked"][0])
    finally:
        await con.close()
    return {k: v[1] for k, v in made.items()}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_auth_validation_limits_and_publishing_through_kafka(
    services: Services, database_factory: Factory, topic_factory: Factory
) -> None:
    url = await database_factory()
    await migrated(url)
    tokens = await _tokens(url)
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group, max_body_bytes=64_000)
    good = [
        ev("run.started", "run:gw-1", {"name": "through the gateway"}),
        ev(
            "run.metrics.logged",
            "run:gw-1",
            {"metrics": [{"key": "loss", "value": 0.5, "step": 1}]},
        ),
    ]
    with TestClient(build_app("ingest", settings)) as client:
        post = client.post
        # Authentication and authorisation.
        assert post("/v1/events", json=good).status_code == 401
        assert post("/v1/events", json=good, headers=_bearer("sbk_nope_nope")).status_code == 401
        assert post("/v1/events", json=good, headers=_bearer(tokens["revoked"])).status_code == 401
        r = post("/v1/events", json=good, headers=_bearer(tokens["reader"]))
        assert r.status_code == 403
        assert "write" in r.json()["error"]
        r = post("/v1/events", json=good, headers=_bearer(tokens["other"]))
        assert r.status_code == 403, r.text
        assert "churn" in r.json()["error"]

        # Validation: every problem, with the event's index and the field's path; nothing published.
        bad = [
            *good,
            ev("run.metrics.logged", "run:gw-1", {"metrics": [{"key": "l", "value": "x"}]}),
        ]
        r = post("/v1/events", json=bad, headers=_bearer(tokens["writer"]))
        assert r.status_code == 422
        errors = r.json()["errors"]
        assert [(e["index"], e["path"]) for e in errors] == [(2, "/payload/metrics/0/value")]
        assert "number" in errors[0]["message"]
        r = post("/v1/events", content=b"{oops", headers=_bearer(tokens["writer"]))
        assert r.status_code == 422
        assert "not valid JSON" in r.json()["errors"][0]["message"]
        nul = ev("annotation.added", "run:gw-1", {"text": "a\u0000b"})
        r = post("/v1/events", json=[nul], headers=_bearer(tokens["writer"]))
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "/payload/text"

        # Size limit.
        huge = [ev("annotation.added", "run:gw-1", {"text": "x" * 9000}) for _ in range(10)]
        r = post("/v1/events", json=huge, headers=_bearer(tokens["writer"]))
        assert r.status_code == 413
        assert "64000" in r.json()["error"]

        # Accepted: one object, an array, NDJSON.
        r = post("/v1/events", json=good[0], headers=_bearer(tokens["writer"]))
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == [good[0]["event_id"]]
        ndjson = b"\n".join(orjson.dumps(e) for e in good) + b"\n"
        r = post(
            "/v1/events", content=ndjson,
            headers={**_bearer(tokens["admin"]), "content-type": "application/x-ndjson"},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == [e["event_id"] for e in good]
        token = body["consistency_token"]
        assert token.startswith("k1.")

        check = client.get(
            "/v1/consistency", params={"token": token}, headers=_bearer(tokens["reader"])
        )
        assert check.json()["caught_up"] is False
        assert client.get("/readyz").json()["checks"] == {"postgres": "ok", "kafka": "ok"}
        metrics = client.get("/metrics").text
        assert "studbook_events_accepted_total 3.0" in metrics
        assert "studbook_events_rejected_total 5.0" in metrics
        assert 'studbook_http_requests_total{route="/v1/events",status="401"} 3.0' in metrics

        # Three records reached Kafka (good[0] twice); the projector stores two events.
        await project_all(settings, 3)
        check = client.get(
            "/v1/consistency", params={"token": token}, headers=_bearer(tokens["reader"])
        )
        assert check.json()["caught_up"] is True
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.events") == 2
        assert await con.fetchval("SELECT value FROM run_metrics WHERE run_id = 'gw-1'") == 0.5
    finally:
        await con.close()


async def test_embedded_gateway_appends_to_the_store_and_the_token_waits_for_projection(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=True)
    events = [
        ev("run.started", "run:emb", {"name": "embedded"}),
        ev("run.finished", "run:emb", {"status": "completed"}),
    ]
    with TestClient(build_app("up", settings)) as client:
        r = client.post("/v1/events", json=events)
        assert r.status_code == 202, r.text
        token = r.json()["consistency_token"]
        assert token == "s1.2"
        # Re-sending is idempotent and answers with the same position.
        assert client.post("/v1/events", json=events).json()["consistency_token"] == "s1.2"
        for _ in range(100):
            if client.get("/v1/consistency", params={"token": token}).json()["caught_up"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the embedded tailer never projected the events")
        bad = client.get("/v1/consistency", params={"token": "zz"})
        assert bad.status_code == 400
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT status FROM runs WHERE run_id = 'emb'") == "completed"
        assert await con.fetchval("SELECT count(*) FROM public.events") == 2
    finally:
        await con.close()


async def test_up_with_kafka_configured_publishes_and_projects_in_one_process(
    services: Services, database_factory: Factory, topic_factory: Factory
) -> None:
    url = await database_factory()
    topic = await topic_factory(partitions=2)
    settings = settings_for(
        url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}", auth_disabled=True
    )
    events = [
        ev("run.started", "run:both", {"name": "up on Kafka"}),
        ev("run.finished", "run:both", {"status": "completed"}),
    ]
    with TestClient(build_app("up", settings)) as client:
        r = client.post("/v1/events", json=events)
        assert r.status_code == 202, r.text
        token = r.json()["consistency_token"]
        assert token.startswith("k1.")  # through Kafka, not the store
        for _ in range(200):
            if client.get("/v1/consistency", params={"token": token}).json()["caught_up"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the projector inside `up` never consumed the events")
        ready = client.get("/readyz").json()
        assert ready["checks"] == {"postgres": "ok", "kafka": "ok", "projector": "ok"}
        assert ready["projector_lag"] == 0  # it consumed everything
        answer = client.post(
            "/graphql", json={"query": '{ run(id: "churn/run:both") { status } }'}
        ).json()
        assert answer["data"]["run"]["status"] == "COMPLETED"

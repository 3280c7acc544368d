"""metricPoints over graphql-transport-ws: points arrive once projected, in store order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.testclient import TestClient, WebSocketTestSession

from studbook_server.adapters import postgres
from tests.graphql.conftest import append_and_project, make_app, make_tokens
from tests.support import ev, migrated, scenario

Factory = Callable[..., Coroutine[Any, Any, str]]

SUBSCRIBE = """subscription($run: ID!, $keys: [String!], $after: Int) {
  metricPoints(run: $run, keys: $keys, afterPosition: $after) { key step value position } }"""


def _open(ws: WebSocketTestSession, token: str | None) -> None:
    payload = {"authorization": f"Bearer {token}"} if token else {}
    ws.send_json({"type": "connection_init", "payload": payload})
    assert ws.receive_json()["type"] == "connection_ack"


def _subscribe(ws: WebSocketTestSession, sub_id: str, variables: dict[str, Any]) -> None:
    ws.send_json(
        {"id": sub_id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": variables}}
    )


def _points(ws: WebSocketTestSession, n: int) -> list[tuple[str, int, float]]:
    out = []
    while len(out) < n:
        msg = ws.receive_json()
        assert msg["type"] == "next", msg
        p = msg["payload"]["data"]["metricPoints"]
        out.append((p["key"], p["step"], p["value"]))
    return out


async def test_metric_points_stream_as_they_are_projected(database_factory: Factory) -> None:
    url = await database_factory()
    await migrated(url)
    await append_and_project(url, scenario())
    tokens = await make_tokens(url)
    con = await postgres.connect(url)
    try:
        checkpoint = await con.fetchval("SELECT position FROM rm.checkpoint")
    finally:
        await con.close()
    batch = [
        ev("run.metrics.logged", "run:run-2", {"metrics": [
            {"key": "acc", "value": 0.7, "step": 1}, {"key": "loss", "value": 0.3, "step": 5}]}),
        ev("run.metrics.logged", "run:run-2", {"metrics": [{"key": "acc", "value": 0.8, "step": 2}]}),
        ev("run.metrics.logged", "run:run-1", {"metrics": [{"key": "acc", "value": 0.1, "step": 1}]}),
    ]  # fmt: skip
    with (
        TestClient(make_app(url)) as client,
        client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws,
    ):
        _open(ws, tokens["reader"])
        # Replay a run's history from the start of the store...
        _subscribe(ws, "history", {"run": "churn/run:run-1", "after": 0})
        assert _points(ws, 10) == [("loss", s, 1.0 / (s + 1)) for s in range(10)]
        ws.send_json({"id": "history", "type": "complete"})
        # ...and follow another from now on, one key only.
        _subscribe(ws, "live", {"run": "churn/run:run-2", "keys": ["acc"], "after": checkpoint})
        # The client blocks this thread's loop while it waits, so write from another one.
        await asyncio.to_thread(asyncio.run, append_and_project(url, batch))
        assert _points(ws, 2) == [("acc", 1, 0.7), ("acc", 2, 0.8)]
        ws.send_json({"id": "live", "type": "complete"})


async def test_subscriptions_need_a_token(scenario_db: Any) -> None:
    with TestClient(make_app(scenario_db.url)) as client:
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            _open(ws, None)
            _subscribe(ws, "1", {"run": "churn/run:run-1", "after": 0})
            msg = ws.receive_json()
            assert msg["type"] in ("next", "error"), msg
            errors = msg["payload"]["errors"] if msg["type"] == "next" else msg["payload"]
            assert errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            _open(ws, scenario_db.tokens["fraud-reader"])
            _subscribe(ws, "1", {"run": "churn/run:run-1", "after": 0})
            msg = ws.receive_json()
            errors = msg["payload"]["errors"] if msg["type"] == "next" else msg["payload"]
            assert errors[0]["extensions"]["code"] == "FORBIDDEN"


async def test_one_connection_holds_at_most_ten_subscriptions(database_factory: Factory) -> None:
    from studbook_server.graphql._subscriptions import MAX_PER_CONNECTION

    url = await database_factory()
    await migrated(url)
    await append_and_project(url, scenario())
    tokens = await make_tokens(url)
    with (
        TestClient(make_app(url)) as client,
        client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws,
    ):
        _open(ws, tokens["reader"])
        for i in range(MAX_PER_CONNECTION + 1):
            _subscribe(ws, f"s{i}", {"run": "churn/run:run-1"})
        refused = ws.receive_json()
        assert (refused["type"], refused["id"]) == ("next", f"s{MAX_PER_CONNECTION}"), refused
        assert (
            "at most 10 subscriptions per connection" in refused["payload"]["errors"][0]["message"]
        )
        assert ws.receive_json() == {"id": f"s{MAX_PER_CONNECTION}", "type": "complete"}
        # Closing one makes room for another, served like the first ones.
        ws.send_json({"id": "s0", "type": "complete"})
        await asyncio.sleep(0.3)
        _subscribe(ws, "again", {"run": "churn/run:run-1", "after": 0})
        msg = ws.receive_json()
        assert (msg["type"], msg["id"]) == ("next", "again"), msg
        assert msg["payload"]["data"]["metricPoints"]["key"] == "loss"

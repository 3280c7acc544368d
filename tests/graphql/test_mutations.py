"""Mutations emit events through the store; a consistency token makes the next read wait for them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from tests.graphql.conftest import Api, append_and_project, make_app, make_tokens, project
from tests.support import migrated, scenario

Factory = Callable[..., Coroutine[Any, Any, str]]

SET_ALIAS = """mutation($mv: ID!, $alias: String!) {
  setAlias(modelVersion: $mv, alias: $alias) { eventId consistencyToken } }"""
BY_ALIAS = """query($alias: String!) {
  modelVersionByAlias(project: "churn", model: "churn-clf", alias: $alias) { number } }"""


@pytest_asyncio.fixture
async def db(database_factory: Factory) -> tuple[str, dict[str, str]]:
    url = await database_factory()
    await migrated(url)
    await append_and_project(url, scenario())
    return url, await make_tokens(url)


@pytest.fixture
def api(db: tuple[str, dict[str, str]]) -> Iterator[Api]:
    url, tokens = db
    with TestClient(make_app(url, consistency_timeout_s=5.0)) as client:
        yield Api(client, tokens)


def _project_later(url: str, delay_s: float) -> threading.Thread:
    """Project the store after ``delay_s``, in another thread (the test client blocks this one)."""

    async def later() -> None:
        await asyncio.sleep(delay_s)
        await project(url)

    thread = threading.Thread(target=asyncio.run, args=(later(),))
    thread.start()
    return thread


async def _events(url: str, type_: str) -> list[Any]:
    con = await postgres.connect(url)
    try:
        return list(
            await con.fetch(
                "SELECT actor, payload, subject, event_id::text FROM public.events WHERE type = $1 ORDER BY position",
                type_,
            )
        )
    finally:
        await con.close()


async def test_read_your_writes_with_the_header_and_with_the_extension(
    api: Api, db: tuple[str, dict[str, str]]
) -> None:
    url, _ = db
    result = api.query(
        SET_ALIAS, {"mv": "churn/model_version:churn-clf@2", "alias": "champion"}, token="writer"
    )
    out = result["setAlias"]
    assert out["consistencyToken"].startswith("s1.")
    stored = (await _events(url, "model.alias.set"))[-1]
    assert stored["event_id"] == out["eventId"]
    assert stored["actor"] == "writer"
    assert stored["payload"] == {"alias": "champion", "version": 2}
    # Not projected yet: a plain read does not see it.
    assert api.query(BY_ALIAS, {"alias": "champion"})["modelVersionByAlias"] is None
    thread = _project_later(url, 0.5)
    started = time.monotonic()
    seen = api.query(
        BY_ALIAS, {"alias": "champion"}, headers={"x-studbook-consistency": out["consistencyToken"]}
    )["modelVersionByAlias"]
    waited = time.monotonic() - started
    thread.join()
    assert seen == {"number": 2}
    assert waited >= 0.3, "the read did not wait for the projection"

    approve = api.query(
        """mutation { approve(modelVersion: "churn/model_version:churn-clf@2", comment: "fixed",
                              evidence: ["s3://reports/2.html"]) { consistencyToken } }""",
        token="reviewer",
    )["approve"]
    thread = _project_later(url, 0.5)
    approvals = api.query(
        """{ modelVersion(id: "churn/model_version:churn-clf@2") { approved approvals { decision comment reviewer } } }""",
        extensions={"consistencyToken": approve["consistencyToken"]},
    )["modelVersion"]
    thread.join()
    assert approvals["approved"] is True
    assert approvals["approvals"][-1] == {
        "decision": "APPROVED",
        "comment": "fixed",
        "reviewer": "reviewer",
    }


async def test_a_token_the_projection_does_not_reach_in_time_is_an_error(
    db: tuple[str, dict[str, str]],
) -> None:
    url, tokens = db
    with TestClient(make_app(url, consistency_timeout_s=0.3)) as client:
        api = Api(client, tokens)
        out = api.query(
            SET_ALIAS, {"mv": "churn/model_version:churn-clf@1", "alias": "canary"}, token="writer"
        )
        headers = {"x-studbook-consistency": out["setAlias"]["consistencyToken"]}
        error = api.errors(BY_ALIAS, {"alias": "canary"}, headers=headers)[0]
        assert error["extensions"]["code"] == "NOT_CAUGHT_UP"
        assert "has not caught up" in error["message"]
        assert "0.3s" in error["message"]
        bad = api.errors(BY_ALIAS, {"alias": "canary"}, headers={"x-studbook-consistency": "nope"})[
            0
        ]
        assert bad["extensions"]["code"] == "BAD_USER_INPUT"
        assert "consistency token" in bad["message"]


async def test_every_command(api: Api, db: tuple[str, dict[str, str]]) -> None:
    url, _ = db
    w = {"token": "writer"}
    api.query(
        'mutation { tagRun(run: "churn/run:run-2", tags: [{key: "stage", value: "eval"}, {key: "x", value: "1"}]) { eventId } }',
        **w,
    )
    api.query('mutation { tagRun(run: "churn/run:run-2", tags: [{key: "x"}]) { eventId } }', **w)
    api.query(
        'mutation { annotate(subject: "churn/model:churn-clf", text: "watch drift", labels: {severity: "low"}) { eventId } }',
        **w,
    )
    api.query(
        'mutation { deploy(modelVersion: "churn/model_version:churn-clf@2", environment: "staging", target: "k8s/s") { eventId } }',
        **w,
    )
    api.query(
        'mutation { reject(modelVersion: "churn/model_version:churn-clf@1", comment: "stale") { eventId } }',
        token="reviewer",
    )
    await project(url)
    api.query(
        'mutation { undeploy(modelVersion: "churn/model_version:churn-clf@2", environment: "staging") { eventId } }',
        **w,
    )
    api.query(
        'mutation { removeAlias(model: "churn/model:churn-clf", alias: "production") { eventId } }',
        **w,
    )
    await project(url)
    data = api.query(
        """{ run(id: "churn/run:run-2") { tags { key value } }
             model(id: "churn/model:churn-clf") { annotations { text labels author } aliases { alias }
               versions { nodes { number approved deployments { environment } } } }
             history: auditTrail(filter: {actor: "writer"}) { nodes { type } } }"""
    )
    assert data["run"]["tags"] == [{"key": "stage", "value": "eval"}]
    model = data["model"]
    assert model["annotations"] == [
        {"text": "watch drift", "labels": {"severity": "low"}, "author": "writer"}
    ]
    assert model["aliases"] == []
    assert [(v["number"], v["approved"], v["deployments"]) for v in model["versions"]["nodes"]] == [
        (2, False, []), (1, False, [])
    ]  # fmt: skip
    assert [e["type"] for e in data["history"]["nodes"]] == [
        "run.tags.set", "run.tags.set", "annotation.added", "model.version.deployed",
        "model.version.undeployed", "model.alias.removed",
    ]  # fmt: skip
    async_con = await postgres.connect(url)
    try:
        assert await async_con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
    finally:
        await async_con.close()


def test_commands_are_checked_before_anything_is_emitted(api: Api) -> None:
    def code(query: str, token: str | None = "writer") -> tuple[str, str]:
        e = api.errors(query, token=token)[0]
        return e["extensions"]["code"], e["message"]

    c, m = code(
        'mutation { setAlias(modelVersion: "churn/model_version:churn-clf@9", alias: "x") { eventId } }'
    )
    assert c == "NOT_FOUND"
    assert "churn-clf@9" in m
    c, m = code(
        'mutation { setAlias(modelVersion: "churn/model_version:churn-clf@1", alias: "Not Valid") { eventId } }'
    )
    assert c == "BAD_USER_INPUT"
    assert m.startswith("`model.alias.set` is not valid: alias:")
    c, m = code(
        'mutation { undeploy(modelVersion: "churn/model_version:churn-clf@1", environment: "prod") { eventId } }'
    )
    assert c == "BAD_USER_INPUT"
    assert "nothing is deployed there" in m
    c, m = code(
        'mutation { removeAlias(model: "churn/model:churn-clf", alias: "staging") { eventId } }'
    )
    assert c == "NOT_FOUND"
    c, m = code(
        'mutation { tagRun(run: "churn/run:ghost", tags: [{key: "a", value: "b"}]) { eventId } }'
    )
    assert c == "NOT_FOUND"
    # Scopes and projects.
    c, m = code(
        'mutation { approve(modelVersion: "churn/model_version:churn-clf@1") { eventId } }',
        token="reader",
    )
    assert c == "FORBIDDEN"
    assert "`approve` scope" in m
    # A training job's `write` token cannot approve.
    c, m = code('mutation { approve(modelVersion: "churn/model_version:churn-clf@1") { eventId } }')
    assert c == "FORBIDDEN"
    assert m == "token `writer` lacks the `approve` scope needed to send `model.version.approved`"
    c, m = code(
        'mutation { tagRun(run: "churn/run:run-1", tags: [{key: "a", value: "b"}]) { eventId } }',
        token="reviewer",
    )
    assert c == "FORBIDDEN"
    assert "`write` scope" in m
    c, m = code('mutation { annotate(subject: "fraud/run:fraud-1", text: "hi") { eventId } }')
    assert c == "FORBIDDEN"
    assert "`fraud`" in m
    c, m = code(
        'mutation { annotate(subject: "churn/run:run-1", text: "hi") { eventId } }', token=None
    )
    assert c == "UNAUTHENTICATED"


async def test_a_read_only_api_refuses_commands(db: tuple[str, dict[str, str]]) -> None:
    url, tokens = db
    with TestClient(make_app(url, read_only=True)) as client:
        error = Api(client, tokens).errors(
            'mutation { annotate(subject: "churn/run:run-1", text: "hi") { eventId } }',
            token="admin",
        )[0]
    assert error["extensions"]["code"] == "READ_ONLY"
    assert "read-only" in error["message"]

"""Auth, per-project visibility, query limits, page caps and masked internal errors. Each test
fails if its protection is taken away."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from tests.graphql.conftest import Api, Scenario, make_app, make_tokens
from tests.support import migrated

Factory = Callable[..., Coroutine[Any, Any, str]]
PROJECTS = "{ projects { nodes { name } } }"


def test_queries_need_a_valid_token_with_the_read_scope(api: Api) -> None:
    for token in (None, "sbk_nope_nope", "revoked", "not-even-a-token"):
        r = api.post(PROJECTS, token=token)
        assert r.status_code == 401, (token, r.text)
        (error,) = r.json()["errors"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert "Authorization: Bearer" in error["message"]
        assert r.json()["data"] is None
    error = api.errors(PROJECTS, token="write-only")[0]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert "`read` scope" in error["message"]
    assert api.query(PROJECTS, token="reader")["projects"]["nodes"] == [
        {"name": "churn"},
        {"name": "fraud"},
    ]
    # The schema's own metadata is not data: it needs no token (GraphiQL loads it).
    assert api.post("{ __typename }", token=None).json() == {"data": {"__typename": "Query"}}


def test_auth_disabled_treats_everyone_as_admin(scenario_db: Scenario) -> None:
    with TestClient(make_app(scenario_db.url, auth_disabled=True)) as client:
        api = Api(client, {})
        assert len(api.query(PROJECTS, token=None)["projects"]["nodes"]) == 2


def test_a_token_for_one_project_never_sees_another(api: Api) -> None:
    assert api.query(PROJECTS, token="churn-reader")["projects"]["nodes"] == [{"name": "churn"}]
    assert api.query(PROJECTS, token="fraud-reader")["projects"]["nodes"] == [{"name": "fraud"}]
    forbidden = [
        '{ run(id: "fraud/run:fraud-1") { name } }',
        '{ node(id: "fraud/run:fraud-1") { id } }',
        '{ project(name: "fraud") { name } }',
        '{ searchRuns(project: "fraud") { nodes { runId } } }',
        '{ lineage(from: "fraud/run:fraud-1") { totalNodes } }',
        '{ history(subject: "fraud/run:fraud-1") { nodes { type } } }',
        '{ compareRuns(ids: ["churn/run:run-1", "fraud/run:fraud-1"]) { runs { runId } } }',
        '{ auditTrail(filter: {project: "fraud"}) { nodes { type } } }',
        '{ auditTrail(filter: {subject: "fraud/run:fraud-1"}) { nodes { type } } }',
    ]
    for query in forbidden:
        r = api.post(query, token="churn-reader").json()
        assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", query
        assert "fraud-1" not in str(r.get("data")), query
        assert "secret" not in str(r), query
    # Unfiltered listings only show the token's projects.
    trail = api.query("{ auditTrail(first: 500) { nodes { project } } }", token="churn-reader")
    assert {e["project"] for e in trail["auditTrail"]["nodes"]} == {"churn"}
    trail = api.query("{ auditTrail { nodes { project subject } } }", token="fraud-reader")
    assert {e["subject"] for e in trail["auditTrail"]["nodes"]} == {"fraud/run:fraud-1"}
    run = api.query(
        '{ run(id: "fraud/run:fraud-1") { name params { value } } }', token="fraud-reader"
    )
    assert run["run"] == {"name": "secret", "params": [{"value": 0.3}]}


def _nested(depth: int) -> str:
    # Depth counts the levels below a root field: run -> parentRun x (depth - 1) -> id.
    return (
        '{ run(id: "churn/run:run-1") '
        + "{ parentRun " * (depth - 1)
        + "{ id"
        + " }" * depth
        + " }"
    )


def test_depth_alias_and_token_limits(api: Api) -> None:
    assert "run" in api.query(_nested(12))  # at the limit: fine
    error = api.errors(_nested(13))[0]
    assert "exceeds maximum operation depth of 12" in error["message"]
    aliases = " ".join(f'a{i}: project(name: "churn") {{ name }}' for i in range(30))
    assert len(api.query("{ " + aliases + " }")) == 30
    aliases = " ".join(f'a{i}: project(name: "churn") {{ name }}' for i in range(31))
    error = api.errors("{ " + aliases + " }")[0]
    assert "31 aliases" in error["message"]
    assert "30" in error["message"]
    fields = " ".join("__typename" for _ in range(5000))
    error = api.errors("{ " + fields + " }")[0]
    assert "more than 5000 tokens" in error["message"]


def test_page_sizes_are_capped(api: Api) -> None:
    for query in (
        "{ projects(first: 501) { nodes { name } } }",
        '{ searchRuns(project: "churn", first: 1000) { nodes { runId } } }',
        '{ run(id: "churn/run:run-1") { metricHistory(key: "loss", first: 5001) { nodes { step } } } }',
    ):
        error = api.errors(query)[0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "`first` must be between 0 and" in error["message"]


async def test_internal_errors_are_masked_and_user_errors_are_not(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    await migrated(url)
    tokens = await make_tokens(url)
    con = await postgres.connect(url)
    try:
        await con.execute("ALTER TABLE rm.runs RENAME TO runs_elsewhere")
    finally:
        await con.close()
    with TestClient(make_app(url)) as client:
        api = Api(client, tokens)
        body = api.post('{ run(id: "churn/run:run-1") { name } }').json()
        (error,) = body["errors"]
        assert error["message"] == "Unexpected error."
        assert "runs" not in str(body)
        assert "extensions" not in error
        mine = api.errors('{ run(id: "nonsense") { name } }')[0]
        assert mine["extensions"]["code"] == "BAD_USER_INPUT"
        assert "`nonsense`" in mine["message"]

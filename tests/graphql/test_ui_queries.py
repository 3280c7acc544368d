"""The questions the web UI asks that the API did not answer before: a project's run keys (the
runs table's columns), ordering by a param, a tag or the status (sorting any column), and every
alias's history at once (the registry's timeline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from tests.graphql.conftest import Api, Factory, append_and_project, make_app, make_tokens
from tests.graphql.test_search import FakeRun, Searcher, _events, _runs
from tests.support import migrated


@pytest_asyncio.fixture(scope="module")
async def keyed_db(database_factory: Factory) -> tuple[str, dict[str, str], list[FakeRun]]:
    url = await database_factory()
    await migrated(url)
    runs = _runs()
    # Params of every JSON kind, so the order across kinds is pinned down too.
    runs[1].params["mixed"] = "text"
    runs[2].params["mixed"] = 3
    runs[3].params["mixed"] = True
    runs[4].params["mixed"] = 0.5
    await append_and_project(url, _events(runs))
    return url, await make_tokens(url), runs


@pytest.fixture
def searcher(keyed_db: tuple[str, dict[str, str], list[FakeRun]]) -> Iterator[Searcher]:
    url, tokens, runs = keyed_db
    with TestClient(make_app(url)) as client:
        yield Searcher(Api(client, tokens), runs)


def test_run_keys_list_every_param_metric_and_tag_key(searcher: Searcher) -> None:
    data = searcher.api.query(
        '{ project(name: "search") { runKeys { params metrics tags } } '
        ' other: project(name: "churn") { runKeys { params } } }'
    )
    assert data["project"]["runKeys"] == {
        "params": ["layers", "lr", "mixed", "opt"],
        "metrics": ["acc", "loss"],
        "tags": ["team"],
    }
    assert data["other"] is None  # no such project here: nothing to list


def _param_order(runs: list[FakeRun], key: str, desc: bool) -> list[str]:
    """PostgreSQL's jsonb order: strings < numbers < booleans; then the runs without the key."""

    def rank(v: Any) -> tuple[int, Any]:
        if isinstance(v, bool):
            return (2, v)
        return (1, v) if isinstance(v, int | float) else (0, v)

    having = sorted(
        (r for r in runs if key in r.params),
        key=lambda r: (rank(r.params[key]), r.run_id),
        reverse=desc,
    )
    rest = sorted((r for r in runs if key not in r.params), key=lambda r: r.run_id, reverse=desc)
    return [r.run_id for r in having + rest]


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
@pytest.mark.parametrize("key", ["lr", "opt", "mixed"])
def test_ordering_by_a_param_pages_through_every_run(
    searcher: Searcher, key: str, direction: str
) -> None:
    order = {"param": key, "direction": direction}
    expected = _param_order(searcher.runs, key, direction == "DESC")
    assert searcher.ids(order=order, first=7) == expected
    assert searcher.ids(order=order, first=500) == expected


def test_ordering_by_a_param_keeps_the_filters(searcher: Searcher) -> None:
    f = {"params": [{"key": "opt", "op": "EQ", "value": "adam"}], "status": ["COMPLETED"]}
    got = searcher.ids(filter=f, order={"param": "layers", "direction": "ASC"}, first=3)
    want = [r for r in searcher.runs if r.params["opt"] == "adam" and r.status == "completed"]
    assert got == [r.run_id for r in sorted(want, key=lambda r: (r.params["layers"], r.run_id))]


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
def test_ordering_by_a_tag_then_the_untagged(searcher: Searcher, direction: str) -> None:
    desc = direction == "DESC"
    tagged = sorted(
        (r for r in searcher.runs if "team" in r.tags),
        key=lambda r: (r.tags["team"], r.run_id),
        reverse=desc,
    )
    rest = sorted(
        (r for r in searcher.runs if "team" not in r.tags), key=lambda r: r.run_id, reverse=desc
    )
    got = searcher.ids(order={"tag": "team", "direction": direction}, first=4)
    assert got == [r.run_id for r in tagged + rest]


def test_ordering_by_status(searcher: Searcher) -> None:
    got = searcher.ids(order={"attribute": "STATUS", "direction": "ASC"}, first=6)
    assert got == [r.run_id for r in sorted(searcher.runs, key=lambda r: (r.status, r.run_id))]


def test_one_ordering_at_a_time(searcher: Searcher) -> None:
    q = 'query($o: RunOrder) { searchRuns(project: "search", orderBy: $o) { nodes { runId } } }'
    error = searcher.api.errors(q, {"o": {"param": "lr", "tag": "team"}})[0]["message"]
    assert "`orderBy` takes one of" in error


def test_alias_history_of_every_alias(api: Api) -> None:
    data = api.query(
        """{ model(id: "churn/model:churn-clf") {
             all: aliasHistory { alias version validFrom validTo }
             production: aliasHistory(alias: "production") { version } } }"""
    )["model"]
    assert [(a["alias"], a["version"]) for a in data["all"]] == [
        ("production", 1), ("production", 2), ("production", 1), ("staging", 2)
    ]  # fmt: skip
    assert [a["version"] for a in data["production"]] == [1, 2, 1]
    assert data["all"][-1]["validTo"] is not None  # staging was removed

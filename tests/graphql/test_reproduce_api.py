"""What `studbook reproduce` reads and records, through the GraphQL API: re-run links
(`reproducedFrom`, `reproductions`, `derivedFrom`, `derivedRuns`, lineage), a run's recorded
diff (`codeDiff`, never a refused or redacted one) and where a dataset version was read from."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from studbook_server.adapters import postgres, readmodels
from studbook_server.adapters.postgres import Incoming
from studbook_server.domain.contract import event_from_dict
from tests.graphql.conftest import Api, StatementLog, make_app, make_tokens
from tests.support import at, digest, ev, migrated

Factory = Callable[..., Coroutine[Any, Any, str]]
DIFF = "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"
DIFF_DIGEST = "sha256:" + hashlib.sha256(DIFF.encode()).hexdigest()


def _started(run: str, when: float, **payload: Any) -> dict[str, Any]:
    body = {"name": run, "code": {"git_commit": "abc1234", "git_dirty": False}, **payload}
    return ev("run.started", f"run:{run}", body, when=at(when), version=3)


def _diff(run: str, text: str, claimed: str) -> dict[str, Any]:
    payload = {
        "digest": claimed,
        "size_bytes": len(text.encode()),
        "encoding": "utf-8",
        "diff": text,
    }
    return ev("run.diff.recorded", f"run:{run}", payload, when=at(0.1))


@dataclass
class World:
    url: str
    tokens: dict[str, str]
    dead_letters: list[str]


@pytest_asyncio.fixture(scope="module")
async def world(database_factory: Factory) -> World:
    url = await database_factory()
    await migrated(url)
    dirty = {"git_commit": "abc1234", "git_dirty": True,
             "diff": {"digest": DIFF_DIGEST, "size_bytes": len(DIFF), "stored": True}}  # fmt: skip
    events = [
        ev("dataset.version.created", "dataset:train",
           {"version": "v1", "uri": "s3://d/train/v1", "digest": digest("t1"),
            "source": {"uri": "file:///home/ada/churn/data/train.csv",
                       "repo_path": "data/train.csv"}}, when=at(0), version=2),
        ev("dataset.version.created", "dataset:old", {"version": "v1", "uri": "s3://d/old",
           "digest": digest("o1")}, when=at(0), version=1),
        _started("orig", 0, code=dirty),
        _diff("orig", DIFF, DIFF_DIGEST),
        ev("run.input.used", "run:orig", {"dataset": "train", "version": "v1", "role": "train"}),
        _started("rep-1", 1, reproduces={"run": "orig", "derived": False}),
        _started("der-1", 2, reproduces={"run": "orig", "derived": True}),
        _started("rep-2", 3, reproduces={"run": "orig"}),
        _started("rep-of-rep", 4, reproduces={"run": "rep-1", "derived": False}),
        # A diff whose content is not what it claims: refused, and never served.
        _started("forged", 5),
        _diff("forged", DIFF, digest("something else")),
        # A diff erased by a redaction: its digest stays, its text goes.
        _started("redacted", 6),
        _diff("redacted", DIFF, DIFF_DIGEST),
        ev("subject.redacted", "run:redacted", {"reason": "secret in a diff", "fields": ["diff"]},
           when=at(7)),
        # An old (v2) run: upcast, no links, no diff.
        ev("run.started", "run:old", {"name": "old", "code": {"git_commit": "abc1234"}},
           when=at(8), version=2),
    ]  # fmt: skip
    con = await postgres.connect(url)
    try:
        async with con.transaction():
            await postgres.append(
                con, [Incoming(d, event_from_dict(d, i)) for i, d in enumerate(events)]
            )
        await readmodels.catch_up(con)
        reasons = [r["reason"] for r in await con.fetch("SELECT reason FROM public.dead_letters")]
    finally:
        await con.close()
    return World(url, await make_tokens(url), reasons)


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    with TestClient(make_app(world.url)) as client:
        yield Api(client, world.tokens)


RUN = """
query($id: ID!) {
  run(id: $id) {
    reproducedFrom { runId } derivedFrom { runId }
    reproductions { runId } derivedRuns { runId }
    codeDiff { digest sizeBytes encoding text }
    inputs { datasetVersion { source { uri repoPath } } }
  }
}
"""


def _run(api: Api, run: str) -> dict[str, Any]:
    found: dict[str, Any] = api.query(RUN, {"id": f"churn/run:{run}"})["run"]
    return found


def test_reproductions_and_derived_runs_are_told_apart(api: Api) -> None:
    orig = _run(api, "orig")
    assert orig["reproductions"] == [{"runId": "rep-1"}, {"runId": "rep-2"}]  # oldest first
    assert orig["derivedRuns"] == [{"runId": "der-1"}]
    assert orig["reproducedFrom"] is None
    assert orig["derivedFrom"] is None
    assert _run(api, "rep-1")["reproducedFrom"] == {"runId": "orig"}
    assert _run(api, "rep-1")["reproductions"] == [{"runId": "rep-of-rep"}]
    assert _run(api, "der-1")["derivedFrom"] == {"runId": "orig"}
    assert _run(api, "der-1")["reproducedFrom"] is None
    old = _run(api, "old")
    assert (old["reproducedFrom"], old["reproductions"], old["codeDiff"]) == (None, [], None)


def test_re_runs_are_lineage_edges(api: Api) -> None:
    down = api.query(
        """{ lineage(from: "churn/run:orig", direction: DOWNSTREAM, depth: 2) {
               nodes { id depth } edges { source destination type } } }"""
    )["lineage"]
    assert {(e["destination"], e["type"]) for e in down["edges"]} == {
        ("churn/run:rep-1", "REPRODUCED"),
        ("churn/run:rep-2", "REPRODUCED"),
        ("churn/run:der-1", "DERIVED_RUN"),
        ("churn/run:rep-of-rep", "REPRODUCED"),
    }
    assert {"id": "churn/run:rep-of-rep", "depth": 2} in down["nodes"]
    up = api.query(
        """{ lineage(from: "churn/run:rep-1", direction: UPSTREAM, depth: 2) {
               nodes { id depth } } }"""
    )["lineage"]
    # Upstream of a reproduction: the original run, and what the original used.
    assert up["nodes"] == [
        {"id": "churn/run:rep-1", "depth": 0},
        {"id": "churn/run:orig", "depth": 1},
        {"id": "churn/dataset_version:train@v1", "depth": 2},
    ]


def test_code_diff_is_served_only_when_it_is_what_it_claims(api: Api, world: World) -> None:
    assert _run(api, "orig")["codeDiff"] == {
        "digest": DIFF_DIGEST,
        "sizeBytes": len(DIFF),
        "encoding": "utf-8",
        "text": DIFF,
    }
    assert _run(api, "forged")["codeDiff"] is None
    assert len(world.dead_letters) == 1
    assert "`run.diff.recorded`" in world.dead_letters[0]
    assert "does not match its `digest`" in world.dead_letters[0]
    redacted = _run(api, "redacted")["codeDiff"]
    assert redacted["digest"] == DIFF_DIGEST
    assert redacted["text"] is None


def test_a_dataset_version_tells_where_it_was_read_from(api: Api) -> None:
    assert _run(api, "orig")["inputs"] == [
        {
            "datasetVersion": {
                "source": {
                    "uri": "file:///home/ada/churn/data/train.csv",
                    "repoPath": "data/train.csv",
                }
            }
        }
    ]
    old = api.query(
        '{ node(id: "churn/dataset_version:old@v1") { ... on DatasetVersion { source { uri } } } }'
    )
    assert old["node"] == {"source": None}


NESTED = """
query($first: Int!) {
  searchRuns(project: "churn", first: $first, orderBy: {attribute: RUN_ID, direction: ASC}) {
    nodes { runId reproducedFrom { id } derivedFrom { id } reproductions { id }
            derivedRuns { id } codeDiff { digest } }
  }
}
"""


def test_re_run_fields_cost_a_fixed_number_of_statements(world: World) -> None:
    log = StatementLog()
    with TestClient(make_app(world.url, log=log)) as client:
        api = Api(client, world.tokens)
        counts = []
        for first in (1, 6):
            with log.count() as statements:
                nodes = api.query(NESTED, {"first": first})["searchRuns"]["nodes"]
            assert len(nodes) == first
            counts.append(list(statements))
    assert len(counts[1]) == len(counts[0]), "\n\n".join(counts[1])

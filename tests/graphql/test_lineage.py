"""Lineage walks and impact: the scenario's graph, paging, time travel, and the server caps on a
synthetic graph written straight into the read model."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from studbook_server.graphql._lineage import MAX_NODES
from tests.graphql.conftest import Api, Scenario, make_app, make_tokens
from tests.support import migrated

Factory = Callable[..., Coroutine[Any, Any, str]]
_T = datetime(2026, 1, 1, tzinfo=UTC)

WALK = """
query($from: ID!, $direction: LineageDirection, $depth: Int, $types: [NodeType!], $asOf: DateTime,
      $first: Int, $after: String) {
  lineage(from: $from, direction: $direction, depth: $depth, types: $types, asOf: $asOf,
          first: $first, after: $after) {
    nodes { id type depth }
    edges { source destination type role }
    truncated depthReached totalNodes
    pageInfo { hasNextPage endCursor }
  }
}
"""


def _walk(api: Api, start: str, **kw: Any) -> Any:
    return api.query(WALK, {"from": start, **kw})["lineage"]


def _ids(result: Any) -> list[tuple[str, int]]:
    return [(n["id"].removeprefix("churn/"), n["depth"]) for n in result["nodes"]]


def _edges(result: Any) -> set[tuple[str, str, str]]:
    return {
        (e["source"].removeprefix("churn/"), e["destination"].removeprefix("churn/"), e["type"])
        for e in result["edges"]
    }


def test_upstream_of_a_model_version_reaches_data_code_and_unresolved_runs(api: Api) -> None:
    up = _walk(api, "churn/model_version:churn-clf@1", depth=10)
    assert _ids(up) == [
        ("model_version:churn-clf@1", 0),
        ("run:run-1", 1),
        ("dataset_version:features@f1", 2),
        ("dataset_version:events@v1", 3),
        ("run:prep-1", 3),
    ]
    assert _edges(up) == {
        ("run:run-1", "model_version:churn-clf@1", "TRAINED"),
        ("dataset_version:features@f1", "run:run-1", "INPUT"),
        ("dataset_version:events@v1", "dataset_version:features@f1", "DERIVED"),
        ("run:prep-1", "dataset_version:features@f1", "OUTPUT"),
    }
    assert (up["truncated"], up["depthReached"], up["totalNodes"]) == (False, 3, 5)
    entities = api.query(
        """{ lineage(from: "churn/model_version:churn-clf@1", depth: 3) {
             nodes { id entity { __typename ... on Run { name } ... on DatasetVersion { digest } } } } }"""
    )["lineage"]["nodes"]
    by_id = {n["id"]: n["entity"] for n in entities}
    assert by_id["churn/run:run-1"] == {"__typename": "Run", "name": "baseline"}
    assert by_id["churn/dataset_version:events@v1"]["__typename"] == "DatasetVersion"
    assert by_id["churn/run:prep-1"] is None  # named by a dataset version, never started
    shallow = _walk(api, "churn/model_version:churn-clf@1", depth=1)
    assert _ids(shallow) == [("model_version:churn-clf@1", 0), ("run:run-1", 1)]


def test_downstream_includes_deployments_as_of_a_time(api: Api) -> None:
    # Deployed on day 6, undeployed on day 12: present on 2026-03-08, not now.
    then = _walk(api, "churn/dataset_version:events@v1", direction="DOWNSTREAM", depth=10,
                 asOf="2026-03-08T00:00:00Z")  # fmt: skip
    assert _ids(then) == [
        ("dataset_version:events@v1", 0),
        ("dataset_version:features@f1", 1),
        ("run:run-1", 2),
        ("run:run-2", 2),
        ("model_version:churn-clf@1", 3),
        ("model_version:churn-clf@2", 3),
        ("deployment:churn-clf/prod", 4),
    ]
    assert ("model_version:churn-clf@1", "deployment:churn-clf/prod", "DEPLOYED") in _edges(then)
    assert [e["role"] for e in then["edges"] if e["type"] == "DEPLOYED"] == ["k8s/churn"]
    now = _walk(api, "churn/dataset_version:events@v1", direction="DOWNSTREAM", depth=10)
    assert "deployment:churn-clf/prod" not in dict(_ids(now))
    # Before run-2 used the features (day 3), only run-1 and its model version are downstream.
    early = _walk(api, "churn/dataset_version:features@f1", direction="DOWNSTREAM",
                  asOf="2026-03-03T18:00:00Z")  # fmt: skip
    assert _ids(early) == [
        ("dataset_version:features@f1", 0),
        ("run:run-1", 1),
        ("model_version:churn-clf@1", 2),
    ]
    # Upstream from a deployment.
    dep = _walk(api, "churn/deployment:churn-clf/prod", depth=2, asOf="2026-03-08T00:00:00Z")
    assert _ids(dep) == [
        ("deployment:churn-clf/prod", 0),
        ("model_version:churn-clf@1", 1),
        ("run:run-1", 2),
    ]


def test_both_directions_are_ancestors_and_descendants_not_siblings(api: Api) -> None:
    both = _walk(api, "churn/run:run-1", direction="BOTH", depth=10)
    ids = dict(_ids(both))
    assert ids == {
        "run:run-1": 0,
        "dataset_version:features@f1": 1,
        "model_version:churn-clf@1": 1,
        "dataset_version:events@v1": 2,
        "run:prep-1": 2,
    }
    assert "run:run-2" not in ids  # a sibling through features@f1, neither ancestor nor descendant


def test_type_filter_keeps_the_walk_but_returns_only_those_types(api: Api) -> None:
    models = _walk(api, "churn/dataset_version:events@v1", direction="DOWNSTREAM", depth=10,
                   types=["MODEL_VERSION", "DEPLOYMENT"], asOf="2026-03-08T00:00:00Z")  # fmt: skip
    assert _ids(models) == [
        ("model_version:churn-clf@1", 3),
        ("model_version:churn-clf@2", 3),
        ("deployment:churn-clf/prod", 4),
    ]
    assert _edges(models) == {
        ("model_version:churn-clf@1", "deployment:churn-clf/prod", "DEPLOYED")
    }


def test_pages_cover_every_node_once_and_every_edge_once_after_its_endpoints(api: Api) -> None:
    whole = _walk(api, "churn/dataset_version:events@v1", direction="DOWNSTREAM", depth=10,
                  asOf="2026-03-08T00:00:00Z")  # fmt: skip
    seen_nodes: list[tuple[str, int]] = []
    seen_edges: list[tuple[str, str, str]] = []
    after = None
    while True:
        page = _walk(api, "churn/dataset_version:events@v1", direction="DOWNSTREAM", depth=10,
                     asOf="2026-03-08T00:00:00Z", first=2, after=after)  # fmt: skip
        assert len(page["nodes"]) <= 2
        seen_nodes += _ids(page)
        known = {n for n, _ in seen_nodes}
        for e in _edges(page):
            assert {e[0], e[1]} <= known, f"{e} before its endpoints"
            seen_edges.append(e)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen_nodes == _ids(whole)
    assert sorted(seen_edges) == sorted(_edges(whole))
    assert len(seen_edges) == len(set(seen_edges))


def test_depth_is_capped_and_bad_input_is_named(api: Api) -> None:
    deep = _walk(api, "churn/model_version:churn-clf@1", depth=50)
    assert deep["truncated"] is True  # more than the server's cap of 20 was asked
    assert _walk(api, "churn/run:run-1", depth=0)["nodes"] == [
        {"id": "churn/run:run-1", "type": "RUN", "depth": 0}
    ]
    error = api.errors(WALK, {"from": "churn/model:churn-clf"})[0]
    assert (
        "`from` must be a dataset version, run, model version or deployment id" in error["message"]
    )
    assert api.errors(WALK, {"from": "churn/run:run-1", "first": 501})[0]["extensions"]["code"] == (
        "BAD_USER_INPUT"
    )


def test_impact_of_a_dataset_version(api: Api) -> None:
    query = """query($alias: String, $asOf: DateTime) {
      impact(datasetVersion: "churn/dataset_version:events@v1", alias: $alias, asOf: $asOf) {
        modelVersions { modelVersion { id } depth aliases deployments { environment } }
        deployments { id version }
        truncated
      } }"""
    now = api.query(query)["impact"]
    assert [(m["modelVersion"]["id"], m["depth"], m["aliases"]) for m in now["modelVersions"]] == [
        ("churn/model_version:churn-clf@1", 3, ["production"]),
        ("churn/model_version:churn-clf@2", 3, []),
    ]
    assert now["deployments"] == []
    assert now["truncated"] is False
    production = api.query(query, {"alias": "production"})["impact"]
    assert [m["modelVersion"]["id"] for m in production["modelVersions"]] == [
        "churn/model_version:churn-clf@1"
    ]
    # On 2026-03-10 version 2 held production; on 2026-03-08 version 1 was deployed to prod.
    march_10 = api.query(query, {"alias": "production", "asOf": "2026-03-10T00:00:00Z"})["impact"]
    assert [m["modelVersion"]["id"] for m in march_10["modelVersions"]] == [
        "churn/model_version:churn-clf@2"
    ]
    march_8 = api.query(query, {"asOf": "2026-03-08T00:00:00Z"})["impact"]
    assert march_8["deployments"] == [{"id": "churn/deployment:churn-clf/prod", "version": 1}]
    assert march_8["modelVersions"][0]["deployments"] == [{"environment": "prod"}]


# ------------------------------------------------------------------------- synthetic graphs


async def _write_edges(url: str, project: str, edges: list[tuple[str, str, str]]) -> None:
    con = await postgres.connect(url)
    try:
        await con.copy_records_to_table(
            "lineage_edges",
            schema_name="rm",
            columns=[
                "project",
                "edge_type",
                "src",
                "dst",
                "role",
                "valid_from",
                "recorded_from",
                "event_id",
            ],
            records=[(project, t, s, d, None, _T, _T, uuid.uuid4()) for s, d, t in edges],
        )
    finally:
        await con.close()


async def test_each_node_is_visited_once_and_the_caps_hold(
    database_factory: Factory, scenario_db: Scenario
) -> None:
    url = await database_factory()
    await migrated(url)
    tokens = await make_tokens(url)
    # A lattice: 13 layers of 15 dataset versions, every one derived from every one of the layer
    # before (2,715 edges). 10^14 paths lead from the top to the bottom; a walk keyed on paths
    # would never finish. Visiting each node once, it is 196 nodes.
    width, layers = 15, 12
    lattice = [
        (f"dataset_version:l{i}@{a}", f"dataset_version:l{i + 1}@{b}", "derived")
        for i in range(layers)
        for a in range(width)
        for b in range(width)
    ]
    lattice += [
        ("dataset_version:top@1", f"dataset_version:l0@{b}", "derived") for b in range(width)
    ]
    # A hub: one dataset version used by more runs than the node cap.
    hub = [("dataset_version:hub@1", f"run:r{i:05}", "input") for i in range(MAX_NODES + 1000)]
    await _write_edges(url, "synthetic", lattice + hub)
    with TestClient(make_app(url)) as client:
        api = Api(client, tokens)
        down = _walk(
            api, "synthetic/dataset_version:top@1", direction="DOWNSTREAM", depth=20, first=0
        )
        assert down["totalNodes"] == 1 + width * (layers + 1)
        assert (down["truncated"], down["depthReached"]) == (False, layers + 1)
        page = _walk(api, "synthetic/dataset_version:top@1", direction="DOWNSTREAM", depth=20,
                     first=500, types=["DATASET_VERSION"])  # fmt: skip
        depth_of = {n["id"]: n["depth"] for n in page["nodes"]}
        assert depth_of["synthetic/dataset_version:l5@7"] == 6
        up = _walk(api, "synthetic/dataset_version:l11@3", depth=20, first=0)
        assert up["totalNodes"] == 1 + width * 11 + 1
        hubbed = _walk(api, "synthetic/dataset_version:hub@1", direction="DOWNSTREAM", first=10)
        assert hubbed["truncated"] is True
        assert hubbed["totalNodes"] == MAX_NODES
        assert len(hubbed["nodes"]) == 10
        assert hubbed["pageInfo"]["hasNextPage"] is True
        # The first page's edges are exactly those reaching its nodes.
        assert len(hubbed["edges"]) == 9

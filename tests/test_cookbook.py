"""Every query of the GraphQL cookbook (docs/graphql.md) against the demo that `studbook-server up`
loads on first start, through HTTP (and a WebSocket for the subscription), on a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.test_embedded_up import _Up

DOC = Path(__file__).resolve().parents[1] / "docs" / "graphql.md"
BLOCKS = re.findall(r"```graphql\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[_Up, str]]:
    data_dir = tempfile.mkdtemp(prefix="studbook-cookbook-")
    os.chmod(data_dir, 0o755)  # as root, PostgreSQL runs as an unprivileged user
    up = _Up(data_dir, os.path.join(data_dir, "up.log"), demo=True)
    try:
        token = up.ready()
        deadline = time.monotonic() + 120
        while "demo: loaded" not in up.output():
            assert "demo: failed" not in up.output(), up.output()
            assert time.monotonic() < deadline, up.output()
            time.sleep(0.2)
        # Read-your-writes on the demo's last write would need its token; the checkpoint is the
        # same question: wait until the read models hold every stored event.
        _wait_projected(up, token)
        yield up, token
    finally:
        assert up.stop() == 0, up.output()
        shutil.rmtree(data_dir, ignore_errors=True)


def _post(up: _Up, token: str, query: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{up.port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {exc.read()[:2000]!r}\n{query}") from exc
    assert "errors" not in body, f"{body['errors']}\n{query}"
    return body["data"]


def _wait_projected(up: _Up, token: str) -> None:
    # The demo's last write is production -> churn-clf@3; once visible, the rest is too.
    query = '{ modelVersionByAlias(project: "churn", model: "churn-clf", alias: "production") { number } }'
    for _ in range(200):
        found = _post(up, token, query)["modelVersionByAlias"]
        if found and found["number"] == 3:
            return
        time.sleep(0.05)
    raise AssertionError("the demo was never fully projected")


def _block(start: str) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(start)]
    assert len(found) == 1, f"{len(found)} cookbook blocks start with {start!r}"
    return found[0]


def _non_empty(value: Any, path: str = "") -> None:
    """Every field answered something: no null field, no empty list (unless explained)."""
    if isinstance(value, dict):
        assert value, path
        for k, v in value.items():
            if f"{path}.{k}" in ALLOWED_EMPTY:
                continue
            _non_empty(v, f"{path}.{k}")
    elif isinstance(value, list):
        assert value, f"{path} is an empty list"
        _non_empty(value[0], f"{path}[0]")
    else:
        assert value is not None, f"{path} is null"


# Fields that are legitimately null or empty in the demo, and why.
ALLOWED_EMPTY = {
    ".believedThen",  # knownAt before the demo was recorded: nothing known yet (the point)
    ".dataset.uri",  # a dataset's own uri comes from dataset.created; the demo sends versions
    ".run.error",
    ".run.code",
    ".run.gitCommit",
    ".run.outputs[0].digest",  # no failure; no git
    ".run.outputs[0].datasetVersion",
    ".run.annotations",
    ".run.modelVersions",
    ".run.loss.pageInfo.endCursor",
    ".run.inputs[0].datasetVersion.rowCount",
    ".dataset.versions.nodes[0].schema",
    ".dataset.versions.nodes[0].sizeBytes",
    ".dataset.versions.nodes[0].children",
    ".dataset.versions.nodes[0].consumers.pageInfo.endCursor",
    ".model.aliases[0].validFrom",
    ".model.production[0].validTo",
    ".model.deployments[0].target",
    ".model.versions.nodes[0].approvals",
    ".model.versions.nodes[0].deployments",
    ".model.versions.nodes[0].aliases",
    ".model.versions.nodes[0].approved",
    ".searchRuns.pageInfo.endCursor",
    ".lineage.pageInfo.endCursor",
    ".lineage.nodes[0].entity",
    ".lineage.edges[0].role",
    ".impact.modelVersions[0].aliases",
    ".compareRuns.datasets",
    ".compareRuns.code",
    ".compareRuns.environments",
    ".compareModelVersions.code",
    ".compareModelVersions.upstreamCode",
    ".compareModelVersions.upstreamData",
    ".history.nodes[0].payload",
    ".unapprovedPromotions[0].latestDecision",
    ".compareRuns.metrics[0].step",
    ".setAlias.consistencyToken",
}


STARTS = (
    '{\n  run(id: "churn/run:logreg-v1-01")', '{\n  dataset(id: "churn/dataset:features")',
    '{\n  model(id: "churn/model:churn-clf")', "{\n  searchRuns(", "{\n  searchRunTable(",
    '{\n  lineage(from: "churn/model_version:churn-clf@1"', "{\n  impact(datasetVersion:",
    "{\n  compareRuns(", "{\n  # Which version was production on 2026-09-30",
    "mutation {\n  setAlias(", "mutation {\n  removeAlias(", "subscription {",
)  # fmt: skip


def test_every_cookbook_block_is_tested() -> None:
    """Each block of the cookbook is one of those the tests below run (and none is missed)."""
    assert sorted(next(s for s in STARTS if b.lstrip().startswith(s)) for b in BLOCKS) == sorted(
        STARTS
    )


def test_a_run(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block('{\n  run(id: "churn/run:logreg-v1-01")'))
    _non_empty(data)
    run = data["run"]
    assert run["status"] == "COMPLETED"
    assert {p["key"] for p in run["params"]} == {"lr", "l2", "epochs", "model"}
    assert [p["step"] for p in run["loss"]["nodes"]] == [0, 1, 2, 3, 4, 5]
    assert run["inputs"][0]["role"] == "train"
    assert run["inputs"][0]["datasetVersion"]["digest"].startswith("sha256:00bbaa1f7428")


def test_datasets(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block('{\n  dataset(id: "churn/dataset:features")'))
    _non_empty(data)
    versions = data["dataset"]["versions"]["nodes"]
    assert [v["number"] for v in versions] == [3, 2, 1]
    assert [v["parents"][0]["id"] for v in versions] == [
        "churn/dataset_version:customers@c506e8ae56b0",
        "churn/dataset_version:customers@ca3010be0359",
        "churn/dataset_version:customers@f316990af43b",
    ]
    assert versions[2]["producedBy"]["id"] == "churn/run:prepare-features-v1"
    assert len(versions[2]["consumers"]["nodes"]) == 10  # nine runs and the failed one


def test_models(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block('{\n  model(id: "churn/model:churn-clf")'))
    _non_empty(data)
    model = data["model"]
    assert [h["version"] for h in model["production"]] == [1, 2, 1, 3]
    assert {(a["alias"], a["version"]) for a in model["aliases"]} == {
        ("production", 3),
        ("staging", 3),
    }
    assert [(d["environment"], d["version"]) for d in model["deployments"]] == [("prod", 1)]
    approved = {v["number"]: v["approved"] for v in model["versions"]["nodes"]}
    assert approved == {1: True, 2: False, 3: False}


def test_search(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block("{\n  searchRuns("))
    _non_empty(data)
    ids = [n["id"] for n in data["searchRuns"]["nodes"]]
    assert all(i.startswith("churn/run:logreg-v2-") for i in ids), ids
    accuracies = [n["metrics"][0]["value"] for n in data["searchRuns"]["nodes"]]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(a > 0.7 for a in accuracies)


def test_search_as_a_table(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block("{\n  searchRunTable("))
    table = data["searchRunTable"]
    assert table["totalCount"] == len(table["rows"]) > 0
    assert {r["status"] for r in table["rows"]} == {"COMPLETED"}
    # Ordered by val_accuracy, highest first; runs without it (if any) come last.
    have = [("val_accuracy" in r["metrics"]) for r in table["rows"]]
    assert any(have)
    assert have == sorted(have, reverse=True)
    accuracies = [
        r["metrics"]["val_accuracy"]["value"]
        for r in table["rows"]
        if "val_accuracy" in r["metrics"]
    ]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(set(r["metrics"]) <= {"val_accuracy", "loss"} for r in table["rows"])
    assert table["pageInfo"]["endCursor"] == table["rows"][-1]["cursor"]


def test_lineage(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block('{\n  lineage(from: "churn/model_version:churn-clf@1"'))
    _non_empty(data)
    ids = {n["id"] for n in data["lineage"]["nodes"]}
    assert {
        "churn/run:logreg-v1-01", "churn/dataset_version:features@00bbaa1f7428",
        "churn/dataset_version:customers@f316990af43b", "churn/run:prepare-features-v1",
    } <= ids  # fmt: skip
    assert data["lineage"]["truncated"] is False


def test_impact(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block("{\n  impact(datasetVersion:"))
    _non_empty(data)
    held = [m["modelVersion"]["id"] for m in data["impact"]["modelVersions"]]
    assert held == ["churn/model_version:churn-clf@1"]  # production on 2026-09-20


def test_compare(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block("{\n  compareRuns("))
    _non_empty(data)
    differing = {p["key"] for p in data["compareRuns"]["params"]}
    assert differing == {"lr"}
    assert any(p["key"] == "lr" for p in data["compareModelVersions"]["params"])


def test_audit_and_time_travel(demo: tuple[_Up, str]) -> None:
    data = _post(*demo, _block("{\n  # Which version was production on 2026-09-30"))
    _non_empty(data)
    assert data["then"] == {"number": 2}
    assert data["believedThen"] is None
    types = [n["type"] for n in data["history"]["nodes"]]
    assert types[0] == "model.version.registered"
    assert types.count("model.alias.set") == 5  # production four times, staging once
    unapproved = {(u["alias"], u["modelVersion"]["id"]) for u in data["unapprovedPromotions"]}
    assert ("production", "churn/model_version:churn-clf@3") in unapproved
    actors = {n["actor"] for n in data["auditTrail"]["nodes"]}
    assert actors == {"alice", "bob", "carol"}


def test_commands_then_a_subscription(demo: tuple[_Up, str]) -> None:
    up, token = demo
    first = _post(up, token, _block("mutation {\n  setAlias("))
    _non_empty(first)
    assert first["setAlias"]["consistencyToken"].startswith("s1.")
    # The second block depends on state the first one did not change: it runs as written.
    second = _post(up, token, _block("mutation {\n  removeAlias("))
    _non_empty(second)

    subscription = _block("subscription {")
    with connect(
        f"ws://127.0.0.1:{up.port}/graphql", subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        open_timeout=10,
    ) as ws:  # fmt: skip
        ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": subscription}}))
        first_point = json.loads(ws.recv(timeout=10))
    assert first_point["type"] == "next", first_point
    point = first_point["payload"]["data"]["metricPoints"]
    assert (point["key"], point["step"]) == ("loss", 0)

"""compareRuns and compareModelVersions on the scenario."""

from __future__ import annotations

from tests.graphql.conftest import Api

RUNS = """
query($ids: [ID!]!, $only: Boolean!) {
  compareRuns(ids: $ids, onlyDiffering: $only) {
    runs { runId }
    params { key values differs }
    metrics { key last step min max differs }
    datasets { id label columns present roles differs }
    code { gitCommit gitRepo differs }
    environments environmentDiffers
  }
}
"""


def test_compare_runs(api: Api) -> None:
    ids = ["churn/run:run-1", "churn/run:run-2", "churn/run:run-3"]
    c = api.query(RUNS, {"ids": ids, "only": False})["compareRuns"]
    assert [r["runId"] for r in c["runs"]] == ["run-1", "run-2", "run-3"]
    assert c["params"] == [
        {"key": "depth", "values": [6, 8, None], "differs": True},
        {"key": "lr", "values": [0.1, 0.05, None], "differs": True},
    ]
    (loss,) = c["metrics"]
    assert loss["key"] == "loss"
    assert loss["last"] == [0.1, 0.46, None]
    assert loss["step"] == [9, 4, None]
    assert loss["min"] == [0.1, 0.46, None]
    assert loss["max"] == [1.0, 0.5, None]
    assert c["datasets"] == [
        {"id": "churn/dataset_version:features@f1", "label": "features@f1", "columns": [0, 1],
         "present": [True, True, False], "roles": ["train", "train", None], "differs": True}
    ]  # fmt: skip
    assert c["code"] == {
        "gitCommit": ["abc1234", None, None],
        "gitRepo": ["git@x:churn.git", None, None],
        "differs": True,
    }
    assert c["environmentDiffers"] is True
    # Same params twice: nothing differs, and onlyDiffering drops it all.
    same = api.query(RUNS, {"ids": ["churn/run:run-1", "churn/run:run-1"], "only": True})[
        "compareRuns"
    ]
    assert same["params"] == []
    assert same["metrics"] == []
    assert same["datasets"] == []
    assert same["code"]["differs"] is False
    error = api.errors(RUNS, {"ids": ["churn/run:run-1", "churn/run:ghost"], "only": False})[0]
    assert error["message"] == "no run `churn/run:ghost`"
    assert (
        "compare 1 to 200 runs"
        in api.errors(RUNS, {"ids": [f"churn/run:r{i}" for i in range(201)], "only": False})[0][
            "message"
        ]
    )


def test_compare_model_versions_adds_the_upstream_diff(api: Api) -> None:
    c = api.query(
        """{ compareModelVersions(ids: ["churn/model_version:churn-clf@1", "churn/model_version:churn-clf@2"]) {
              modelVersions { number } runs { runId }
              params { key values differs }
              metrics { key last }
              upstreamData { label present differs }
              upstreamCode { label present differs }
              code { gitCommit differs }
              environments environmentDiffers truncated
        } }"""
    )["compareModelVersions"]
    assert [m["number"] for m in c["modelVersions"]] == [1, 2]
    assert [r["runId"] for r in c["runs"]] == ["run-1", "run-2"]
    assert {p["key"]: p["values"] for p in c["params"]} == {"depth": [6, 8], "lr": [0.1, 0.05]}
    assert c["metrics"] == [{"key": "loss", "last": [0.1, 0.46]}]
    # Both trained on features@f1, derived from events@v1: the data does not differ.
    assert c["upstreamData"] == [
        {"label": "events@v1", "present": [True, True], "differs": False},
        {"label": "features@f1", "present": [True, True], "differs": False},
    ]
    assert c["upstreamCode"] == [
        {"label": "git@x:churn.git@abc1234", "present": [True, False], "differs": True}
    ]
    assert c["code"] == {"gitCommit": ["abc1234", None], "differs": True}
    assert c["environmentDiffers"] is True
    assert c["truncated"] is False

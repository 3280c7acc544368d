"""Entities through HTTP, against read models projected from `tests.support.scenario()`."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.graphql.conftest import Api, Scenario, StatementLog, make_app

RUN = """
query($id: ID!) {
  run(id: $id) {
    id runId name experiment status actor startedAt finishedAt durationSeconds gitCommit
    code environment error
    params { key value }
    tags { key value }
    metrics { key value step min max count }
    loss: metricHistory(key: "loss", stepFrom: 2, stepTo: 6, first: 3) {
      edges { node { step value } } pageInfo { hasNextPage endCursor }
    }
    inputs { id dataset version role datasetVersion { number digest rowCount } }
    outputs { uri digest datasetVersion { id } }
    modelVersions { id number framework }
    annotations { text }
  }
}
"""


def test_a_run_with_everything_it_carries(api: Api) -> None:
    run = api.query(RUN, {"id": "churn/run:run-1"})["run"]
    assert run["id"] == "churn/run:run-1"
    assert (run["name"], run["experiment"], run["status"]) == ("baseline", "xgb", "COMPLETED")
    assert run["durationSeconds"] == 3 * 3600
    assert run["gitCommit"] == "abc1234"
    assert run["code"]["git_repo"] == "git@x:churn.git"
    # The redaction erased the host from the run's start event and its read model.
    assert "host" not in run["environment"]
    assert run["params"] == [{"key": "depth", "value": 6}, {"key": "lr", "value": 0.1}]
    assert run["tags"] == [{"key": "team", "value": "growth"}]
    assert run["metrics"] == [
        {"key": "loss", "value": 0.1, "step": 9, "min": 0.1, "max": 1.0, "count": 10}
    ]
    page = run["loss"]
    assert [e["node"]["step"] for e in page["edges"]] == [2, 3, 4]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = api.query(
        """query($id: ID!, $after: String) { run(id: $id) {
             metricHistory(key: "loss", stepFrom: 2, stepTo: 6, after: $after) {
               nodes { step } pageInfo { hasNextPage } } } }""",
        {"id": "churn/run:run-1", "after": page["pageInfo"]["endCursor"]},
    )["run"]["metricHistory"]
    assert [n["step"] for n in rest["nodes"]] == [5, 6]
    assert rest["pageInfo"]["hasNextPage"] is False
    assert run["inputs"] == [
        {
            "id": "churn/dataset_version:features@f1",
            "dataset": "features",
            "version": "f1",
            "role": "train",
            "datasetVersion": {
                "number": 1,
                "digest": run["inputs"][0]["datasetVersion"]["digest"],
                "rowCount": None,
            },
        }
    ]
    assert run["outputs"][0]["uri"] == "s3://m/r1.pkl"
    assert run["outputs"][0]["datasetVersion"] is None
    assert run["modelVersions"] == [
        {"id": "churn/model_version:churn-clf@1", "number": 1, "framework": "xgboost"}
    ]
    failed = api.query(RUN, {"id": "churn/run:run-3"})["run"]
    assert failed["status"] == "FAILED"
    assert failed["error"] == {"type": "ValueError", "message": "bad shape"}
    assert api.query(RUN, {"id": "churn/run:run-2"})["run"]["annotations"] == [
        {"text": "used the wrong split"}
    ]
    assert api.query(RUN, {"id": "churn/run:nope"})["run"] is None


def test_datasets_versions_and_derivation(api: Api) -> None:
    data = api.query(
        """{
          dataset(id: "churn/dataset:events") {
            name uri versions { edges { node { id number digest rowCount sizeBytes schema
              children { id datasetVersion { producedBy { id } } } } } }
          }
          features: datasetVersion(id: "churn/dataset_version:features@f1") {
            parents { id datasetVersion { id } } producedBy { id }
            consumers(first: 1) { edges { node { runId } } pageInfo { hasNextPage endCursor } }
            dataset { name description }
          }
        }"""
    )
    events = data["dataset"]
    assert events["uri"] == "s3://d/events"
    (v1,) = [e["node"] for e in events["versions"]["edges"]]
    assert (v1["id"], v1["number"], v1["rowCount"], v1["sizeBytes"]) == (
        "churn/dataset_version:events@v1",
        1,
        100,
        10,
    )
    assert v1["schema"] == [{"name": "user", "type": "string"}]
    # `prep-1` never sent run.started: the reference stays, unresolved.
    assert v1["children"] == [
        {"id": "churn/dataset_version:features@f1", "datasetVersion": {"producedBy": None}}
    ]
    f1 = data["features"]
    assert f1["parents"] == [
        {
            "id": "churn/dataset_version:events@v1",
            "datasetVersion": {"id": "churn/dataset_version:events@v1"},
        }
    ]
    assert f1["producedBy"] is None
    assert f1["dataset"] == {"name": "features", "description": None}
    first = f1["consumers"]
    assert [e["node"]["runId"] for e in first["edges"]] == ["run-1"]
    more = api.query(
        """query($after: String) { datasetVersion(id: "churn/dataset_version:features@f1") {
             consumers(first: 1, after: $after) { nodes { runId } pageInfo { hasNextPage } } } }""",
        {"after": first["pageInfo"]["endCursor"]},
    )["datasetVersion"]["consumers"]
    assert more == {"nodes": [{"runId": "run-2"}], "pageInfo": {"hasNextPage": False}}


def test_models_versions_aliases_approvals_deployments(api: Api) -> None:
    data = api.query(
        """{
          model(id: "churn/model:churn-clf") {
            name
            versions { nodes { number run { runId } aliases { alias } approved
                               approvals { decision reviewer comment } deployments { environment } } }
            aliases { alias version setBy validFrom validTo }
            production: aliasHistory(alias: "production") { version validFrom validTo }
            deployments { environment }
          }
          project(name: "churn") {
            description
            models { nodes { name } }
            datasets { nodes { name } }
            runs(first: 2) { nodes { runId } pageInfo { hasNextPage } }
            deployments(asOf: "2026-03-08T00:00:00Z") { id version target modelVersion { number } }
          }
        }"""
    )
    model = data["model"]
    v2, v1 = model["versions"]["nodes"]
    assert (v1["number"], v1["run"]["runId"], v1["approved"]) == (1, "run-1", True)
    assert v1["approvals"] == [{"decision": "APPROVED", "reviewer": "bob", "comment": "ok"}]
    assert v1["aliases"] == [{"alias": "production"}]
    assert v1["deployments"] == []  # undeployed on day 12
    assert (v2["number"], v2["approved"], v2["aliases"]) == (2, False, [])
    assert v2["approvals"] == [{"decision": "REJECTED", "reviewer": "bob", "comment": "regressed"}]
    assert model["aliases"] == [
        {"alias": "production", "version": 1, "setBy": "alice",
         "validFrom": "2026-03-11T09:00:00+00:00", "validTo": None}
    ]  # fmt: skip
    assert [
        (h["version"], h["validFrom"][:10], (h["validTo"] or "")[:10]) for h in model["production"]
    ] == [
        (1, "2026-03-07", "2026-03-09"),
        (2, "2026-03-09", "2026-03-11"),
        (1, "2026-03-11", ""),
    ]
    assert model["deployments"] == []
    project = data["project"]
    assert project["description"] == "Churn models"
    assert project["models"]["nodes"] == [{"name": "churn-clf"}]
    assert project["datasets"]["nodes"] == [{"name": "events"}, {"name": "features"}]
    assert project["runs"] == {
        "nodes": [{"runId": "run-3"}, {"runId": "run-2"}],
        "pageInfo": {"hasNextPage": True},
    }
    assert project["deployments"] == [
        {"id": "churn/deployment:churn-clf/prod", "version": 1, "target": "k8s/churn",
         "modelVersion": {"number": 1}}
    ]  # fmt: skip


def test_node_resolves_every_kind_of_id(api: Api) -> None:
    ids = [
        ("churn/project:churn", "Project"),
        ("churn/run:run-2", "Run"),
        ("churn/dataset:events", "Dataset"),
        ("churn/dataset_version:events@v1", "DatasetVersion"),
        ("churn/model:churn-clf", "Model"),
        ("churn/model_version:churn-clf@2", "ModelVersion"),
    ]
    for gid, typename in ids:
        node = api.query("query($id: ID!) { node(id: $id) { __typename id } }", {"id": gid})["node"]
        assert node == {"__typename": typename, "id": gid}
    # Not deployed now: nothing.
    assert api.query('{ node(id: "churn/deployment:churn-clf/prod") { id } }')["node"] is None
    error = api.errors('{ node(id: "run-1") { id } }')[0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "<project>/<kind>:<key>" in error["message"]


NESTED = """
query($first: Int!) {
  searchRuns(project: "churn", first: $first, orderBy: {attribute: RUN_ID, direction: ASC}) {
    edges { node {
      runId params { key } metrics { key value } tags { key }
      inputs { datasetVersion { digest dataset { name } } }
      modelVersions { number aliases { alias } deployments { environment } approvals { decision }
                      model { name } }
    } }
  }
}
"""


async def test_a_nested_query_costs_a_fixed_number_of_statements(scenario_db: Scenario) -> None:
    log = StatementLog()
    with TestClient(make_app(scenario_db.url, log=log)) as client:
        api = Api(client, scenario_db.tokens)
        counts = []
        for first in (1, 3):
            with log.count() as statements:
                data = api.query(NESTED, {"first": first})
            assert len(data["searchRuns"]["edges"]) == first
            counts.append(list(statements))
    # token; search (BEGIN, SET LOCAL planner settings, the search with its runs' params,
    # metrics and tags, COMMIT); inputs, dataset versions, datasets, model versions,
    # assignments (aliases and deployments share one loader), approvals, models.
    assert len(counts[0]) == 12, "\n\n".join(counts[0])
    assert "data_params" in counts[0][3]
    assert "data_tags" in counts[0][3]
    # Three runs cost what one costs: every nested field is one batched statement.
    assert len(counts[1]) == len(counts[0]), "\n\n".join(counts[1])

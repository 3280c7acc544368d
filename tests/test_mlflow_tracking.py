"""MLflow tracking, end to end: the real `mlflow` client (mlflow-skinny, pinned) logs to Studbook
through `MLFLOW_TRACKING_URI=http://host/mlflow/<project>`, on `up` (embedded) and on the Kafka
deployment (`api` + `ingest` + a projector), and every value it logged is read back through the
client and through Studbook's GraphQL API.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

import mlflow
import mlflow.data
import pandas as pd
from mlflow.entities import Metric, ViewType
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from studbook_server.adapters import postgres
from studbook_server.http import build_app
from studbook_server.projector import KafkaProjector
from tests.conftest import Services
from tests.support import migrated, settings_for
from tests.test_openlineage import _token, graphql, served

Factory = Callable[..., Coroutine[Any, Any, str]]
PROJECT = "churn"
# mlflow's own pandas calls warn about pandas 4 (not this code's): not an error here.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
HISTORY_POINTS = 25_500  # more than one page of get-history (25,000)


@contextmanager
def tracking(base: str, token: str, project: str | None = PROJECT) -> Iterator[MlflowClient]:
    """Point the mlflow client at Studbook, as a user would: two environment variables."""
    uri = f"{base}/mlflow/{project}" if project else f"{base}/mlflow"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(uri)
    try:
        yield MlflowClient(uri)
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gql_run(api: str, token: str, run_id: str) -> dict[str, Any]:
    data = graphql(
        api,
        token,
        f"""{{ run(id: "{PROJECT}/run:{run_id}") {{
        runId name experiment status parentRunId
        params {{ key value }} tags {{ key value }} metrics {{ key value step count }}
        inputs {{ dataset version role datasetVersion {{ id }} }}
    }} }}""",
    )
    run: dict[str, Any] = data["run"]
    assert run is not None, f"run {run_id} is not in Studbook"
    return run


def error_code(exc: MlflowException) -> str:
    return str(exc.error_code)


# ----------------------------------------------------------------------------- scenarios


def fail_in_a_run() -> None:
    with mlflow.start_run(run_name="bad"):
        mlflow.log_metric("loss", 9.0)
        raise ValueError("diverged")


def scenario_training(api: str, token: str) -> None:
    """set_experiment, nested runs, params/metrics/tags, a failed and a killed run."""
    with tracking(api, token) as client:
        experiment = mlflow.set_experiment("churn-model")
        assert isinstance(experiment.experiment_id, str)
        assert mlflow.get_experiment_by_name("churn-model").experiment_id == (
            experiment.experiment_id
        )
        with mlflow.start_run(run_name="sweep") as parent:
            mlflow.log_param("lr", 0.01)
            mlflow.log_params({"layers": 3, "optimizer": "adam"})
            mlflow.log_param("lr", 0.01)  # the same value again is fine
            with pytest.raises(MlflowException) as changed:
                mlflow.log_param("lr", 0.02)
            assert error_code(changed.value) == "INVALID_PARAMETER_VALUE"
            assert "lr" in changed.value.message
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metrics({"auc": 0.91, "f1": 0.8}, step=4)
            mlflow.set_tag("team", "growth")
            mlflow.set_tags({"stage": "dev", "stale": "yes"})
            client.delete_tag(parent.info.run_id, "stale")
            with mlflow.start_run(run_name="fold-1", nested=True) as child:
                mlflow.log_metric("auc", 0.9)
        with pytest.raises(ValueError, match="diverged"):
            fail_in_a_run()
        failed = mlflow.last_active_run()
        assert failed is not None
        mlflow.start_run(run_name="stopped")
        killed = mlflow.active_run()
        assert killed is not None
        mlflow.end_run(status="KILLED")

        got = client.get_run(parent.info.run_id)
        assert got.info.status == "FINISHED"
        assert got.info.run_name == "sweep"
        assert got.info.experiment_id == experiment.experiment_id
        assert got.info.artifact_uri == (
            f"mlflow-artifacts:/{experiment.experiment_id}/{parent.info.run_id}/artifacts"
        )
        assert got.data.params == {"lr": "0.01", "layers": "3", "optimizer": "adam"}
        assert got.data.metrics == {"loss": pytest.approx(0.2), "auc": 0.91, "f1": 0.8}
        assert got.data.tags["team"] == "growth"
        assert got.data.tags["stage"] == "dev"
        assert "stale" not in got.data.tags
        assert [m.value for m in client.get_metric_history(parent.info.run_id, "loss")] == (
            pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
        )
        got_child = client.get_run(child.info.run_id)
        assert got_child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert client.get_run(failed.info.run_id).info.status == "FAILED"
        assert client.get_run(killed.info.run_id).info.status == "KILLED"

    run = gql_run(api, token, parent.info.run_id)
    assert run["name"] == "sweep"
    assert run["status"] == "COMPLETED"
    assert run["experiment"] == experiment.experiment_id
    assert {p["key"]: p["value"] for p in run["params"]} == {
        "lr": "0.01", "layers": "3", "optimizer": "adam"
    }  # fmt: skip
    metrics = {m["key"]: (m["value"], m["count"]) for m in run["metrics"]}
    assert metrics == {"loss": (pytest.approx(0.2), 5), "auc": (0.91, 1), "f1": (0.8, 1)}
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["team"] == "growth"
    assert tags["mlflow.runName"] == "sweep"
    assert "stale" not in tags
    assert gql_run(api, token, child.info.run_id)["parentRunId"] == parent.info.run_id
    assert gql_run(api, token, failed.info.run_id)["status"] == "FAILED"
    assert gql_run(api, token, killed.info.run_id)["status"] == "KILLED"


def scenario_dataset(api: str, token: str) -> int:
    """log_input with a pandas dataset: a dataset version the run used, in Studbook's lineage;
    sending it again (log_metric(dataset=)) adds nothing. Returns the digest's version count."""
    df = pd.DataFrame({"tenure": [1.0, 5.0, 9.0, 12.0], "plan": ["a", "b", "a", "c"]})
    dataset = mlflow.data.from_pandas(df, source="s3://lake/churn/train.csv", name="churn-train")
    with tracking(api, token) as client:
        mlflow.set_experiment("churn-data")
        with mlflow.start_run(run_name="with-data") as run:
            mlflow.log_input(dataset, context="training")
            mlflow.log_metric("auc", 0.7, dataset=dataset)
            mlflow.log_metric("auc", 0.75, step=1, dataset=dataset)
        got = client.get_run(run.info.run_id)
        [used] = got.inputs.dataset_inputs
        assert used.dataset.name == "churn-train"
        assert used.dataset.digest == dataset.digest
        assert used.dataset.source_type == "s3"
        assert "s3://lake/churn/train.csv" in used.dataset.source
        assert "tenure" in used.dataset.schema  # scipy is installed: the schema is sent
        assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "training"
        found = client.search_runs(
            [got.info.experiment_id], f"datasets.digest = '{dataset.digest}'"
        )
        assert [r.info.run_id for r in found] == [run.info.run_id]

    studbook = gql_run(api, token, run.info.run_id)
    version_id = f"{PROJECT}/dataset_version:churn-train@{dataset.digest}"
    assert studbook["inputs"] == [
        {"dataset": "churn-train", "version": dataset.digest, "role": "train",
         "datasetVersion": {"id": version_id}}
    ]  # fmt: skip
    lineage = graphql(
        api,
        token,
        f"""{{ lineage(from: "{PROJECT}/run:{run.info.run_id}",
        direction: UPSTREAM) {{ nodes {{ id type }} edges {{ source destination type role }} }} }}""",
    )
    assert {"id": version_id, "type": "DATASET_VERSION"} in lineage["lineage"]["nodes"]
    assert {"source": version_id, "destination": f"{PROJECT}/run:{run.info.run_id}",
            "type": "INPUT", "role": "train"} in lineage["lineage"]["edges"]  # fmt: skip
    versions = graphql(
        api,
        token,
        f"""{{ dataset(id: "{PROJECT}/dataset:churn-train") {{
        versions {{ nodes {{ version uri }} }} }} }}""",
    )
    return len(versions["dataset"]["versions"]["nodes"])


def scenario_search(api: str, token: str) -> None:
    """search_runs with filters and ordering, over several pages; experiments/search."""
    with tracking(api, token) as client:
        exp = mlflow.set_experiment("churn-sweep").experiment_id
        ids = {}
        for i in range(11):
            with mlflow.start_run(run_name=f"trial-{i}") as run:
                mlflow.log_params({"kind": "sweep" if i % 2 == 0 else "grid", "idx": i})
                mlflow.log_metric("score", float(i))
                mlflow.set_tag("parity", "even" if i % 2 == 0 else "odd")
            ids[i] = run.info.run_id

        def pages(filter_string: str, order_by: list[str], size: int) -> tuple[list[str], int]:
            found: list[str] = []
            token_: str | None = None
            n = 0
            while True:
                page = client.search_runs([exp], filter_string, ViewType.ACTIVE_ONLY, size,
                                          order_by, token_)  # fmt: skip
                found += [r.info.run_id for r in page]
                n += 1
                token_ = page.token
                if not token_:
                    return found, n

        found, n = pages("metrics.score >= 2 AND params.kind = 'sweep'", ["metrics.score DESC"], 2)
        assert found == [ids[i] for i in (10, 8, 6, 4, 2)]
        assert n == 3
        found, n = pages("tags.parity = 'odd'", ["params.idx ASC"], 2)
        # params are strings: "1" < "3" < "5" < "7" < "9"
        assert found == [ids[i] for i in (1, 3, 5, 7, 9)]
        assert n == 3
        found, _ = pages(
            "attributes.run_name IN ('trial-3', 'trial-4') AND attribute.status = 'FINISHED'",
            ["attributes.start_time DESC"], 1,
        )  # fmt: skip
        assert found == [ids[4], ids[3]]
        found, _ = pages("params.kind LIKE 'gr%' AND metrics.score < 4", ["metrics.score"], 10)
        assert found == [ids[1], ids[3]]
        found, _ = pages("tags.`parity` ILIKE 'EVEN' AND params.\"idx\" NOT IN ('0', '2')",
                         ["metrics.score ASC"], 10)  # fmt: skip
        assert found == [ids[i] for i in (4, 6, 8, 10)]
        found, _ = pages("params.missing IS NULL AND tags.parity IS NOT NULL", [], 100)
        assert set(found) == set(ids.values())
        frame = mlflow.search_runs([exp], "metrics.score > 7", order_by=["metrics.score DESC"])
        assert list(frame["run_id"]) == [ids[10], ids[9], ids[8]]
        assert list(frame["params.kind"]) == ["sweep", "grid", "sweep"]
        with pytest.raises(MlflowException) as bad:
            client.search_runs([exp], "metrics.score > 1 OR metrics.score < 0")
        assert error_code(bad.value) == "INVALID_PARAMETER_VALUE"
        assert "OR" in bad.value.message

        named = client.search_experiments(filter_string="name LIKE 'churn-%'",
                                          order_by=["name ASC"])  # fmt: skip
        assert [e.name for e in named] == ["churn-data", "churn-model", "churn-sweep"]
        assert "Default" in [e.name for e in client.search_experiments()]
    data = graphql(
        api,
        token,
        f"""{{ searchRuns(project: "{PROJECT}", first: 200) {{
        nodes {{ runId experiment }} }} }}""",
    )
    swept = {r["runId"] for r in data["searchRuns"]["nodes"] if r["experiment"] == exp}
    assert swept == set(ids.values())


def scenario_history(api: str, token: str) -> None:
    """get_metric_history beyond one page (the client asks 25,000 points a page)."""
    with tracking(api, token) as client:
        mlflow.set_experiment("churn-long")
        with mlflow.start_run(run_name="long") as run:
            now = int(time.time() * 1000)
            for start in range(0, HISTORY_POINTS, 1000):
                stop = min(start + 1000, HISTORY_POINTS)
                client.log_batch(run.info.run_id, metrics=[
                    Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(start, stop)
                ])  # fmt: skip
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(HISTORY_POINTS))
        assert history[-1].value == pytest.approx(1.0 / HISTORY_POINTS)
        # A smaller page, through the store, shows the tokens.
        store = client._tracking_client.store
        page = store.get_metric_history(run.info.run_id, "loss", max_results=10_000)
        assert len(page) == 10_000
        assert page.token
        rest = store.get_metric_history(
            run.info.run_id, "loss", max_results=20_000, page_token=page.token
        )
        assert len(rest) == HISTORY_POINTS - 10_000
        assert not rest.token
        # The client splits batches itself; a client that does not is told the limit.
        too_many = [{"key": "x", "value": 1.0, "timestamp": now, "step": s} for s in range(1001)]
        status, body = _http(
            f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/runs/log-batch", token,
            {"run_id": run.info.run_id, "metrics": too_many},
        )  # fmt: skip
        assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
        assert "at most 1000 metrics" in body["message"]
    studbook = gql_run(api, token, run.info.run_id)
    assert studbook["metrics"] == [
        {"key": "loss", "value": pytest.approx(1.0 / HISTORY_POINTS), "step": HISTORY_POINTS - 1,
         "count": HISTORY_POINTS}
    ]  # fmt: skip


def scenario_lifecycle(api: str, token: str) -> None:
    """Deleting and restoring runs and experiments; renames and experiment tags."""
    with tracking(api, token) as client:
        exp = client.create_experiment("churn-tmp", tags={"owner": "ana"})
        with pytest.raises(MlflowException) as twice:
            client.create_experiment("churn-tmp")
        assert error_code(twice.value) == "RESOURCE_ALREADY_EXISTS"
        run = client.create_run(exp, run_name="doomed")
        client.set_terminated(run.info.run_id)
        client.delete_run(run.info.run_id)
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
        assert client.search_runs([exp]) == []
        deleted = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
        assert [r.info.run_id for r in deleted] == [run.info.run_id]
        with pytest.raises(MlflowException) as closed:
            client.log_param(run.info.run_id, "late", "1")
        assert error_code(closed.value) == "INVALID_PARAMETER_VALUE"
        client.restore_run(run.info.run_id)
        assert [r.info.run_id for r in client.search_runs([exp])] == [run.info.run_id]

        client.rename_experiment(exp, "churn-renamed")
        client.set_experiment_tag(exp, "reviewed", "yes")
        got = client.get_experiment(exp)
        assert got.name == "churn-renamed"
        assert got.tags == {"owner": "ana", "reviewed": "yes"}
        assert client.get_experiment_by_name("churn-tmp") is None
        client.delete_experiment(exp)
        assert client.get_experiment(exp).lifecycle_stage == "deleted"
        assert client.search_runs([exp]) == []  # the runs of a deleted experiment are hidden
        gone = client.search_experiments(view_type=ViewType.DELETED_ONLY)
        assert [e.experiment_id for e in gone] == [exp]
        assert exp not in [e.experiment_id for e in client.search_experiments()]
        client.restore_experiment(exp)
        assert client.get_experiment(exp).lifecycle_stage == "active"
        assert [r.info.run_id for r in client.search_runs([exp])] == [run.info.run_id]
        # No experiment named: the Default experiment "0", which exists without an event.
        assert client.get_experiment("0").name == "Default"
        default_run = client.create_run("0")
        assert client.get_run(default_run.info.run_id).info.experiment_id == "0"
        with pytest.raises(MlflowException) as missing:
            client.get_run(uuid.uuid4().hex)
        assert error_code(missing.value) == "RESOURCE_DOES_NOT_EXIST"
    assert gql_run(api, token, run.info.run_id)["name"] == "doomed"


def _http(url: str, token: str | None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, orjson.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def scenario_access(api: str, token: str, other: str, reader: str, writer: str) -> None:
    """The project from the URL or the token; MLflow-shaped 401/403/404."""
    with tracking(api, token, project=None) as client:  # the token has one project: churn
        assert client.get_experiment_by_name("churn-model") is not None
    with tracking(api, other, project=None) as client, pytest.raises(MlflowException) as which:
        client.search_experiments()
    assert error_code(which.value) == "INVALID_PARAMETER_VALUE"
    assert "/mlflow/<project>" in which.value.message
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/experiments/get?experiment_id=0",
                         None)  # fmt: skip
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/experiments/create", reader,
                         {"name": "nope"})  # fmt: skip
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    assert "`write` scope" in body["message"]
    # A token that may only write logs, but reads nothing.
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/experiments/create", writer,
                         {"name": "from-writer"})  # fmt: skip
    assert status == 200
    assert isinstance(body["experiment_id"], str)
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/runs/search", writer,
                         {"experiment_ids": [body["experiment_id"]]})  # fmt: skip
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    assert "`read` scope" in body["message"]
    status, body = _http(f"{api}/mlflow/elsewhere/api/2.0/mlflow/experiments/get?experiment_id=0",
                         token)  # fmt: skip
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/3.0/mlflow/traces/tr-1", token)
    assert (status, body["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    assert "tracing" in body["message"]
    status, body = _http(f"{api}/mlflow/{PROJECT}/api/2.0/mlflow/no-such-thing", token)
    assert (status, body["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    with tracking(api, token) as client, pytest.raises(RestException) as bad:
        client.search_runs(["0"], "params.x > 'a'")
    assert error_code(bad.value) == "INVALID_PARAMETER_VALUE"


def all_scenarios(api: str, tokens: dict[str, str]) -> int:
    token = tokens["churn"]
    scenario_training(api, token)
    versions = scenario_dataset(api, token)
    scenario_search(api, token)
    scenario_history(api, token)
    scenario_lifecycle(api, token)
    scenario_access(api, token, tokens["two"], tokens["reader"], tokens["writer"])
    return versions


async def _tokens(url: str) -> dict[str, str]:
    return {
        "churn": await _token(url),
        "two": await _token(url, projects=("churn", "other")),
        "reader": await _token(url, scopes=("read",)),
        "writer": await _token(url, scopes=("write",)),
    }


async def _count(url: str, sql: str) -> int:
    con = await postgres.connect(url)
    try:
        n: int = await con.fetchval(sql)
        return n
    finally:
        await con.close()


REPORTED = "SELECT count(*) FROM public.events WHERE type = 'dataset.version.reported'"


async def test_mlflow_client_on_up(database_factory: Factory, tmp_path: Path) -> None:
    url = await database_factory()
    await migrated(url)
    tokens = await _tokens(url)
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None)
    with served(build_app("up", settings)) as up:
        versions = await asyncio.to_thread(all_scenarios, up, tokens)
    assert versions == 1
    assert await _count(url, REPORTED) == 1, "the dataset was re-sent, not recorded again"


async def test_mlflow_client_on_kafka(
    services: Services, database_factory: Factory, topic_factory: Factory
) -> None:
    url = await database_factory()
    await migrated(url)
    tokens = await _tokens(url)
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group)
    pool = await postgres.create_pool(url, max_size=3)
    projector = KafkaProjector(settings, pool, name="projector-mlflow")
    running = asyncio.create_task(projector.run())
    try:
        with served(build_app("api", settings)) as api, served(build_app("ingest", settings)):
            versions = await asyncio.to_thread(all_scenarios, api, tokens)
    finally:
        projector.stop()
        await running
        await pool.close()
    assert versions == 1
    assert await _count(url, REPORTED) == 1

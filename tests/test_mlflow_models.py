"""MLflow artifacts, logged models and the registry, end to end: the real mlflow client (pinned
in the dev extra) against `studbook-server up` (embedded) and the Kafka deployment (`api` and a
projector), each answer checked through the client and through Studbook's GraphQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from studbook_server.adapters import postgres
from studbook_server.http import build_app
from studbook_server.projector import KafkaProjector
from tests.conftest import Services
from tests.support import migrated, settings_for
from tests.test_openlineage import _token, graphql, served

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# mlflow warns about its own type hints and flavours while importing and logging: those are
# about mlflow, not about Studbook's answers.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    import numpy as np
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:mlflow"),
    # Stages are deprecated by MLflow (a FutureWarning raised at the caller), still served here.
    pytest.mark.filterwarnings("ignore:.*stages.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow"),
]

Factory = Callable[..., Coroutine[Any, Any, str]]
PROJECT = "churn"


@dataclass
class Server:
    base: str  # the Studbook API (GraphQL at /graphql)
    token: str
    database_url: str
    artifact_root: Path

    @property
    def tracking_uri(self) -> str:
        return f"{self.base}/mlflow/{PROJECT}"

    def gql(self, query: str) -> dict[str, Any]:
        return graphql(self.base, self.token, query)


@asynccontextmanager
async def deployment(
    kind: str, database_factory: Factory, topic_factory: Factory, services: Services, tmp: Path
) -> AsyncIterator[Server]:
    url = await database_factory()
    await migrated(url)
    token = await _token(url, projects=(PROJECT,))
    root = tmp / "artifacts"
    if kind == "up":
        settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None,
                                artifact_root=str(root))  # fmt: skip
        with served(build_app("up", settings)) as base:
            yield Server(base, token, url, root)
        return
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group, artifact_root=str(root))
    pool = await postgres.create_pool(url, max_size=3)
    projector = KafkaProjector(settings, pool, name="projector-mlflow")
    running = asyncio.create_task(projector.run())
    try:
        with served(build_app("api", settings)) as base:
            yield Server(base, token, url, root)
    finally:
        projector.stop()
        await running
        await pool.close()


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Server], MlflowClient]]:
    def point(server: Server) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", server.token)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.tracking_uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mlflow.set_tracking_uri(server.tracking_uri)
        mlflow.set_registry_uri(server.tracking_uri)
        return MlflowClient(server.tracking_uri, server.tracking_uri)

    yield point
    mlflow.end_run()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact_events(server: Server) -> list[dict[str, Any]]:
    data = server.gql(
        '{ auditTrail(filter: {project: "churn", types: ["artifact.stored"]}, first: 500) '
        "{ edges { node { subject actor payload } } } }"
    )
    return [e["node"] for e in data["auditTrail"]["edges"]]


# ------------------------------------------------------------------------------- the flows


def artifacts_flow(server: Server, client: MlflowClient, tmp: Path) -> None:
    mlflow.set_experiment("artifacts")
    data = bytes(range(256)) * 1000
    source = tmp / "blob.bin"
    source.write_bytes(data)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(source), artifact_path="raw")
        mlflow.log_text("hello, studbook\n", "notes/hello.txt")
        mlflow.log_dict({"a": 1, "b": [1, 2]}, "conf/settings.json")
    run_id = run.info.run_id
    listed = {f.path: f for f in client.list_artifacts(run_id)}
    assert sorted(listed) == ["conf", "notes", "raw"]
    assert all(f.is_dir for f in listed.values())
    [blob] = client.list_artifacts(run_id, "raw")
    assert (blob.path, blob.is_dir, blob.file_size) == ("raw/blob.bin", False, len(data))
    out = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp / "dl")))
    assert (out / "raw" / "blob.bin").read_bytes() == data
    assert (out / "notes" / "hello.txt").read_text() == "hello, studbook\n"
    assert json.loads((out / "conf" / "settings.json").read_text()) == {"a": 1, "b": [1, 2]}
    # Through Studbook: one artifact.stored event per file, about the run, with size and digest.
    events = {e["payload"]["path"].split("/artifacts/", 1)[1]: e for e in _artifact_events(server)
              if e["subject"] == f"{PROJECT}/run:{run_id}"}  # fmt: skip
    assert sorted(events) == ["conf/settings.json", "notes/hello.txt", "raw/blob.bin"]
    blob_event = events["raw/blob.bin"]["payload"]
    assert blob_event["size_bytes"] == len(data)
    assert blob_event["digest"] == _sha(data)
    assert blob_event["run"] == run_id
    assert events["raw/blob.bin"]["actor"] == "airflow"  # the token's name, not a claim
    assert Path(blob_event["uri"].removeprefix("file://")).read_bytes() == data


def registry_flow(server: Server, client: MlflowClient, tmp: Path) -> None:
    mlflow.set_experiment("churn-training")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    model = LogisticRegression(C=0.5).fit(x, y)
    with mlflow.start_run() as run:
        mlflow.log_param("C", 0.5)
        info = mlflow.sklearn.log_model(model, name="model")
    run_id = run.info.run_id
    logged = client.get_logged_model(info.model_id)
    assert logged.status.to_proto() == 2 or str(logged.status).endswith("READY")
    assert logged.source_run_id == run_id

    mv = mlflow.register_model(f"runs:/{run_id}/model", "churn-clf")
    assert (mv.name, mv.version, mv.status) == ("churn-clf", "1", "READY")
    assert mv.run_id == run_id
    mv2 = mlflow.register_model(f"models:/{info.model_id}", "churn-clf")
    assert mv2.version == "2"

    client.set_registered_model_alias("churn-clf", "champion", "1")
    assert client.get_model_version_by_alias("churn-clf", "champion").version == "1"
    loaded = mlflow.pyfunc.load_model("models:/churn-clf@champion")
    assert np.array_equal(loaded.predict(x), model.predict(x))

    client.set_model_version_tag("churn-clf", "1", "validated", "yes")
    assert client.get_model_version("churn-clf", "1").tags == {"validated": "yes"}
    client.update_model_version("churn-clf", "1", description="the first fit")
    assert client.get_model_version("churn-clf", "1").description == "the first fit"

    client.transition_model_version_stage("churn-clf", "1", "Production")
    client.transition_model_version_stage("churn-clf", "2", "Production",
                                          archive_existing_versions=True)  # fmt: skip
    assert client.get_model_version("churn-clf", "1").current_stage == "Archived"
    [latest] = client.get_latest_versions("churn-clf", stages=["Production"])
    assert latest.version == "2"
    by_stage = mlflow.pyfunc.load_model("models:/churn-clf/Production")
    assert np.array_equal(by_stage.predict(x), model.predict(x))

    found = client.search_model_versions("name='churn-clf'")
    assert sorted(v.version for v in found) == ["1", "2"]
    assert [v.version for v in client.search_model_versions("tag.validated = 'yes'")] == ["1"]
    client.create_registered_model("other-model", tags={"team": "growth"})
    names = [m.name for m in client.search_registered_models()]
    assert names == ["churn-clf", "other-model"]
    assert [m.name for m in client.search_registered_models("name LIKE 'other%'")] == [
        "other-model"
    ]
    client.delete_registered_model_alias("churn-clf", "champion")
    assert client.get_registered_model("churn-clf").aliases == {}

    # Through Studbook: version 1 trained by the run, its digest the manifest of its files.
    files = [e["payload"] for e in _artifact_events(server)
             if e["subject"] == f"{PROJECT}/logged_model:{info.model_id}"]  # fmt: skip
    assert {f["path"].rsplit("/", 1)[1] for f in files} >= {"MLmodel", "requirements.txt"}
    folder = f"models/{info.model_id}/artifacts/"
    manifest = "".join(
        f"{p}\t{d}\t{s}\n"
        for p, d, s in sorted(
            (f["path"].split(folder, 1)[1], f["digest"], f["size_bytes"]) for f in files
        )
    )
    digest = _sha(manifest.encode())
    data = server.gql(
        '{ modelVersion(id: "churn/model_version:churn-clf@1") { number runId digest '
        "run { runId } } "
        'lineage(from: "churn/model_version:churn-clf@1", direction: UPSTREAM) '
        "{ nodes { id type } edges { source destination type } } "
        'compareModelVersions(ids: ["churn/model_version:churn-clf@1", '
        '"churn/model_version:churn-clf@2"]) { modelVersions { number digest runId } } }'
    )
    assert data["modelVersion"] == {
        "number": 1, "runId": run_id, "digest": digest, "run": {"runId": run_id},
    }  # fmt: skip
    assert {"source": f"churn/run:{run_id}", "destination": "churn/model_version:churn-clf@1",
            "type": "TRAINED"} in data["lineage"]["edges"]  # fmt: skip
    assert data["compareModelVersions"]["modelVersions"] == [
        {"number": 1, "digest": digest, "runId": run_id},
        {"number": 2, "digest": digest, "runId": run_id},
    ]


def autolog_flow(server: Server, client: MlflowClient) -> None:
    mlflow.set_experiment("autolog")
    mlflow.sklearn.autolog(log_input_examples=False, log_model_signatures=False)
    try:
        rng = np.random.default_rng(3)
        x = rng.normal(size=(100, 3))
        y = (x[:, 0] > 0).astype(int)
        with mlflow.start_run() as run:
            LogisticRegression(C=2.0, max_iter=50).fit(x, y)
    finally:
        mlflow.sklearn.autolog(disable=True)
    got = client.get_run(run.info.run_id)
    assert got.data.params["C"] == "2.0"
    assert "training_accuracy_score" in got.data.metrics
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]
    names = {e["payload"]["path"].rsplit("/", 1)[1] for e in _artifact_events(server)
             if e["subject"] == f"{PROJECT}/logged_model:{models[0].model_id}"}  # fmt: skip
    assert "MLmodel" in names


# ------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("kind", ["up", "kafka"])
async def test_artifacts_models_and_registry(
    kind: str,
    services: Services,
    database_factory: Factory,
    topic_factory: Factory,
    tmp_path: Path,
    client_env: Callable[[Server], MlflowClient],
) -> None:
    async with deployment(kind, database_factory, topic_factory, services, tmp_path) as server:
        client = client_env(server)
        await asyncio.to_thread(artifacts_flow, server, client, tmp_path)
        await asyncio.to_thread(registry_flow, server, client, tmp_path)
        await asyncio.to_thread(autolog_flow, server, client)


def _upload(url: str, token: str, size: int, chunk: int) -> str:
    sha = hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = os.urandom(chunk)
        sent = 0
        while sent < size:
            piece = block[: min(chunk, size - sent)]
            sha.update(piece)
            sent += len(piece)
            yield piece

    r = requests.put(url, data=body(), headers={"Authorization": f"Bearer {token}"}, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    return "sha256:" + sha.hexdigest()


async def test_a_large_upload_is_streamed_not_held(
    services: Services, database_factory: Factory, topic_factory: Factory, tmp_path: Path
) -> None:
    size = 96 * 1024 * 1024
    async with deployment("up", database_factory, topic_factory, services, tmp_path) as server:
        url = f"{server.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/1/big/artifacts/big.bin"
        # Warm up the path once (imports, pools) before measuring the peak.
        await asyncio.to_thread(_upload, url.replace("big.bin", "small.bin"), server.token,
                                1024 * 1024, 64 * 1024)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        digest = await asyncio.to_thread(_upload, url, server.token, size, 256 * 1024)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        # Client and server share this process; neither holds the file.
        assert grown < size // 3, f"peak RSS grew by {grown} bytes for a {size}-byte upload"
        stored = server.artifact_root / PROJECT / "1" / "big" / "artifacts" / "big.bin"
        assert stored.stat().st_size == size
        [event] = [e for e in _artifact_events(server)
                   if e["payload"]["path"] == "1/big/artifacts/big.bin"]  # fmt: skip
        assert event["payload"]["digest"] == digest
        assert event["payload"]["size_bytes"] == size
        assert event["subject"] == f"{PROJECT}/run:big"
        # Downloads stream too, and give the same bytes.
        assert await asyncio.to_thread(_downloaded_digest, url, server.token) == digest


def _downloaded_digest(url: str, token: str) -> str:
    sha = hashlib.sha256()
    auth = {"Authorization": f"Bearer {token}"}
    with requests.get(url, headers=auth, stream=True, timeout=600) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1024 * 1024):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


async def test_paths_that_leave_the_root_are_refused(
    services: Services, database_factory: Factory, topic_factory: Factory, tmp_path: Path
) -> None:
    async with deployment("up", database_factory, topic_factory, services, tmp_path) as server:
        await asyncio.to_thread(_check_refusals, server, tmp_path)


def _check_refusals(server: Server, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {server.token}"}
    base = f"{server.tracking_uri}/api/2.0/mlflow-artifacts/artifacts"
    # (A client normalises a literal `/../` away; encoded, it reaches the server.)
    for path in (
        "1/%2e%2e/%2e%2e/etc/passwd",
        "..%2F..%2Fx",
        "1/run/artifacts/%2e%2e/%2e%2e/x",
    ):
        r = requests.put(f"{base}/{path}", data=b"x", headers=auth, timeout=30)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert ".." in r.json()["message"]
    r = requests.get(base, params={"path": "../x"}, headers=auth, timeout=30)
    assert r.status_code == 400
    r = requests.get(f"{base}/1/none/artifacts/missing.txt", headers=auth, timeout=30)
    assert (r.status_code, r.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    info = requests.get(f"{server.tracking_uri}/api/3.0/mlflow/server-info", headers=auth,
                        timeout=30)  # fmt: skip
    assert info.json() == {"multipart_uploads_enabled": False,
                           "multipart_downloads_enabled": False}  # fmt: skip
    assert not any(tmp_path.parent.glob("etc"))

"""`studbook-server import-mlflow`: a real `mlflow server` (the pinned mlflow, from the cached
virtualenv of bench/_mlflow_env.py, on a throwaway SQLite store) is filled by the real client,
imported into a project, and read back through the same client from Studbook: the same
experiments, runs, params, tags, metric histories, datasets and the model registry. Importing
again changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import mlflow
import mlflow.data
import pandas as pd
from mlflow.entities import Metric, ViewType
from mlflow.tracking import MlflowClient

from studbook_server.adapters import postgres
from studbook_server.http import build_app
from tests.support import migrated, settings_for
from tests.test_openlineage import _store_projected, _token, served

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
from _mlflow_env import MlflowServer, ensure_venv  # noqa: E402

Factory = Callable[..., Coroutine[Any, Any, str]]
PROJECT = "imported"
# mlflow warns about its own pandas calls and about stages (still part of its API): not errors.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
    pytest.mark.filterwarnings("ignore:.*transition_model_version_stage.*:FutureWarning"),
]


def fill(uri: str) -> None:
    """What a team has in MLflow: two experiments (one deleted), nested, failed and deleted
    runs, params, tags, long metric histories, a dataset."""
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("churn")
    df = pd.DataFrame({"tenure": [1.0, 2.0, 3.0], "plan": ["a", "b", "a"]})
    dataset = mlflow.data.from_pandas(df, source="s3://lake/churn.csv", name="churn-train")
    with mlflow.start_run(run_name="sweep") as parent:
        mlflow.log_params({"lr": "0.01", "layers": 3})
        mlflow.set_tags({"team": "growth"})
        mlflow.log_input(dataset, context="training")
        now = int(time.time() * 1000)
        client.log_batch(parent.info.run_id, metrics=[
            Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(1500)
        ])  # fmt: skip
        mlflow.log_metric("auc", 0.9)
        with mlflow.start_run(run_name="fold", nested=True):
            mlflow.log_metric("auc", 0.8, step=3)
    try:
        with mlflow.start_run(run_name="bad"):
            raise RuntimeError("diverged")
    except RuntimeError:
        pass
    gone = client.create_run(mlflow.get_experiment_by_name("churn").experiment_id, run_name="gone")
    client.set_terminated(gone.info.run_id, "KILLED")
    client.delete_run(gone.info.run_id)
    old = client.create_experiment("old", tags={"keep": "no"})
    client.create_run(old, run_name="in-old")
    client.delete_experiment(old)
    client.create_run("0", run_name="default-run")
    client.create_registered_model("churn-clf", tags={"team": "growth"}, description="Churn")
    client.create_model_version("churn-clf", "s3://models/churn/1", run_id=parent.info.run_id,
                                tags={"checked": "yes"})  # fmt: skip
    client.create_model_version("churn-clf", "s3://models/churn/2", run_id=parent.info.run_id)
    client.transition_model_version_stage("churn-clf", "1", "Staging")
    client.set_registered_model_alias("churn-clf", "champion", "2")


def dump(uri: str) -> dict[str, Any]:
    """Everything the client can read, in a comparable form."""
    client = MlflowClient(uri)
    out: dict[str, Any] = {}
    for e in client.search_experiments(view_type=ViewType.ALL):
        runs = {}
        for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL):
            i = r.info
            runs[i.run_id] = {
                # user_id without an `mlflow.user` tag is the importing token's name in
                # Studbook (docs/mlflow.md); the client always sets the tag.
                "info": (i.run_name, i.status, i.start_time, i.end_time, i.lifecycle_stage,
                         i.user_id if "mlflow.user" in r.data.tags else None),
                "params": r.data.params,
                "tags": r.data.tags,
                "metrics": r.data.metrics,
                "history": {
                    k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(i.run_id, k)]
                    for k in r.data.metrics
                },
                "datasets": sorted(
                    (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                     d.dataset.schema, d.dataset.profile)
                    for d in r.inputs.dataset_inputs
                ),
            }  # fmt: skip
        out[e.experiment_id] = {
            "name": e.name, "stage": e.lifecycle_stage, "tags": e.tags, "runs": runs,
        }  # fmt: skip
    registry = {}
    for m in client.search_registered_models():
        versions = sorted(
            (int(v.version), v.source, v.run_id, v.tags, v.current_stage)
            for v in client.search_model_versions(f"name='{m.name}'")
        )
        registry[m.name] = (m.description, m.tags, m.aliases, versions)
    out["registry"] = registry
    return out


def import_command(source: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env["STUDBOOK_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(Path(sys.executable).parent / "studbook-server"), "import-mlflow", "--from", source,
         "--project", PROJECT],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


async def _events(url: str) -> int:
    con = await postgres.connect(url)
    try:
        n: int = await con.fetchval("SELECT count(*) FROM public.events")
        return n
    finally:
        await con.close()


async def test_import_mlflow_copies_everything_once(database_factory: Factory) -> None:
    venv = await asyncio.to_thread(ensure_venv)
    url = await database_factory()
    await migrated(url)
    token = await _token(url, projects=(PROJECT,))
    with MlflowServer.sqlite(venv) as source:
        await asyncio.to_thread(fill, source.url)
        expected = await asyncio.to_thread(dump, source.url)
        first = await asyncio.to_thread(import_command, source.url, url)
        assert first.returncode == 0, first.stderr
        assert "import-mlflow: 3 experiments, 6 runs, 1 registered models, 2 model versions" in (
            first.stderr
        )
        stored = await _events(url)
        again = await asyncio.to_thread(import_command, source.url, url)
        assert again.returncode == 0, again.stderr
        assert await _events(url) == stored, "a second import stored new events"
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None)
    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    try:
        with served(build_app("up", settings)) as up:
            await _store_projected(url)  # the imported history, projected
            got = await asyncio.to_thread(dump, f"{up}/mlflow/{PROJECT}")
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    assert set(got) == set(expected)
    assert got["registry"] == expected["registry"]
    assert expected["registry"]["churn-clf"][2] == {"champion": "2"}
    for exp_id, exp in expected.items():
        assert got[exp_id] == exp, f"experiment {exp_id} differs"
    churn = next(e for e in got.values() if e["name"] == "churn")
    sweep = next(r for r in churn["runs"].values() if r["info"][0] == "sweep")
    assert len(sweep["history"]["loss"]) == 1500
    assert sweep["datasets"][0][0] == "churn-train"

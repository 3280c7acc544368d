"""The route table: every MLflow endpoint Studbook serves, one entry per handler module.

A module exposes ``ENDPOINTS: list[Endpoint]``; adding a module is one line below. Paths are the
MLflow paths (`/api/2.0/mlflow/...`), matched after the `/mlflow/<project>` prefix; `{name}`
matches one path segment, `{name:path}` the rest of the path.
"""

from __future__ import annotations

from studbook_server.mlflow._http import Endpoint

ENDPOINTS: list[Endpoint] = []


def _load() -> list[Endpoint]:
    # Imported here so a module's import error names that module, and modules may import _http.
    from studbook_server.mlflow import _artifacts, _experiments, _models, _registry, _runs, _search

    return [
        *_experiments.ENDPOINTS,  # experiments/* (tracking)
        *_runs.ENDPOINTS,  # runs/* writes and reads, log-inputs (tracking)
        *_search.ENDPOINTS,  # runs/search, metrics/get-history* (tracking)
        *_artifacts.ENDPOINTS,  # mlflow-artifacts/*, server-info (artifacts)
        *_models.ENDPOINTS,  # logged-models/*, runs/outputs (MLflow 3 logged models)
        *_registry.ENDPOINTS,  # registered-models/*, model-versions/* (model registry)
    ]


def endpoints() -> list[Endpoint]:
    if not ENDPOINTS:
        ENDPOINTS.extend(_load())
    return ENDPOINTS

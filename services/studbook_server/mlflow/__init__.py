"""MLflow's REST API over Studbook: a team switches by setting MLFLOW_TRACKING_URI.

`http://host:8080/mlflow/<project>` is the tracking URI; every MLflow path (`/api/2.0/mlflow/...`,
`/api/2.0/mlflow-artifacts/...`, `/api/3.0/mlflow/...`) lives under it. Writes become Studbook
events through the one write path; reads come from the read models. docs/mlflow.md has the mapping.

Who owns what (one module per area; the route table in `_table.py` lists each module's ENDPOINTS):
- `_app.py` (dispatch, project choice, auth), `_http.py` (request parsing, Ctx, Endpoint),
  `_errors.py` (MlflowError), `_table.py`: the package skeleton (tracking).
- `_ids.py`, `_experiments.py`, `_runs.py`, `_search.py`, `_filter.py`, `_reads.py`,
  `importer.py`: tracking, search and `studbook-server import-mlflow`.
- `_artifacts.py`, `_models.py`, `_registry.py`: artifacts, MLflow 3 logged models, model registry.
"""

from __future__ import annotations

from studbook_server.mlflow._app import PREFIX, UNSUPPORTED, routes
from studbook_server.mlflow._errors import MlflowError
from studbook_server.mlflow._http import Ctx, Endpoint, Params

__all__ = ["PREFIX", "UNSUPPORTED", "Ctx", "Endpoint", "MlflowError", "Params", "routes"]

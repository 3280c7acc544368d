"""Studbook's Python SDK: report datasets, runs and models from training code.

Events leave the caller's thread at once: a background thread batches them to the ingest
gateway (``http(s)://``) or to Kafka (``kafka://``), and spools them to local disk while the
destination is unreachable, so nothing is lost. ::

    import studbook

    studbook.init(url="http://127.0.0.1:8080", project="churn")
    ds = studbook.dataset_version("churn-events", path="data/")
    with studbook.start_run("xgb-baseline", params={"lr": 0.1}) as run:
        run.use(ds, role="train")
        run.log_metric("loss", 0.3, step=1)
        mv = run.register_model("churn-clf", artifact_uri="s3://bucket/model.pkl")
    studbook.set_alias("churn-clf", version=1, alias="production")

Configuration: :func:`init` (or ``STUDBOOK_URL``, ``STUDBOOK_PROJECT``, ``STUDBOOK_TOKEN``,
``STUDBOOK_ACTOR``, ``STUDBOOK_EVENTS_TOPIC``, ``STUDBOOK_SPOOL_DIR``).

Recording: :func:`dataset_version` returns a :class:`DatasetVersion` (:func:`dataset_name` is
the name a dataset gets from its uri, the one OpenLineage pipelines writing there report);
:func:`start_run` returns a :class:`Run`, whose :meth:`Run.register_model` returns a
:class:`ModelVersion`; :func:`set_alias`, :func:`remove_alias`, :func:`approve`,
:func:`reject`, :func:`deploy`, :func:`undeploy` act on model versions by number;
:func:`annotate` attaches a note; :func:`register_model` registers a version from a finished
run; :func:`backdate` records history that happened earlier (imports, demos).

Delivery: a run's end hands its last events to the background thread without waiting for the
network; :func:`flush` waits until everything emitted so far is delivered (or spooled) and
raises the refusals among it, as :func:`shutdown` does at interpreter exit;
:func:`last_consistency_token`. Registering a model version is sent at once: its
:class:`ModelVersion` carries the number the gateway allocated (``version``).

Exceptions::

    StudbookError          base of everything below
    ├── ConfigError        bad or missing configuration
    ├── EventRejected      the gateway refused the data (HTTP 4xx); .status, .errors, .event_ids
    └── TransportError     delivery did not finish in time (flush timeout)

Bad arguments (a NaN metric, a malformed name) raise ``ValueError``/``TypeError`` at once. A
refused token (HTTP 401/403, e.g. revoked during a run) loses nothing: events wait in the spool,
a ``UserWarning`` says so once per process, and :func:`init` with a new token sends them.
"""

from __future__ import annotations

from studbook._api import (
    annotate,
    approve,
    backdate,
    dataset_version,
    deploy,
    flush,
    init,
    last_consistency_token,
    register_model,
    reject,
    remove_alias,
    set_alias,
    shutdown,
    start_run,
    undeploy,
)
from studbook._errors import ConfigError, EventRejected, StudbookError, TransportError
from studbook._models import DatasetVersion, ModelVersion
from studbook._naming import dataset_name
from studbook._run import Run
from studbook._version import __version__

__all__ = [
    "ConfigError",
    "DatasetVersion",
    "EventRejected",
    "ModelVersion",
    "Run",
    "StudbookError",
    "TransportError",
    "__version__",
    "annotate",
    "approve",
    "backdate",
    "dataset_name",
    "dataset_version",
    "deploy",
    "flush",
    "init",
    "last_consistency_token",
    "register_model",
    "reject",
    "remove_alias",
    "set_alias",
    "shutdown",
    "start_run",
    "undeploy",
]

# Public objects say they live in `studbook`, not in the private module that defines them.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "studbook"
del _name

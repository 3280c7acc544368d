"""The module-level API: one client per process, configured by :func:`init` or the environment.

This is where the client is built (the composition root), so the choice of transport for a url
(:func:`transport_for`) lives here too: the Kafka transport, and aiokafka, are imported only when
a ``kafka://`` client first sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from studbook import _events, _gitinfo, _rerun, _run
from studbook._client import Client
from studbook._config import Config
from studbook._digest import digest_path, locate
from studbook._environment import environment_info
from studbook._errors import ConfigError
from studbook._events import (
    check_digest,
    check_id,
    check_label,
    check_name,
    check_subject,
    check_text,
    check_version_number,
    uuid7,
)
from studbook._models import DatasetVersion, ModelVersion
from studbook._naming import dataset_name
from studbook._run import Run, dataset_ref, registration
from studbook._transport import HttpTransport, Transport

_client: Client | None = None
_lock = threading.Lock()


def init(
    url: str | None = None,
    project: str | None = None,
    token: str | None = None,
    actor: str | None = None,
    *,
    topic: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Configure the SDK for this process.

    Arguments default to ``STUDBOOK_URL`` (``http://127.0.0.1:8080``), ``STUDBOOK_PROJECT``
    (required), ``STUDBOOK_TOKEN``, ``STUDBOOK_ACTOR`` (``user@host``),
    ``STUDBOOK_EVENTS_TOPIC`` (``studbook.events``, for ``kafka://`` urls) and
    ``STUDBOOK_SPOOL_DIR`` (``~/.cache/studbook/spool``). ``url`` is the ingest gateway
    (``http(s)://host:port``) or Kafka (``kafka://host:port[,host:port]``). Starts the
    background thread, which first re-sends events spooled by processes that have ended.
    Calling it again with other settings flushes and replaces the previous configuration;
    calling it again with only another ``token`` (e.g. after the old one was revoked) keeps the
    configuration, open runs and spool, and re-sends the spooled events with the new token.
    Raises :class:`ConfigError` if the settings are unusable.
    """
    config = Config.resolve(
        url=url, project=project, token=token, actor=actor, topic=topic, spool_dir=spool_dir
    )
    _install(config)


def transport_for(config: Config) -> Transport:
    """The transport for ``config.url``; called in the background thread."""
    if config.scheme == "kafka":
        from studbook._kafka import KafkaTransport  # imports aiokafka: only for kafka:// urls

        return KafkaTransport(config.url, config.topic)
    return HttpTransport(
        config.url,
        config.token,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
    )


def _install(config: Config, transport: Transport | None = None) -> Client:
    """Make a client for ``config`` the process's client (``transport``: a test seam)."""
    global _client
    with _lock:
        old = _client
        if (
            old is not None
            and transport is None
            and dataclasses.replace(old.config, token=config.token) == config
        ):
            new = None  # the same settings, perhaps with another token: keep the client
        else:
            factory = transport_for if transport is None else _fixed(transport)
            new = _client = Client(config, transport_factory=factory)
    if new is None:
        assert old is not None
        if old.config.token != config.token:
            old.set_token(config.token)  # outside the lock: it may wait for a full queue
        return old
    if old is not None:
        if old.open_runs():  # its runs still report through it; stopped at exit
            old.flush(raise_errors=False)
        else:
            old.shutdown(raise_errors=False)
        new.refusals.extend(old.refusals)
        old.refusals.clear()
    return new


def _fixed(transport: Transport) -> Callable[[Config], Transport]:
    return lambda _config: transport


def client() -> Client:
    """The process's client; configured from the environment on first use."""
    c = _client
    if c is not None:
        return c
    try:
        init()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (call studbook.init first)") from None
    assert _client is not None
    return _client


# --------------------------------------------------------------------------- datasets


def dataset_version(
    name: str | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    uri: str | None = None,
    parents: Iterable[DatasetVersion | tuple[str, str] | str] = (),
    row_count: int | None = None,
    schema: Mapping[str, Any] | Sequence[Any] | None = None,
    produced_by: Run | str | None = None,
    digest: str | None = None,
) -> DatasetVersion:
    """Record a version of dataset ``name`` (``dataset.version.created``) and return it.

    ``path`` (a file or a directory) is hashed, so that the version id, the first 12 hex
    digits of the digest, names the content; ``uri`` says where the data lives (default: the
    path's ``file://`` uri). Without ``path``, give ``uri`` and the content's ``digest``.
    ``parents`` are the versions this one derives from; ``produced_by`` the run (or run id)
    that made it. A version hashed from ``path`` also records where that path was (its
    ``source``: a ``file://`` uri, and the path within the code's git repository when it lies
    inside), so that ``studbook reproduce`` can put the data back where the code reads it.
    Without ``name``, the dataset is the one ``uri`` names (:func:`dataset_name`): the dataset
    an OpenLineage pipeline writing there reports, so lineage joins the two, and the version
    derives from the latest version such a pipeline reported (docs/openlineage.md).
    """
    c = client()
    if name is None:
        if uri is None:
            raise ValueError("dataset_version needs a name, or a uri to name the dataset by")
        name = dataset_name(uri)
    check_name(name, "dataset name")
    size: int | None = None
    source: dict[str, str] | None = None
    if path is not None:
        computed, size = digest_path(path)
        if digest is not None and check_digest(digest) != computed:
            raise ValueError(f"digest {digest} does not match the content of {path!r} ({computed})")
        digest = computed
        local = locate(path, hash_local=False)[0]
        if uri is None:
            uri = local
        source = {"uri": local}
        root = _gitinfo.process_snapshot().root
        if root is not None:
            try:
                inside = Path(path).expanduser().resolve().relative_to(root).as_posix()
            except ValueError:
                inside = None
            if inside and inside != "." and len(inside) <= 1024:
                source["repo_path"] = inside
    if digest is None:
        raise ValueError("dataset_version needs a path to hash, or a digest (with a uri)")
    check_digest(digest)
    if not uri:
        raise ValueError("dataset_version needs a uri when no path is given")
    check_text(uri, "uri", max_length=2048, allow_empty=False)
    version = digest.removeprefix("sha256:")[:12]
    payload: dict[str, Any] = {"version": version, "uri": uri, "digest": digest}
    if size is not None:
        payload["size_bytes"] = size
    if row_count is not None:
        if isinstance(row_count, bool) or not isinstance(row_count, int) or row_count < 0:
            raise ValueError(f"row_count must be an int >= 0, got {row_count!r}")
        payload["row_count"] = row_count
    if schema is not None:
        if not isinstance(schema, Mapping | list | tuple):
            raise TypeError("schema must be a mapping or a list (a JSON object or array)")
        payload["schema"] = dict(schema) if isinstance(schema, Mapping) else list(schema)
    refs: list[dict[str, str]] = []
    for parent in parents:
        ds, ver = dataset_ref(parent, "parent")
        if {"dataset": ds, "version": ver} not in refs:
            refs.append({"dataset": ds, "version": ver})
    if refs:
        payload["parents"] = refs
    if produced_by is not None:
        run_id = produced_by.id if isinstance(produced_by, Run) else produced_by
        payload["produced_by_run"] = check_id(run_id, "produced_by")
    if source is not None and len(source["uri"]) <= 2048:
        payload["source"] = source
    c.emit("dataset.version.created", f"dataset:{name}", payload, schema_version=2)
    c.raise_refused()
    return DatasetVersion(name, version, digest, uri, size)


# --------------------------------------------------------------------------- runs


def start_run(
    name: str,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, object] | None = None,
    experiment: str | None = None,
    *,
    parent: Run | str | None = None,
    run_id: str | None = None,
) -> Run:
    """Start a run (``run.started``, then its params and tags) and return it.

    Use it as a context manager (``with studbook.start_run(...) as run:``) or call
    :meth:`Run.finish`. The run records the git commit, branch, dirtiness and remote of the
    code, the entry point, the command line (secrets masked), the working directory, the
    uncommitted changes of a dirty tree (``run.diff.recorded``), the Python version, the
    installed packages and the host. ``run_id`` names the run yourself (e.g. a scheduler's job
    id; letters, digits, ``.``, ``_``, ``-``); by default it is a new UUIDv7. In a process
    started by ``studbook reproduce``, the first run is the reproduction: it records the run it
    re-runs and takes the id the command chose.
    """
    c = client()
    c.raise_refused()  # report earlier refusals before this run exists, not after
    # A run's name is a display name: free text, as the run.started schema has it.
    check_text(name, "run name", max_length=250, allow_empty=False)
    payload: dict[str, Any] = {"name": name}
    if experiment is not None:
        payload["experiment"] = check_name(experiment, "experiment")
    if parent is not None:
        payload["parent_run"] = check_id(parent.id if isinstance(parent, Run) else parent, "parent")
    snapshot = _gitinfo.process_snapshot()
    if snapshot.code:
        payload["code"] = dict(snapshot.code)
    payload["environment"] = dict(environment_info())
    rerun = _rerun.claim()
    if rerun is not None:
        payload["reproduces"] = {
            "run": check_id(rerun.of, "reproduced run"),
            "derived": rerun.derived,
        }
        # Never the original's own id (a script that names its runs): that would overwrite it.
        run_id = rerun.run_id or (None if run_id == rerun.of else run_id)
    run = Run(c, uuid7() if run_id is None else check_id(run_id, "run_id"), name, experiment)
    c.emit("run.started", run.subject, payload, schema_version=3)
    diff = snapshot.diff.payload() if snapshot.diff is not None else None
    if diff is not None:
        c.emit("run.diff.recorded", run.subject, diff)
    c.watch_run(run)
    if params:
        run.log_params(params)
    if tags:
        run.set_tags(tags)
    return run


# --------------------------------------------------------------------------- models


def _model_event(model: str, event_type: str, payload: dict[str, Any]) -> None:
    c = client()
    check_name(model, "model name")
    c.emit(event_type, f"model:{model}", payload)
    c.raise_refused()


def _model_name(model: str | ModelVersion) -> str:
    return model.model if isinstance(model, ModelVersion) else model


def register_model(
    name: str,
    artifact_uri: str,
    framework: str | None = None,
    signature: Mapping[str, Any] | None = None,
    *,
    run: str | Run | None = None,
    digest: str | None = None,
    description: str | None = None,
) -> ModelVersion:
    """Register a new version of model ``name`` outside a run's ``with`` block, e.g. the best of
    several finished runs (``model.version.registered``). Pass ``run`` (a :class:`Run` or a run
    id) so the version's lineage reaches the run's data and code; inside a run, prefer
    :meth:`Run.register_model`. As there, the registration is sent at once, after every event
    emitted before it, and the returned :class:`ModelVersion` carries the version number the
    gateway allocated (``None`` with a ``kafka://`` url or when the event was spooled)."""
    run_id = run.id if isinstance(run, Run) else run
    payload = registration(name, artifact_uri, run_id, framework, signature, digest, description)
    c = client()
    event_id, number = c.register(f"model:{name}", payload)
    return ModelVersion(name, artifact_uri, run_id, event_id, digest, number)


def set_alias(model: str | ModelVersion, version: int, alias: str) -> None:
    """Point ``alias`` (e.g. ``production``) of ``model`` at version number ``version``."""
    check_version_number(version)
    check_label(alias, "alias")
    _model_event(_model_name(model), "model.alias.set", {"alias": alias, "version": version})


def remove_alias(model: str | ModelVersion, alias: str) -> None:
    """Remove ``alias`` from ``model``."""
    check_label(alias, "alias")
    _model_event(_model_name(model), "model.alias.removed", {"alias": alias})


def _review(
    model: str | ModelVersion,
    version: int,
    comment: str | None,
    evidence: Sequence[str] | None,
    event_type: str,
) -> None:
    payload: dict[str, Any] = {"version": check_version_number(version)}
    if comment is not None:
        payload["comment"] = check_text(comment, "comment", max_length=10000)
    if evidence:
        payload["evidence"] = [check_text(e, "evidence", max_length=2048) for e in evidence]
    _model_event(_model_name(model), event_type, payload)


def approve(
    model: str | ModelVersion,
    version: int,
    comment: str | None = None,
    *,
    evidence: Sequence[str] | None = None,
) -> None:
    """Approve version ``version`` of ``model``; ``evidence``: report URIs or run ids."""
    _review(model, version, comment, evidence, "model.version.approved")


def reject(
    model: str | ModelVersion,
    version: int,
    comment: str | None = None,
    *,
    evidence: Sequence[str] | None = None,
) -> None:
    """Reject version ``version`` of ``model``; ``evidence``: report URIs or run ids."""
    _review(model, version, comment, evidence, "model.version.rejected")


def deploy(
    model: str | ModelVersion, version: int, environment: str, target: str | None = None
) -> None:
    """Record that version ``version`` of ``model`` is deployed to ``environment``."""
    payload: dict[str, Any] = {
        "version": check_version_number(version),
        "environment": check_label(environment, "environment"),
    }
    if target is not None:
        payload["target"] = check_text(target, "target", max_length=500, allow_empty=False)
    _model_event(_model_name(model), "model.version.deployed", payload)


def undeploy(model: str | ModelVersion, version: int, environment: str) -> None:
    """Record that version ``version`` of ``model`` was removed from ``environment``."""
    payload = {
        "version": check_version_number(version),
        "environment": check_label(environment, "environment"),
    }
    _model_event(_model_name(model), "model.version.undeployed", payload)


# --------------------------------------------------------------------------- annotations


def annotate(
    subject: str | Run | DatasetVersion | ModelVersion,
    text: str,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Attach a note to a subject: ``run:<id>``, ``dataset:<name>``, ``model:<name>``,
    ``project:<project>``, or a :class:`Run`, :class:`DatasetVersion` or :class:`ModelVersion`."""
    if isinstance(subject, Run):
        where = subject.subject
    elif isinstance(subject, DatasetVersion):
        where = f"dataset:{subject.dataset}"
    elif isinstance(subject, ModelVersion):
        where = f"model:{subject.model}"
    else:
        where = check_subject(subject)
    payload: dict[str, Any] = {
        "text": check_text(text, "text", max_length=10000, allow_empty=False)
    }
    if labels:
        for key, value in labels.items():
            check_text(key, "label name", max_length=250, allow_empty=False)
            check_text(value, f"label {key!r}", max_length=1000)
        payload["labels"] = dict(labels)
    c = client()
    c.emit("annotation.added", where, payload)
    c.raise_refused()


# --------------------------------------------------------------------------- delivery


def flush(timeout: float | None = None) -> None:
    """Block until every event emitted so far is acknowledged or spooled.

    Raises :class:`EventRejected` if the gateway refused some, :class:`TransportError` if
    ``timeout`` (seconds) passes first (the events are still delivered in the background).
    """
    c = _client
    if c is not None:
        c.flush(timeout)


def shutdown(timeout: float | None = None) -> None:
    """Finish open runs, flush, stop the background thread; runs at interpreter exit too.

    Events that could not be delivered stay in the spool for the next :func:`init`.
    """
    global _client
    with _lock:
        c, _client = _client, None
    if c is not None:
        c.shutdown(timeout)


def last_consistency_token() -> str | None:
    """The consistency token of the gateway's last acknowledgement (``None`` before any,
    and with Kafka). Pass it to the read API to read your own writes."""
    c = _client
    return c.consistency_token if c is not None else None


@contextlib.contextmanager
def backdate(when: datetime) -> Iterator[None]:
    """Record what happens inside the block as if it started at ``when``.

    Event times (``occurred_at`` and metric timestamps) start at ``when`` and advance with the
    clock from there; the store still records when it actually received them, so "as known
    at" questions stay truthful. Meant for importing history from another system and for
    demos. It shifts the clock of the whole process, so do not use it while other threads
    report live work. ``when`` must carry a timezone.
    """
    if when.tzinfo is None:
        raise ValueError("backdate needs a timezone-aware datetime, e.g. datetime(..., tzinfo=UTC)")
    previous_offset, previous_clock = _events._offset_ns, _run._time_ns
    _events._offset_ns = int(when.timestamp() * 1_000_000_000) - time.time_ns()
    _run._time_ns = _events.event_time_ns
    try:
        yield
    finally:
        _events._offset_ns, _run._time_ns = previous_offset, previous_clock

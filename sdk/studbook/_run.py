"""A run: one execution of training or evaluation code, and the events it emits.

Metric points take the fast path: :meth:`Run.log_metric` checks the value, then appends a
tuple to the run's deque (atomic under the GIL, no lock, no I/O). The background thread
collects the points every ``linger_s`` (and the caller hands over 1000 points at once when they
pile up faster), turning each 1000 into one ``run.metrics.logged`` event.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from studbook._digest import locate
from studbook._dispatch import MetricsChunk, Point
from studbook._errors import StudbookError
from studbook._events import (
    MAX_ITEMS_PER_MAP_EVENT,
    MAX_METRICS_PER_EVENT,
    ROLES,
    check_digest,
    check_id,
    check_key,
    check_name,
    check_text,
)
from studbook._models import DatasetVersion, ModelVersion
from studbook._naming import dataset_name

if TYPE_CHECKING:
    from studbook._config import Config

ParamValue = str | int | float | bool | None
Status = Literal["completed", "failed", "killed"]


class RunClient(Protocol):
    """What a run needs from the client that sends its events (:class:`studbook._client.Client`)."""

    @property
    def config(self) -> Config: ...

    @property
    def producer(self) -> Mapping[str, str]: ...

    @property
    def refusals(self) -> Sized:
        """Refusals and warnings not yet reported: checked on the hot path, so cheap."""
        ...

    def raise_refused(self) -> None:
        """Report (warn or raise) what the background thread left for the caller's thread."""
        ...

    def put(self, item: object) -> None:
        """Hand a metrics chunk to the background thread; blocks while its queue is full."""
        ...

    def emit(
        self, event_type: str, subject: str, payload: Mapping[str, Any], *, schema_version: int = 1
    ) -> str:
        """Queue one event; return its event id."""
        ...

    def watch_run(self, run: Run) -> None:
        """Have the background thread collect the run's buffered points."""
        ...

    def unwatch_run(self, run: Run) -> None: ...

    def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> None: ...

    def register(self, subject: str, payload: Mapping[str, Any]) -> tuple[str, int | None]:
        """Send a registration after everything queued; (event id, version number or None)."""
        ...

    def run_finished(self, *, raise_errors: bool) -> None:
        """A run's last events are queued: report what is known (or, where ``atexit`` may not
        run, wait for their delivery)."""
        ...


_time_ns = time.time_ns


def _as_float(key: str, value: object) -> float:
    if isinstance(value, str | bytes):
        raise TypeError(f"metric {key!r}: value must be a number, got {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]  # int, numpy and torch scalars
    except (TypeError, ValueError, OverflowError):
        raise TypeError(
            f"metric {key!r}: value must be a number, got {type(value).__name__}: {value!r}"
        ) from None


def _not_finite(key: str, value: float) -> ValueError:
    return ValueError(f"metric {key!r}: value must be a finite number, got {value!r}")


def _as_step(key: str, step: object) -> int:
    if isinstance(step, bool):
        raise TypeError(f"metric {key!r}: step must be an int, got {step!r}")
    try:
        number = operator.index(step)  # type: ignore[arg-type]  # int or numpy integer
    except TypeError:
        raise TypeError(
            f"metric {key!r}: step must be an int, got {type(step).__name__}: {step!r}"
        ) from None
    if number < 0:
        raise ValueError(f"metric {key!r}: step must be >= 0, got {number}")
    return number


def _param_value(key: str, value: object) -> ParamValue:
    if value is None or isinstance(value, bool | int | str):
        out: ParamValue = value
    elif isinstance(value, float):
        out = value if math.isfinite(value) else str(value)  # JSON has no NaN
    elif hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _param_value(key, value.item())
    elif isinstance(value, Mapping | list | tuple):
        out = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    else:
        out = str(value)
    if isinstance(out, str) and len(out) > 6000:
        raise ValueError(f"param {key!r}: value must be at most 6000 characters, got {len(out)}")
    return out


def _error_of(exc: BaseException | None) -> dict[str, str] | None:
    if exc is None:
        return None
    try:
        message = str(exc)
    except Exception:
        message = repr(exc)
    return {"type": type(exc).__name__[:200], "message": message[:10000]}


def dataset_ref(value: object, what: str = "dataset version") -> tuple[str, str]:
    """(dataset, version) of a :class:`DatasetVersion`, a pair, or ``"name@version"``."""
    if isinstance(value, DatasetVersion):
        return value.dataset, value.version
    if isinstance(value, str) and "@" in value:
        dataset, _, version = value.rpartition("@")
    elif isinstance(value, tuple) and len(value) == 2:
        dataset, version = value
    else:
        raise TypeError(
            f"{what} must be a DatasetVersion, a (dataset, version) pair or 'dataset@version', "
            f"got {value!r}"
        )
    return check_name(dataset, "dataset"), check_id(version, "dataset version")


def registration(
    name: str,
    artifact_uri: str,
    run_id: str | None,
    framework: str | None,
    signature: Mapping[str, Any] | None,
    digest: str | None,
    description: str | None,
) -> dict[str, Any]:
    """The checked payload of a ``model.version.registered`` event."""
    check_name(name, "model name")
    if not isinstance(artifact_uri, str) or not 1 <= len(artifact_uri) <= 2048:
        raise ValueError("artifact_uri must be a str of 1 to 2048 characters")
    payload: dict[str, Any] = {"artifact_uri": artifact_uri}
    if run_id is not None:
        payload["run"] = check_id(run_id, "run id")
    if digest is not None:
        payload["digest"] = check_digest(digest)
    if framework is not None:
        payload["framework"] = check_key(framework, "framework", 100)
    if signature is not None:
        if not isinstance(signature, Mapping):
            raise TypeError("signature must be a mapping (a JSON object)")
        payload["signature"] = dict(signature)
    if description is not None:
        if len(description) > 10000:
            raise ValueError("description must be at most 10000 characters")
        payload["description"] = description
    return payload


class Run:
    """A run, returned by :func:`studbook.start_run`; use it as a context manager.

    Leaving the ``with`` block finishes the run: ``completed``; ``failed`` (with the exception's
    type and message) if an exception escapes, which is then re-raised; ``killed`` on
    ``KeyboardInterrupt`` or a non-zero ``SystemExit``. Finishing hands the run's last events
    to the background thread without waiting for the network (see :meth:`finish`).
    """

    __slots__ = (
        "__weakref__",
        "_append",
        "_base",
        "_client",
        "_finished",
        "_keys",
        "_live",
        "_pid",
        "_points",
        "_take_lock",
        "experiment",
        "id",
        "name",
    )

    def __init__(self, client: RunClient, run_id: str, name: str, experiment: str | None) -> None:
        self.id = run_id
        self.name = name
        self.experiment = experiment
        self._client = client
        self._points: deque[Point] = deque()
        self._append = self._points.append
        self._take_lock = threading.Lock()
        self._keys: set[str] = set()
        self._live = True  # False once finished, and in a forked child until it logs again
        self._finished = False
        self._pid = os.getpid()
        self._base: dict[str, Any] = {
            "type": "run.metrics.logged",
            "schema_version": 1,
            "actor": client.config.actor,
            "project": client.config.project,
            "subject": self.subject,
            "producer": client.producer,
        }

    @property
    def subject(self) -> str:
        """The run's subject: ``run:<id>``."""
        return f"run:{self.id}"

    @property
    def project(self) -> str:
        """The project the run belongs to."""
        return self._client.config.project

    @property
    def finished(self) -> bool:
        """Whether the run has finished."""
        return self._finished

    def __repr__(self) -> str:
        return f"<Run {self.name!r} id={self.id} project={self.project!r}>"

    # ------------------------------------------------------------------ metrics (hot path)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Record one measurement; buffered, no I/O. ``value`` must be finite (else ValueError)."""
        if value.__class__ is not float:
            value = _as_float(key, value)
        if value - value != 0.0:  # NaN or ±inf: the cheapest test there is
            raise _not_finite(key, value)
        if key not in self._keys:
            self._new_key(key)
        if step is not None and (step.__class__ is not int or step < 0):
            step = _as_step(key, step)
        if not self._live:
            self._revive()
        self._append((key, value, step, _time_ns()))
        if len(self._points) >= MAX_METRICS_PER_EVENT:
            self._hand_over()
        if self._client.refusals:
            self._client.raise_refused()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record several measurements taken at the same step and time (all checked first)."""
        checked: list[tuple[str, float]] = []
        for key, value in metrics.items():
            if value.__class__ is not float:
                value = _as_float(key, value)
            if value - value != 0.0:
                raise _not_finite(key, value)
            if key not in self._keys:
                self._new_key(key)
            checked.append((key, value))
        if step is not None and (step.__class__ is not int or step < 0):
            step = _as_step(next(iter(metrics), "?"), step)
        if not self._live:
            self._revive()
        now = _time_ns()
        append = self._append
        for key, value in checked:
            append((key, value, step, now))
        if len(self._points) >= MAX_METRICS_PER_EVENT:
            self._hand_over()
        if self._client.refusals:
            self._client.raise_refused()

    def _new_key(self, key: object) -> None:
        self._keys.add(check_key(key, "metric key"))

    def _revive(self) -> None:
        if self._finished:
            raise StudbookError(f"run {self.name!r} ({self.id}) has finished; start a new run")
        # A forked child (e.g. a DataLoader worker) logging to its parent's run: its points go
        # through its own background thread.
        self._client.watch_run(self)
        self._live = True

    def _hand_over(self) -> None:
        for chunk in self.take_points():
            self._client.put(chunk)  # blocks while the queue is full: back-pressure

    def take_points(self) -> list[MetricsChunk]:
        """Remove the buffered points, in chunks of at most 1000 (used by both threads)."""
        with self._take_lock:
            points = self._points
            count = len(points)
            if not count:
                return []
            pop = points.popleft
            taken = [pop() for _ in range(count)]
        size = MAX_METRICS_PER_EVENT
        return [(self._base, taken[i : i + size]) for i in range(0, count, size)]

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's buffered points (the parent sends them)."""
        self._points.clear()
        self._take_lock = threading.Lock()
        self._live = False

    # ------------------------------------------------------------------ other events

    def _emit(self, event_type: str, payload: Mapping[str, Any]) -> str:
        if self._finished:
            raise StudbookError(f"run {self.name!r} ({self.id}) has finished; start a new run")
        event_id = self._client.emit(event_type, self.subject, payload)
        self._client.raise_refused()
        return event_id

    def use(
        self,
        dataset_version: DatasetVersion | tuple[str, str] | str | None = None,
        role: str = "train",
        *,
        uri: str | None = None,
    ) -> None:
        """Record that the run reads a dataset version (``run.input.used``).

        ``role`` is one of ``train``, ``validation``, ``test``, ``evaluation``, ``other``.
        With ``uri`` instead of a version, the run reads the data at that uri as it is
        (``dataset.read``): the dataset the uri names (:func:`studbook.dataset_name`) at the
        latest version the registry knows when it stores the event, e.g. the version the last
        pipeline run writing there reported through OpenLineage.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        if uri is not None:
            if dataset_version is not None:
                raise TypeError("use() takes a dataset version or a uri, not both")
            check_text(uri, "uri", max_length=2048, allow_empty=False)
            if self._finished:
                raise StudbookError(f"run {self.name!r} ({self.id}) has finished; start a new run")
            payload = {"run": self.id, "uri": uri, "role": role}
            self._client.emit("dataset.read", f"dataset:{dataset_name(uri)}", payload)
            self._client.raise_refused()
            return
        if dataset_version is None:
            raise TypeError("use() needs a dataset version or a uri")
        dataset, version = dataset_ref(dataset_version)
        self._emit("run.input.used", {"dataset": dataset, "version": version, "role": role})

    def log_params(self, params: Mapping[str, object]) -> None:
        """Record parameters (``run.params.logged``); logging a parameter again overwrites it.

        Values that are not str, int, float, bool or None are stored as text (JSON for lists
        and dicts); non-finite floats as ``"nan"``/``"inf"``.
        """
        items = [(check_key(k, "param name"), _param_value(k, v)) for k, v in params.items()]
        for batch in _batched(items, MAX_ITEMS_PER_MAP_EVENT):
            self._emit("run.params.logged", {"params": dict(batch)})

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Set tags (``run.tags.set``); a ``None`` value removes the tag."""
        items: list[tuple[str, str | None]] = []
        for key, value in tags.items():
            text = None if value is None else str(value)
            if text is not None and len(text) > 5000:
                raise ValueError(f"tag {key!r}: value must be at most 5000 characters")
            items.append((check_key(key, "tag name"), text))
        for batch in _batched(items, MAX_ITEMS_PER_MAP_EVENT):
            self._emit("run.tags.set", {"tags": dict(batch)})

    def log_output(
        self,
        uri: str | os.PathLike[str],
        digest: str | None = None,
        dataset_version: DatasetVersion | tuple[str, str] | str | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """Record an output of the run (``run.output.produced``).

        ``uri`` is where it was written; a local path (one that exists) is recorded as a
        ``file://`` uri and, without ``digest``, hashed like a dataset. With
        ``dataset_version`` the output is that version, which links it into the lineage.
        """
        where, computed, _size = locate(uri, hash_local=digest is None)
        payload: dict[str, Any] = {"uri": where}
        if digest is None and isinstance(dataset_version, DatasetVersion):
            digest = dataset_version.digest
        digest = digest or computed
        if digest is not None:
            payload["digest"] = check_digest(digest)
        if name is not None:
            payload["name"] = check_name(name, "output name")
        if dataset_version is not None:
            payload["dataset"], payload["version"] = dataset_ref(dataset_version)
        self._emit("run.output.produced", payload)

    def register_model(
        self,
        name: str,
        artifact_uri: str,
        framework: str | None = None,
        signature: Mapping[str, Any] | None = None,
        *,
        digest: str | None = None,
        description: str | None = None,
    ) -> ModelVersion:
        """Register a new version of model ``name`` trained by this run
        (``model.version.registered``) and return it with its number.

        Unlike other events, the registration is sent at once, after every event emitted
        before it, and the call waits for the gateway's answer: one round trip, which carries
        the version number the gateway allocated (``ModelVersion.version``; ``None`` with a
        ``kafka://`` url or when the gateway is unavailable and the event was spooled).
        Raises :class:`~studbook.EventRejected` if the gateway refuses it."""
        payload = registration(
            name, artifact_uri, self.id, framework, signature, digest, description
        )
        if self._finished:
            raise StudbookError(f"run {self.name!r} ({self.id}) has finished; start a new run")
        event_id, number = self._client.register(f"model:{name}", payload)
        return ModelVersion(name, artifact_uri, self.id, event_id, digest, number)

    # ------------------------------------------------------------------ the end

    def finish(self, status: Status = "completed", *, error: BaseException | None = None) -> None:
        """Finish the run (``run.finished``); no-op if already finished.

        The run's remaining metric points and its ``run.finished`` are handed to the background
        thread, which delivers them with the next batch: ``finish`` does not wait for the
        network. :func:`studbook.flush` (and the interpreter's exit) waits for their delivery.
        Raises :class:`~studbook.EventRejected` for a refusal the gateway has already answered;
        a later one is raised by the next SDK call that reports refusals (``flush``, the next
        ``log_metric``, ``start_run``...). In a forked process or a ``multiprocessing`` worker
        (whose end may skip ``atexit``), ``finish`` waits for delivery as ``flush`` does.
        """
        if status not in ("completed", "failed", "killed"):
            raise ValueError(f"status must be completed, failed or killed, got {status!r}")
        self._finish(status, error, raise_errors=True)

    def _finish(self, status: Status, error: BaseException | None, *, raise_errors: bool) -> None:
        if self._finished:
            return
        if os.getpid() != self._pid:
            # A forked child does not end its parent's run; it only delivers its own events.
            self._client.flush(raise_errors=raise_errors)
            return
        self._finished = True
        self._live = False
        for chunk in self.take_points():
            self._client.put(chunk)
        payload: dict[str, Any] = {"status": status}
        details = _error_of(error)
        if details is not None:
            payload["error"] = details
        self._client.emit("run.finished", self.subject, payload)
        self._client.unwatch_run(self)
        self._client.run_finished(raise_errors=raise_errors)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._finish("completed", None, raise_errors=True)
        elif isinstance(exc, KeyboardInterrupt):
            self._finish("killed", exc, raise_errors=False)
        elif isinstance(exc, SystemExit):
            ok = exc.code in (None, 0)
            self._finish("completed" if ok else "killed", None if ok else exc, raise_errors=False)
        elif isinstance(exc, GeneratorExit):
            self._finish("completed", None, raise_errors=False)
        else:
            self._finish("failed", exc, raise_errors=False)


def _batched(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

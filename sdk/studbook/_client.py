"""The client: configuration, the background dispatcher, open runs and reported refusals.

The module functions of :mod:`studbook` use one process-wide client (see :mod:`studbook._api`,
which also decides the client's transport).

Refusals are reported in the caller's thread, at its next SDK call: an
:class:`~studbook.EventRejected` (the gateway refused the data) is raised; a refused token is a
``UserWarning``, issued once per process, while the events wait in the spool for a valid token
(:meth:`Client.set_token`).

Every client is also known to two process-level hooks, installed with the first client:

* ``atexit``: open runs are finished (``failed``/``killed`` if the interpreter is exiting
  because of an uncaught exception / ``KeyboardInterrupt``, else ``completed``) and everything
  is flushed (delivered, or spooled for the next process);
* ``os.register_at_fork(after_in_child=...)``: a forked child (e.g. a DataLoader worker) drops
  its copy of the parent's queue, thread, spool files and buffered points, and starts its own,
  lazily, if it emits.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from studbook._config import Config
from studbook._dispatch import Dispatcher, MetricsChunk
from studbook._errors import EventRejected, TransportError
from studbook._events import envelope, producer
from studbook._transport import Transport

if TYPE_CHECKING:
    from studbook._run import Run, Status

log = logging.getLogger("studbook")

# Builds the transport for a configuration; called in the background thread.
TransportFactory = Callable[[Config], Transport]
# What waits to be reported in the caller's thread: raised (a refusal) or warned (a notice).
Report = EventRejected | Warning

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
# What a forked child inherited and must neither use nor finalise (no close on shared sockets).
_inherited: list[object] = []
# Whether this process has been warned that the gateway refused its token (once per process).
_token_warned = False
# Whether this process was forked from one that had a client: its exit may skip atexit.
_forked = False
_SDK_DIR = os.path.dirname(__file__) + os.sep


class Client:
    """Emits events for one project to one destination (gateway url or Kafka)."""

    def __init__(self, config: Config, *, transport_factory: TransportFactory) -> None:
        self.config = config
        self.producer = producer(config.host)
        self._transport_factory = transport_factory
        self._lock = threading.RLock()
        self.refusals: deque[Report] = deque()
        self.consistency_token: str | None = None
        self._runs: dict[str, Run] = {}
        # Registrations waiting for their version number: event id -> number (None: not yet).
        self._awaited: dict[str, int | None] = {}
        self._dispatcher: Dispatcher | None = None
        _install_hooks()
        _clients.add(self)
        self.dispatcher()  # start now: spool files of ended processes are re-sent first

    # ------------------------------------------------------------------ dispatcher

    def dispatcher(self) -> Dispatcher:
        """The running dispatcher, started on first use (and again after a fork or shutdown)."""
        d = self._dispatcher
        if d is not None:
            return d
        with self._lock:
            if self._dispatcher is None:
                d = Dispatcher(
                    self.config,
                    transport_factory=self._transport_factory,
                    drain_runs=self._drain_runs,
                    has_runs=self._has_runs,
                    on_refused=self.refusals.append,
                    on_token_refused=self._token_refused,
                    on_consistency_token=self._set_consistency_token,
                    on_model_versions=self._set_model_versions,
                )
                d.start()
                self._dispatcher = d
            return self._dispatcher

    def _set_consistency_token(self, token: str) -> None:
        self.consistency_token = token

    def _set_model_versions(self, versions: tuple[tuple[str, int], ...]) -> None:
        """The gateway numbered registrations (background thread): keep the awaited ones."""
        awaited = self._awaited
        for event_id, number in versions:
            if event_id in awaited:
                awaited[event_id] = number

    def set_token(self, token: str | None) -> None:
        """Send with ``token`` from now on (e.g. after the old one was rotated or revoked).

        The background thread reconnects with it and at once re-sends what the spool holds, in
        order, including what the gateway refused with the previous token. Open runs carry on.
        """
        with self._lock:
            self.config = dataclasses.replace(self.config, token=token)
            d = self._dispatcher
        if d is not None:
            d.reconfigure(self.config)

    def _token_refused(self, message: str) -> None:
        """The gateway refused our token (background thread): warn the caller, once per process."""
        global _token_warned
        with _hooks_lock:
            if _token_warned:
                return
            _token_warned = True
        self.refusals.append(UserWarning(message))

    def put(self, item: object) -> None:
        """Queue an encoded event or a metrics chunk; blocks while the queue is full."""
        d = self._dispatcher
        if d is None:
            d = self.dispatcher()
        d.put(item)

    def emit(
        self, event_type: str, subject: str, payload: Mapping[str, Any], *, schema_version: int = 1
    ) -> str:
        """Queue one event; return its event id."""
        event = envelope(
            event_type,
            subject,
            payload,
            project=self.config.project,
            actor=self.config.actor,
            producer=self.producer,
            schema_version=schema_version,
        )
        self.put(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY))
        return str(event["event_id"])

    def register(self, subject: str, payload: Mapping[str, Any]) -> tuple[str, int | None]:
        """Send a ``model.version.registered`` event now, after every event queued before it,
        and wait for the answer: return its event id and the version number the gateway
        allocated (None when it cannot be known now: Kafka, or the event went to the spool).

        Raises :class:`~studbook.EventRejected` for a refusal, this one's included.
        """
        event = envelope(
            "model.version.registered",
            subject,
            payload,
            project=self.config.project,
            actor=self.config.actor,
            producer=self.producer,
        )
        event_id = str(event["event_id"])
        self._awaited[event_id] = None
        try:
            for chunk in self._drain_runs():  # metric points logged so far go first, in order
                self.put(chunk)
            self.put(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY))
            self.flush()
        finally:
            number = self._awaited.pop(event_id, None)
        return event_id, number

    # ------------------------------------------------------------------ refusals

    def raise_refused(self) -> None:
        """Issue the warnings waiting to be reported, then raise the oldest refusal, if any."""
        while True:
            try:
                report = self.refusals.popleft()
            except IndexError:
                return
            if isinstance(report, EventRejected):
                raise report
            _warn_in_caller(report)

    # ------------------------------------------------------------------ runs

    def watch_run(self, run: Run) -> None:
        """Have the background thread collect the run's metric points."""
        self._runs[run.id] = run
        self.dispatcher()

    def unwatch_run(self, run: Run) -> None:
        self._runs.pop(run.id, None)

    def _has_runs(self) -> bool:
        return bool(self._runs)

    def _drain_runs(self) -> list[MetricsChunk]:
        return [chunk for run in list(self._runs.values()) for chunk in run.take_points()]

    def open_runs(self) -> list[Run]:
        """Runs started by this process and not finished."""
        pid = os.getpid()
        return [r for r in list(self._runs.values()) if r._pid == pid and not r.finished]

    # ------------------------------------------------------------------ flush and shutdown

    def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> None:
        """Wait until everything queued so far is acknowledged, refused or spooled."""
        d = self._dispatcher
        if d is not None and d.alive and not d.flush(timeout):
            raise TransportError(
                f"studbook.flush: not done within {timeout} s; the events stay queued and "
                "are still delivered (or spooled) in the background"
            )
        if raise_errors:
            self.raise_refused()

    def run_finished(self, *, raise_errors: bool) -> None:
        """A run's last events are queued. No network round trip: the background thread sends
        them with the next batch, and ``flush``/``atexit`` confirm delivery. A forked child
        (e.g. a ``multiprocessing`` worker, which ends with ``os._exit`` and skips ``atexit``)
        waits for delivery here, as every run's end did before."""
        if _exit_may_skip_atexit():
            self.flush(raise_errors=raise_errors)
        elif raise_errors:
            self.raise_refused()

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        status: Status = "completed",
        error: BaseException | None = None,
        raise_errors: bool = True,
    ) -> None:
        """Finish open runs, flush, re-try the spool once, stop the thread, release the spool."""
        for run in self.open_runs():
            run._finish(status, error, raise_errors=False)
        with self._lock:
            d, self._dispatcher = self._dispatcher, None
        if d is not None and not d.stop(timeout):
            log.warning("studbook: shutdown did not finish within %s s", timeout)
        if raise_errors:
            self.raise_refused()

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        d, self._dispatcher = self._dispatcher, None
        if d is not None:
            d.forget_after_fork()
            _inherited.append(d)  # never finalised: its transport's sockets are the parent's
        self.refusals.clear()
        self.consistency_token = None
        self._awaited = {}
        for run in list(self._runs.values()):
            run._after_fork()
        self._runs = {}


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _hooks_installed = True


def _mark_forked() -> None:
    global _forked
    _forked = True


# At import, not with the first client: a child forked before it configures the SDK counts too.
os.register_at_fork(after_in_child=_mark_forked)


def _exit_may_skip_atexit() -> bool:
    """Whether this process may end without running ``atexit``: a forked child (``os.fork``,
    ``multiprocessing``'s fork and forkserver workers end with ``os._exit``) or any
    ``multiprocessing`` child (a pool's workers are terminated by a signal)."""
    if _forked:
        return True
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.parent_process() is not None


def _after_fork_in_child() -> None:
    global _hooks_lock, _token_warned
    _hooks_lock = threading.Lock()
    _token_warned = False  # a new process: it warns on its own
    for client in list(_clients):
        client._after_fork_in_child()


def _exit_status() -> tuple[Status, BaseException | None]:
    """How the interpreter is ending: an uncaught exception leaves ``sys.last_value``."""
    exc = getattr(sys, "last_value", None)
    if isinstance(exc, KeyboardInterrupt):
        return "killed", exc
    if isinstance(exc, BaseException) and not isinstance(exc, SystemExit):
        return "failed", exc
    return "completed", None


def _at_exit() -> None:
    status, error = _exit_status()
    for client in list(_clients):
        try:
            client.shutdown(timeout=60, status=status, error=error, raise_errors=False)
        except Exception:
            log.exception("studbook: error while flushing at exit")
        while client.refusals:
            report = client.refusals.popleft()
            what = "events were refused" if isinstance(report, EventRejected) else "warning"
            with contextlib.suppress(Exception):
                print(f"studbook: {what}: {report}", file=sys.stderr)


def _warn_in_caller(warning: Warning) -> None:
    """``warnings.warn`` attributed to the first frame outside the SDK: the user's call."""
    level = 2
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_SDK_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(warning, stacklevel=level)

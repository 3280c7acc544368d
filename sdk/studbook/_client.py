"""The client: configuration, the background dispatcher, open runs and reported refusals.

The module functions of :mod:`studbook` use one process-wide client (see :mod:`studbook._api`,
which also decides the client's transport).
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
import logging
import os
import sys
import threading
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

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
# What a forked child inherited and must neither use nor finalise (no close on shared sockets).
_inherited: list[object] = []


class Client:
    """Emits events for one project to one destination (gateway url or Kafka)."""

    def __init__(self, config: Config, *, transport_factory: TransportFactory) -> None:
        self.config = config
        self.producer = producer(config.host)
        self._transport_factory = transport_factory
        self._lock = threading.RLock()
        self.refusals: deque[EventRejected] = deque()
        self.consistency_token: str | None = None
        self._runs: dict[str, Run] = {}
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
                    on_token=self._set_token,
                )
                d.start()
                self._dispatcher = d
            return self._dispatcher

    def _set_token(self, token: str) -> None:
        self.consistency_token = token

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

    # ------------------------------------------------------------------ refusals

    def raise_refused(self) -> None:
        """Raise the oldest refusal not yet reported, if any."""
        try:
            exc = self.refusals.popleft()
        except IndexError:
            return
        raise exc

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


def _after_fork_in_child() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()
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
            refused = client.refusals.popleft()
            with contextlib.suppress(Exception):
                print(f"studbook: events were refused: {refused}", file=sys.stderr)

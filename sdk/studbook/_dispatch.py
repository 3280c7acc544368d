"""The background thread: batches events, sends them, spools them when the transport is down.

Callers hand items to a bounded queue (a full queue blocks them: back-pressure, never loss).
ONE daemon thread owns everything after that: the transport, the spool and the batch.

* A batch is sent when it holds ``batch_events`` events or ``batch_bytes`` bytes, when its first
  event is ``linger_s`` old, at a flush marker and at stop. Every ``linger_s`` the thread also
  collects the metric points buffered by the active runs (see :mod:`studbook._run`).
* Sent and acknowledged: done. Refused (HTTP 4xx about the data): reported to the caller's
  thread as :class:`~studbook.EventRejected`, not spooled; when the answer names the refused
  events (422, or a 403 for events the token may not record), the others of the batch are sent
  again on their own so that one bad event does not sink them.
* Unavailable (connection error, HTTP 5xx, 404, 408, 429): the batch is appended to the
  spool, and so is every later batch, to keep their order, until a retry (back-off from
  ``retry_initial_s`` doubling to ``retry_max_s``) re-sends the whole spool, oldest first.
* Unauthorized (HTTP 401/403: the token was refused, e.g. revoked during a long run): spooled
  and retried like Unavailable, and the caller is told (a log record each time it starts, a
  warning in the caller's thread once per process). A new token (:meth:`Dispatcher.reconfigure`)
  re-sends the spool at once. Spool files of ended processes refused for our token are left
  for another process, and adopted again when the token changes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from studbook._config import Config
from studbook._errors import EventRejected, TransportError
from studbook._events import uuid7
from studbook._spool import Spool
from studbook._transport import Outcome, Refused, Sent, Transport, Unauthorized, Unavailable

log = logging.getLogger("studbook")

# A metric point as buffered by a run: (key, value, step or None, unix time in ns).
Point = tuple[str, float, int | None, int]
# Envelope fields shared by a run's metric events, and points to put in one event.
MetricsChunk = tuple[dict[str, Any], list[Point]]


class _Marker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Flush(_Marker):
    __slots__ = ()


class _Stop(_Marker):
    __slots__ = ()


class _Reconfigure:
    __slots__ = ("config",)

    def __init__(self, config: Config) -> None:
        self.config = config


def encode_metrics(chunk: MetricsChunk) -> bytes:
    """Build and encode one ``run.metrics.logged`` event from buffered points."""
    base, points = chunk
    metrics: list[dict[str, Any]] = []
    append = metrics.append
    last_ns = last_second = -1
    prefix = stamp = ""
    for key, value, step, ns in points:
        if ns != last_ns:  # points logged together (log_metrics) share their timestamp
            last_ns = ns
            us = ns // 1000
            second = us // 1_000_000
            if second != last_second:
                last_second = second
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            stamp = "%s%06dZ" % (prefix, us - second * 1_000_000)  # noqa: UP031 (faster)
        if step is None:
            append({"key": key, "value": value, "timestamp": stamp})
        else:
            append({"key": key, "value": value, "step": step, "timestamp": stamp})
    event = {
        "event_id": uuid7(),
        **base,
        "occurred_at": stamp,
        "payload": {"metrics": metrics},
    }
    return orjson.dumps(event)


def rejection(events: Sequence[bytes], refused: Refused) -> EventRejected:
    """The exception that tells the caller which events were refused and why."""
    ids: list[str] = []
    types: list[str] = []
    for data in events:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = {}
        ids.append(str(doc.get("event_id", "?")))
        types.append(str(doc.get("type", "?")))
    n = len(events)
    shown = []
    for error in refused.errors[:10]:
        index = error.get("index")
        what = (
            f" ({types[index]} {ids[index]})" if isinstance(index, int) and 0 <= index < n else ""
        )
        shown.append(f"index {index}{what}: {error.get('path', '')}: {error.get('message', '')}")
    if len(refused.errors) > 10:
        shown.append(f"and {len(refused.errors) - 10} more")
    detail = "; ".join(shown) if shown else refused.message
    message = f"the gateway rejected a batch of {n} event(s) (HTTP {refused.status}): {detail}"
    return EventRejected(
        message, status=refused.status, errors=refused.errors, event_ids=ids, event_types=types
    )


class Dispatcher:
    """The queue, the background thread and everything it owns."""

    def __init__(
        self,
        config: Config,
        *,
        transport_factory: Callable[[Config], Transport],
        drain_runs: Callable[[], list[MetricsChunk]],
        has_runs: Callable[[], bool],
        on_refused: Callable[[EventRejected], None],
        on_token_refused: Callable[[str], None],
        on_consistency_token: Callable[[str], None],
        on_model_versions: Callable[[tuple[tuple[str, int], ...]], None] = lambda _versions: None,
    ) -> None:
        self._cfg = config
        self._transport_factory = transport_factory
        self._drain_runs_cb = drain_runs
        self._has_runs = has_runs
        self._on_refused = on_refused
        self._on_token_refused = on_token_refused
        self._on_consistency_token = on_consistency_token
        self._on_model_versions = on_model_versions
        self.queue: queue.Queue[object] = queue.Queue(config.queue_size)
        self.spool = Spool(config.spool_dir, config.url)
        self.transport: Transport | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_started = 0.0
        self._next_drain = 0.0
        self._next_retry: float | None = None
        self._backoff = config.retry_initial_s
        self._last_reason = ""
        # The outcome of the last send, if the gateway refused the token for it.
        self._unauthorized: Unauthorized | None = None
        # Whether our own events wait for a token the gateway accepts (reported once till then).
        self._token_blocked = False
        self._last_failure = float("-inf")
        self.stats = {"sent": 0, "spooled": 0, "resent": 0, "refused": 0}
        self._thread = threading.Thread(target=self._main, name="studbook-dispatcher", daemon=True)

    # ------------------------------------------------------------------ caller side

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, item: object) -> None:
        """Hand an item over; blocks while the queue is full (back-pressure)."""
        self.queue.put(item)

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything put so far is acknowledged, refused or spooled."""
        return self._wait_for(_Flush(), timeout)

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` (e.g. a new token) for what is sent from now on, spool included."""
        self.queue.put(_Reconfigure(config))

    def stop(self, timeout: float | None) -> bool:
        """Flush, try the spool once more, close the transport and end the thread."""
        if not self.alive:
            return True
        done = self._wait_for(_Stop(), timeout)
        if done:
            self._thread.join(timeout)
        return done

    def _wait_for(self, marker: _Marker, timeout: float | None) -> bool:
        if threading.current_thread() is self._thread:
            raise TransportError("studbook: flush called from the SDK's own thread")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        while not marker.done.wait(0.05):
            if not self.alive:
                raise TransportError("studbook: the background thread has stopped")
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's spool files (the thread is not there)."""
        self.spool.forget_after_fork()

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        try:
            adopted = self.spool.adopt_orphans()
            if adopted:
                log.info("studbook: re-sending %d spool file(s) of ended processes", len(adopted))
                self._next_retry = time.monotonic()
        except Exception:
            log.exception("studbook: could not look for spool files of ended processes")
        while True:
            try:
                if self._step():
                    return
            except Exception:  # a bug must not stop delivery: log it and carry on
                log.exception("studbook: unexpected error in the background thread")
                time.sleep(0.05)

    def _step(self) -> bool:
        timeout = self._timeout()
        try:
            item = self.queue.get(timeout=timeout) if timeout != 0 else self.queue.get_nowait()
        except queue.Empty:
            item = None
        if item is not None:
            if self._handle(item):
                return True
            for _ in range(2 * self._cfg.batch_events):  # take what is there without waiting
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if self._handle(item):
                    return True
        self._tick()
        return False

    def _timeout(self) -> float | None:
        deadlines = []
        if self._batch:
            deadlines.append(self._batch_started + self._cfg.linger_s)
        if self._has_runs():
            deadlines.append(self._next_drain)
        if self._next_retry is not None and self.spool.pending:
            deadlines.append(self._next_retry)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_drain and self._has_runs():
            self._next_drain = now + self._cfg.linger_s
            self._drain_runs()
            self._ship()
        if self._batch and now >= self._batch_started + self._cfg.linger_s:
            self._ship()
        if self._next_retry is not None and self.spool.pending and now >= self._next_retry:
            self._replay(max_chunks=20)

    def _handle(self, item: object) -> bool:
        if type(item) is bytes:
            self._add(item)
        elif type(item) is tuple:
            self._add(encode_metrics(item))
        elif isinstance(item, _Reconfigure):
            self._reconfigured(item.config)
        elif isinstance(item, _Flush):
            try:
                self._drain_runs()
                self._ship()
            finally:
                item.done.set()
        elif isinstance(item, _Stop):
            try:
                stopping = time.monotonic()
                self._drain_runs()
                self._ship()
                # One last try to empty the spool before the process ends, unless the
                # destination failed just now (the spool then waits for the next process).
                if self.spool.pending and self._last_failure < stopping:
                    self._replay(max_chunks=None)
            finally:
                self._close()
                item.done.set()
            return True
        return False

    def _reconfigured(self, config: Config) -> None:
        self._cfg = config
        self._close_transport()  # the next send builds one with the new settings
        self._backoff = config.retry_initial_s
        self._token_blocked = False  # if the new token is refused too, that is said again
        try:
            # Spool files of ended processes set aside because the old token was refused.
            self.spool.adopt_orphans()
        except Exception:
            log.exception("studbook: could not look for spool files of ended processes")
        if self.spool.pending:
            self._next_retry = time.monotonic()  # re-send the spool now, with the new token

    def _close_transport(self) -> None:
        transport, self.transport = self.transport, None
        try:
            if transport is not None:
                transport.close()
        except Exception:
            log.exception("studbook: error while closing the transport")

    def _close(self) -> None:
        self._close_transport()
        if self.spool.pending:
            log.warning(
                "studbook: events not yet delivered stay in the spool (%s); the next "
                "studbook.init for %s%s re-sends them",
                ", ".join(str(p) for p in self.spool.paths) or "memory",
                self._cfg.url,
                " with a token the gateway accepts" if self._token_blocked else "",
            )
        self.spool.close()

    # ------------------------------------------------------------------ batching

    def _drain_runs(self) -> None:
        for chunk in self._drain_runs_cb():
            self._add(encode_metrics(chunk))

    def _add(self, data: bytes) -> None:
        if self._batch and self._batch_bytes + len(data) > self._cfg.batch_bytes:
            self._ship()
        if not self._batch:
            self._batch_started = time.monotonic()
        self._batch.append(data)
        self._batch_bytes += len(data)
        if len(self._batch) >= self._cfg.batch_events or self._batch_bytes >= self._cfg.batch_bytes:
            self._ship()

    def _ship(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        if self.spool.pending:  # older events wait in the spool: keep the order
            self._spool(batch)
            return
        rest = self._send(batch, replay=False)
        if rest:
            self._spool(rest)
            self._undelivered()

    def _spool(self, events: Sequence[bytes]) -> None:
        self.spool.append(events)
        self.stats["spooled"] += len(events)

    # ------------------------------------------------------------------ sending

    def _transport(self) -> Transport:
        if self.transport is None:
            self.transport = self._transport_factory(self._cfg)
        return self.transport

    def _send(self, events: Sequence[bytes], *, replay: bool) -> list[bytes]:
        """Deliver ``events``; return those still to deliver later (in order, [] if none).

        ``self._unauthorized`` then tells whether they are left because the token was refused.
        """
        self._unauthorized = None
        try:
            outcome: Outcome = self._transport().send(events)
        except Exception as exc:  # a transport must not raise; if it does, retry later
            log.debug("studbook: transport error", exc_info=True)
            outcome = Unavailable(repr(exc))
        if isinstance(outcome, Sent):
            if outcome.consistency_token is not None:
                self._on_consistency_token(outcome.consistency_token)
            if outcome.model_versions:
                self._on_model_versions(outcome.model_versions)
            if self._token_blocked:
                self._token_blocked = False
                log.info("studbook: the gateway accepts the token; sending the spooled events")
            self.stats["resent" if replay else "sent"] += len(events)
            return []
        if isinstance(outcome, Unavailable):
            self._last_reason = outcome.reason
            return list(events)
        if isinstance(outcome, Unauthorized):
            # The events are fine, the token is not: keep them (in order) for a valid token.
            self._unauthorized = outcome
            self._last_reason = (
                f"the gateway refused the token: HTTP {outcome.status}: {outcome.message}"
            )
            return list(events)
        if outcome.status in (404, 405):  # no gateway there (yet): a setup problem, not bad data
            self._last_reason = (
                f"{self._cfg.url} has no ingest endpoint (HTTP {outcome.status}): "
                "check STUDBOOK_URL"
            )
            return list(events)
        if outcome.status == 413 and len(events) > 1:
            half = len(events) // 2
            rest = self._send(events[:half], replay=replay)
            if rest:
                return rest + list(events[half:])
            return self._send(events[half:], replay=replay)
        self.stats["refused"] += len(events)
        self._on_refused(rejection(events, outcome))
        bad = {e.get("index") for e in outcome.errors}
        good = [e for i, e in enumerate(events) if i not in bad]
        if good and len(good) < len(events):  # the refusal names its events (422, 403)
            self.stats["refused"] -= len(good)
            return self._send(good, replay=replay)
        return []

    def _undelivered(self) -> None:
        """Some events went to the spool: say why (once) if it is the token, retry later."""
        refused = self._unauthorized
        if refused is not None and not self._token_blocked:
            self._token_blocked = True
            where = ", ".join(str(p) for p in self.spool.paths) or "memory"
            message = (
                f"studbook: the gateway refused the token (HTTP {refused.status}: "
                f"{refused.message}). Events are kept, in order, in the spool ({where}) and "
                "sent once a valid token is configured: call studbook.init(...) again with the "
                "same settings and the new token, or start a process with a valid token"
            )
            log.warning("%s", message)
            self._on_token_refused(message)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._last_failure = time.monotonic()
        if self._next_retry is None and not self._token_blocked:
            where = ", ".join(str(p) for p in self.spool.paths) or "memory"
            log.warning(
                "studbook: cannot deliver events (%s); spooling them to %s and retrying",
                self._last_reason,
                where,
            )
        self._next_retry = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._cfg.retry_max_s)

    def _replay(self, max_chunks: int | None) -> None:
        sent = 0
        count = 0
        while max_chunks is None or count < max_chunks:
            count += 1
            chunk = self.spool.next_chunk(self._cfg.batch_events, self._cfg.batch_bytes)
            if not chunk:
                break
            rest = self._send(chunk, replay=True)
            if rest and self._unauthorized is not None and self.spool.reading_orphan:
                # Another process's events that our token may not write: leave them to a
                # process that may, rather than let them block ours.
                log.warning(
                    "studbook: leaving %s to another process: the gateway refused our token "
                    "for its events",
                    self.spool.set_aside(),
                )
                continue
            if not rest:
                self.spool.advance(len(chunk))
                sent += len(chunk)
                continue
            tail = chunk[len(chunk) - len(rest) :]
            if len(rest) < len(chunk) and all(a is b for a, b in zip(rest, tail, strict=True)):
                self.spool.advance(len(chunk) - len(rest))
            self._undelivered()
            return
        if self.spool.pending:
            self._next_retry = time.monotonic()  # more to do after serving the queue
            return
        self._next_retry = None
        self._backoff = self._cfg.retry_initial_s
        if sent:
            log.info("studbook: delivered the spooled events; spool emptied")

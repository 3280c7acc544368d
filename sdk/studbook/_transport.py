"""Transports: how a batch of encoded events leaves the process.

A transport is used by the background thread only. ``send`` takes encoded envelopes (JSON
bytes, in order) and returns an :data:`Outcome`; it never raises for network trouble:

* :class:`Sent`: every event was acknowledged (the gateway is idempotent by ``event_id``, so
  re-sent events are acknowledged too);
* :class:`Refused`: the events were refused for good (HTTP 4xx about the data): retrying
  cannot help. A 403 that lists the events it refuses (``errors``, as a 422 does) is one: the
  token may not record those events (say, an approval), though it may record others;
* :class:`Unauthorized`: the gateway refused the credentials (HTTP 401, or 403 without a list
  of events), not the events: they must be kept until a valid token is configured;
* :class:`Unavailable`: try again later (connection refused, timeout, HTTP 5xx, 408, 429).

Which transport a client uses is decided where the client is built (:mod:`studbook._api`),
so that this module never imports the Kafka transport (and aiokafka).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from studbook._version import __version__

if TYPE_CHECKING:
    import urllib3


@dataclass(frozen=True, slots=True)
class Sent:
    """All events were acknowledged; ``consistency_token`` is the gateway's, if it gave one;
    ``model_versions`` the (event id, version number) the gateway allocated to each
    ``model.version.registered`` event of the batch (none with Kafka)."""

    consistency_token: str | None = None
    model_versions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """The events were refused (HTTP ``status``); ``errors`` is the gateway's violation list."""

    status: int
    message: str
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """The gateway refused the token (HTTP 401: missing, unknown or revoked; 403: it may not
    write here, e.g. no ``write`` scope), not the events: keep them for a valid token."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The transport could not deliver now; the events should be spooled and retried."""

    reason: str


Outcome = Sent | Refused | Unauthorized | Unavailable


class Transport(Protocol):
    """What the background thread needs from a transport."""

    def send(self, events: Sequence[bytes]) -> Outcome: ...

    def close(self) -> None: ...


def body_of(events: Sequence[bytes]) -> bytes:
    """The JSON array of already-encoded envelopes."""
    return b"[" + b",".join(events) + b"]"


# --------------------------------------------------------------------------- HTTP


class HttpTransport:
    """POST ``{url}/v1/events`` with urllib3; no urllib3 retries (the SDK spools and retries)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        import urllib3  # lazily: `import studbook` stays cheap

        self._urllib3 = urllib3
        self._endpoint = url.rstrip("/") + "/v1/events"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"studbook-sdk/{__version__}",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool: urllib3.PoolManager = urllib3.PoolManager(
            num_pools=2,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        )

    def send(self, events: Sequence[bytes]) -> Outcome:
        body = body_of(events)
        failures = self._urllib3.exceptions
        for attempt in (1, 2):
            try:
                response = self._pool.request(
                    "POST",
                    self._endpoint,
                    body=body,
                    headers=self._headers,
                    retries=False,
                    redirect=False,
                )
                break
            except failures.ProtocolError as exc:
                # Typically a kept-alive connection the server had closed: once more, on a
                # fresh connection (the gateway is idempotent by event_id).
                if attempt == 2:
                    return Unavailable(f"{self._endpoint}: {exc}")
            except failures.HTTPError as exc:
                return Unavailable(f"{self._endpoint}: {exc}")
        status = response.status
        data = _json_or_none(response.data)
        if 200 <= status < 300:
            token = data.get("consistency_token") if isinstance(data, dict) else None
            return Sent(token if isinstance(token, str) else None, _model_versions(data))
        if status in (408, 429) or status >= 500:
            return Unavailable(f"{self._endpoint} answered HTTP {status}: {_error_text(data)}")
        if 300 <= status < 400:
            return Unavailable(
                f"{self._endpoint} answered a redirect (HTTP {status}): check STUDBOOK_URL"
            )
        listed = data.get("errors") if isinstance(data, dict) else None
        errors = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        if status == 401 or (status == 403 and not errors):
            return Unauthorized(status, _error_text(data))
        return Refused(status, _error_text(data), errors)

    def close(self) -> None:
        self._pool.clear()


def _model_versions(data: object) -> tuple[tuple[str, int], ...]:
    """``[{"event_id": ..., "model": ..., "version": 3}]`` of a 202, as (event id, version)."""
    listed = data.get("model_versions") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        return ()
    return tuple(
        (item["event_id"], item["version"])
        for item in listed
        if isinstance(item, dict)
        and isinstance(item.get("event_id"), str)
        and type(item.get("version")) is int
    )


def _json_or_none(raw: bytes) -> object:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace")


def _error_text(data: object) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, str):
            return error
        if isinstance(data.get("errors"), list):
            return f"{len(data['errors'])} violation(s)"
    if isinstance(data, str):
        return data
    return "no details"


# --------------------------------------------------------------------------- in-process


class MemoryTransport:
    """Keeps what it is sent (decoded) in memory; a test seam, also used by the benchmark.

    ``respond`` (optional) decides the outcome of each ``send`` from the decoded events; the
    default acknowledges everything. ``batches`` holds every batch that was acknowledged.
    """

    def __init__(self, respond: Callable[[list[dict[str, Any]]], Outcome] | None = None) -> None:
        self._respond = respond
        self._lock = threading.Lock()
        self.batches: list[list[dict[str, Any]]] = []
        self.attempts = 0
        self.closed = False

    def send(self, events: Sequence[bytes]) -> Outcome:
        decoded = [orjson.loads(e) for e in events]
        outcome = self._respond(decoded) if self._respond is not None else Sent("memory")
        with self._lock:
            self.attempts += 1
            if isinstance(outcome, Sent):
                self.batches.append(decoded)
        return outcome

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for batch in self.batches for e in batch]

    def close(self) -> None:
        self.closed = True


class NullTransport:
    """Acknowledges everything and keeps nothing: measures the SDK's own cost."""

    def __init__(self) -> None:
        self.events_sent = 0

    def send(self, events: Sequence[bytes]) -> Outcome:
        self.events_sent += len(events)
        return Sent(None)

    def close(self) -> None:
        pass

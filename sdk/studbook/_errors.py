"""The SDK's exceptions: one tree rooted at :class:`StudbookError`.

::

    StudbookError            anything the SDK raises about Studbook itself
    ├── ConfigError          bad or missing configuration (url, project, token, missing extra)
    ├── EventRejected        the gateway refused events (HTTP 4xx about the data, e.g. 422);
    │                        carries the gateway's ``errors`` list. The events were not spooled.
    └── TransportError       events could not be handed over in time (e.g. ``flush`` timed out)

Programming errors in arguments (a NaN metric, a malformed name) raise the built-in
:class:`ValueError` / :class:`TypeError` in the caller's thread, immediately.

A refused token (HTTP 401/403) raises nothing: the events wait in the spool for a valid token,
and a ``UserWarning`` says so, once per process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConfigError", "EventRejected", "StudbookError", "TransportError"]


class StudbookError(Exception):
    """Base class of every exception the Studbook SDK raises about Studbook itself."""


class ConfigError(StudbookError):
    """The SDK is not configured, or configured wrongly (url, project, token, missing extra)."""


class TransportError(StudbookError):
    """Events could not be handed over to the transport (or the spool) in time."""


class EventRejected(StudbookError):
    """The gateway refused a batch of events (HTTP 4xx about the data: 422, 413 for one event,
    403 naming events the token may not record); they were not spooled and not stored.

    Raised in the caller's thread at the next SDK call, at :func:`studbook.flush` or when a run
    ends. ``status`` is the HTTP status, ``errors`` the gateway's list of violations
    (``{"index": i, "path": "/payload/...", "message": "..."}``, ``index`` counting from 0 within
    ``event_ids``), ``event_ids`` and ``event_types`` describe the refused batch in order.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        errors: Sequence[Mapping[str, Any]] = (),
        event_ids: Sequence[str] = (),
        event_types: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        self.event_ids: list[str] = list(event_ids)
        self.event_types: list[str] = list(event_types)

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (e.g. across multiprocessing), although __init__ takes keywords.
        return (
            _rebuild_rejected,
            (str(self), self.status, self.errors, self.event_ids, self.event_types),
        )


def _rebuild_rejected(
    message: str,
    status: int,
    errors: list[dict[str, Any]],
    event_ids: list[str],
    event_types: list[str],
) -> EventRejected:
    return EventRejected(
        message, status=status, errors=errors, event_ids=event_ids, event_types=event_types
    )

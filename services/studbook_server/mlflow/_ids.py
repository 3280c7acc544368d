"""Ids and event envelopes for the MLflow adapter.

Experiment ids are allocated without a counter: the id of a new experiment is derived from
(project, name, n) with the smallest n not taken, and its `experiment.created` event id from the
experiment id, so a retried create cannot make two experiments (the second is the same event,
or is refused because the name exists). Run ids are MLflow's 32-hex uuids.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

# Namespace of every event id this adapter derives (uuid5): experiments, and the importer.
NAMESPACE = uuid.UUID("5b0c6f0e-9d43-4f5e-9a57-2f3c0e6b1d11")
DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EXPERIMENT_ID = RUN_ID


def experiment_id(project: str, name: str, attempt: int) -> str:
    """A decimal id (MLflow's look) derived from the project, the name and ``attempt``."""
    digest = hashlib.sha256(f"{project}\x00{name}\x00{attempt}".encode()).digest()
    return str(int.from_bytes(digest[:6], "big") + 1_000_000)


def derived_event_id(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x00".join(parts)))


def new_event_id() -> str:
    return str(uuid.uuid4())


def new_run_id() -> str:
    return uuid.uuid4().hex


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_ms(ms: int | None) -> datetime:
    """A client's epoch-milliseconds time; now when none. The contract bounds it."""
    if ms is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


def event(
    type_: str,
    project: str,
    subject: str,
    payload: dict[str, Any],
    *,
    actor: str,
    at: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A Studbook event envelope (wire form) for the write path."""
    return {
        "event_id": event_id or new_event_id(),
        "type": type_,
        "schema_version": 1 if type_ != "run.started" else 3,
        "occurred_at": rfc3339(at or datetime.now(UTC)),
        "actor": actor[:200] or "mlflow",
        "project": project,
        "subject": subject,
        "payload": payload,
        "producer": {"name": "studbook-mlflow"},
    }

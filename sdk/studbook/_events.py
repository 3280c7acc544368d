"""Building event envelopes: ids, timestamps, names and the checks made in the caller's thread.

The gateway validates every event against the contract in ``schema/events``; the checks here are
the cheap ones worth failing on immediately, where the mistake is made, with a clear message.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any, Final

from studbook._version import __version__

PRODUCER_NAME: Final = "studbook-sdk"
MAX_METRICS_PER_EVENT: Final = 1000
MAX_ITEMS_PER_MAP_EVENT: Final = 1000  # params and tags per event (schema: maxProperties 1000)

# The contract's patterns (schema/events/*.json).
_PROJECT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")  # aliases and environments
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SUBJECT = re.compile(r"(project|dataset|run|model):\S.*", re.DOTALL)
ROLES: Final = frozenset({"train", "validation", "test", "evaluation", "other"})


def uuid7() -> str:
    """Return a new UUIDv7 in lowercase: 48-bit Unix time in ms, version 7, variant 10, random."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# (second, its formatted prefix): one tuple, so that threads never see a torn pair.
_second_cache: tuple[int, str] = (-1, "")


def rfc3339(ns: int) -> str:
    """Format Unix time in ns as RFC 3339 UTC with microseconds: ``2026-03-01T12:00:00.123456Z``."""
    global _second_cache
    sec, rest = divmod(ns, 1_000_000_000)
    cached_sec, prefix = _second_cache
    if sec != cached_sec:  # consecutive metric points share their second: format it once
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second_cache = (sec, prefix)
    return f"{prefix}.{rest // 1000:06d}Z"


# Set by `studbook.backdate`: how far event times are shifted from the wall clock.
_offset_ns = 0


def event_time_ns() -> int:
    """Unix time in ns for event timestamps: the wall clock, shifted inside `backdate`."""
    return time.time_ns() + _offset_ns


def now() -> str:
    """The current event time as RFC 3339 UTC with microseconds."""
    return rfc3339(time.time_ns() + _offset_ns)


def envelope(
    event_type: str,
    subject: str,
    payload: Mapping[str, Any],
    *,
    project: str,
    actor: str,
    producer: Mapping[str, str],
    schema_version: int = 1,
    occurred_at: str | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """Return a wire envelope with a fresh event id."""
    out: dict[str, Any] = {
        "event_id": uuid7(),
        "type": event_type,
        "schema_version": schema_version,
        "occurred_at": occurred_at or now(),
        "actor": actor,
        "project": project,
        "subject": subject,
    }
    if correlation_id is not None:
        out["correlation_id"] = correlation_id
    out["producer"] = producer
    out["payload"] = payload
    return out


def producer(host: str) -> dict[str, str]:
    """The ``producer`` envelope field of this SDK."""
    return {"name": PRODUCER_NAME, "version": __version__, "host": host[:255]}


# --------------------------------------------------------------------------- caller-side checks


def _check(pattern: re.Pattern[str], value: object, what: str, hint: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} is invalid: it must be {hint}")
    return value


def check_project(value: object) -> str:
    return _check(
        _PROJECT,
        value,
        "project",
        "1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def check_name(value: object, what: str) -> str:
    return _check(
        _NAME,
        value,
        what,
        "1 to 200 letters, digits, '.', '_', '/' or '-', starting with a letter or digit",
    )


def check_id(value: object, what: str) -> str:
    return _check(
        _ID,
        value,
        what,
        "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def check_label(value: object, what: str) -> str:
    return _check(
        _LABEL, value, what, "1 to 63 lowercase letters, digits, '_' or '-', starting with a letter"
    )


def check_digest(value: object, what: str = "digest") -> str:
    return _check(_DIGEST, value, what, "'sha256:' followed by 64 lowercase hex digits")


def check_subject(value: object) -> str:
    return _check(
        _SUBJECT, value, "subject", "'<kind>:<id>' where kind is project, dataset, run or model"
    )


def check_version_number(value: object, what: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (the model version number), got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def check_text(value: object, what: str, *, max_length: int, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{what} must be at most {max_length} characters, got {len(value)}")
    return value


def check_key(value: object, what: str, max_length: int = 250) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if not 1 <= len(value) <= max_length:
        raise ValueError(f"{what} must be 1 to {max_length} characters, got {value!r}")
    return value

"""Configuration: arguments of :func:`studbook.init`, with ``STUDBOOK_*`` environment fallbacks."""

from __future__ import annotations

import getpass
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from studbook._errors import ConfigError
from studbook._events import check_project

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOPIC = "studbook.events"


def cache_root() -> Path:
    """``STUDBOOK_CACHE_DIR``, or ``~/.cache/studbook``."""
    explicit = os.environ.get("STUDBOOK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".cache" / "studbook"


def default_actor() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry (containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"[:200]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a client needs; the tuning fields have defaults fit for training scripts."""

    url: str
    project: str
    token: str | None = None
    actor: str = "unknown"
    topic: str = DEFAULT_TOPIC
    spool_dir: Path = Path(".studbook-spool")
    host: str = "localhost"
    # Batching: a batch is sent when it holds this many events or bytes, or is this old.
    batch_events: int = 500
    batch_bytes: int = 1 << 20
    linger_s: float = 0.2
    # Bounded hand-over queue between callers and the background thread (back-pressure when full).
    # An item is one event or a chunk of up to 1000 metric points, so 64 items bound what waits
    # in memory to about 64k points (a few MB) while keeping the sender busy (bench/README.md).
    queue_size: int = 64
    # Retry of an unavailable transport: back-off doubling from the first to the last value.
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None = None,
        project: str | None = None,
        token: str | None = None,
        actor: str | None = None,
        topic: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> Config:
        """Combine explicit arguments with the environment; raise :class:`ConfigError` if unusable."""
        env = os.environ
        url = url or env.get("STUDBOOK_URL") or DEFAULT_URL
        project = project or env.get("STUDBOOK_PROJECT")
        if not project:
            raise ConfigError("no project: call studbook.init(project=...) or set STUDBOOK_PROJECT")
        try:
            check_project(project)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            if not parts.netloc:
                raise ConfigError(f"url {url!r} has no host, e.g. http://127.0.0.1:8080")
        elif parts.scheme == "kafka":
            if not parts.netloc:
                raise ConfigError(f"url {url!r} names no broker, e.g. kafka://127.0.0.1:9092")
            if importlib.util.find_spec("aiokafka") is None:
                raise ConfigError(f"url {url!r} needs aiokafka: pip install 'studbook[kafka]'")
        else:
            raise ConfigError(
                f"url {url!r}: the scheme must be http, https (the ingest gateway) "
                "or kafka (kafka://host:port[,host:port])"
            )
        token = token if token is not None else (env.get("STUDBOOK_TOKEN") or None)
        actor = actor or env.get("STUDBOOK_ACTOR") or default_actor()
        if len(actor) > 200:
            raise ConfigError(f"actor must be at most 200 characters, got {len(actor)}")
        topic = topic or env.get("STUDBOOK_EVENTS_TOPIC") or DEFAULT_TOPIC
        if spool_dir is not None:
            spool = Path(spool_dir).expanduser()
        elif env.get("STUDBOOK_SPOOL_DIR"):
            spool = Path(env["STUDBOOK_SPOOL_DIR"]).expanduser()
        else:
            spool = cache_root() / "spool"
        return cls(
            url=url.rstrip("/"),
            project=project,
            token=token,
            actor=actor,
            topic=topic,
            spool_dir=spool,
            host=socket.gethostname(),
        )

"""Where the operator commands (`token`, `export-events`, `rebuild`, ...) find the database.

In order: `STUDBOOK_DATABASE_URL` when it is set; otherwise the embedded PostgreSQL that
`studbook-server up` runs on its data folder (`--data-dir`, else `STUDBOOK_DATA_DIR`, else the
default), reached at the port its `postmaster.pid` records with the password `up` keeps beside it.
Anything else is a `ConfigError` that says what to do. Failures to reach or use the database are
one-line `StoreError`s, never a driver traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from studbook_server.adapters import postgres
from studbook_server.config import Settings
from studbook_server.embedded_pg import EmbeddedPostgres, read_postmaster
from studbook_server.errors import ConfigError, StoreError

__all__ = [
    "connection",
    "database_errors",
    "default_data_dir",
    "resolve_database_url",
    "server_folder",
]

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)


def default_data_dir() -> Path:
    """The data folder of `up` when `--data-dir` is not given."""
    configured = os.environ.get("STUDBOOK_DATA_DIR")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        # PostgreSQL runs as an unprivileged user, which cannot reach /root.
        return Path("/var/lib/studbook")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "studbook"


def server_folder(data_dir: Path) -> Path:
    """Where, inside a data folder, the embedded PostgreSQL keeps its files."""
    return data_dir / "postgres"


def resolve_database_url(settings: Settings, data_dir: Path | None = None) -> str:
    """The URL of the database an operator command works on (the order is in the module doc).

    Raises ConfigError, naming the folder looked at and what to do, when there is none.
    """
    if settings.database_url:
        return settings.database_url
    folder = data_dir or default_data_dir()
    start = "`scripts/run" + (f" --data-dir {folder}" if data_dir else "") + "`"
    elsewhere = (
        "or set STUDBOOK_DATABASE_URL, or pass --data-dir (STUDBOOK_DATA_DIR) with the data "
        "folder of a running `studbook-server up`"
    )
    server = server_folder(folder)
    data = server / "data"
    try:
        running = read_postmaster(data)
        if running is None:
            if (data / "PG_VERSION").exists():
                raise ConfigError(
                    f"STUDBOOK_DATABASE_URL is not set and the embedded PostgreSQL of {folder} is "
                    f"not running: start it with {start}, {elsewhere}"
                )
            raise ConfigError(
                f"STUDBOOK_DATABASE_URL is not set and there is no embedded database in {folder}: "
                f"start Studbook with {start}, {elsewhere}"
            )
        if running.status != "ready":
            raise ConfigError(
                f"the embedded PostgreSQL of {folder} is {running.status}: retry once "
                "`studbook-server up` is ready"
            )
        pg = EmbeddedPostgres(server, running.port)
        # Checked first: reading the URL would make a new password if there were none.
        if not pg.password_file.exists():
            raise ConfigError(
                f"the embedded PostgreSQL of {folder} runs, but its password file "
                f"{pg.password_file} is missing: set STUDBOOK_DATABASE_URL"
            )
        return pg.url
    except PermissionError as exc:
        raise ConfigError(
            f"cannot read {exc.filename}: run this as the user who started `studbook-server up`, "
            "or set STUDBOOK_DATABASE_URL"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename or data}: {exc.strerror or exc}") from exc


def _where(url: str) -> str:
    """host:port/database of ``url``, without its credentials."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "the configured STUDBOOK_DATABASE_URL"


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Raise a failure to reach or use the database at ``url`` as a one-line StoreError.

    For code that does no other I/O: any OSError inside is taken to be the connection's.
    """
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {_where(url)}: {_reason(exc)}") from exc
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"PostgreSQL at {_where(url)}: {_reason(exc)}") from exc


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[postgres.Connection]:
    """A connection to ``url``, closed on exit; database failures are one-line StoreErrors.

    Other I/O in the block (files being read or written) keeps its own errors.
    """
    with database_errors(url):
        con = await postgres.connect(url)
    try:
        yield con
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"PostgreSQL at {_where(url)}: {_reason(exc)}") from exc
    finally:
        await con.close()

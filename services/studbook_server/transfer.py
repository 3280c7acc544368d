"""`export-events` / `import-events`: the event store as NDJSON, for backups and migrations.

Each line is an event's wire envelope as stored (its own schema version, redactions applied) plus
the store's `recorded_at` and `position`. Importing appends the events not yet present (by
`event_id`, so re-importing is a no-op) with their original `recorded_at`, and projects them in
the same transaction, so a fresh instance has the same read models, time travel included.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import orjson

from studbook_server.adapters import postgres
from studbook_server.adapters.postgres import Connection, Incoming
from studbook_server.adapters.readmodels import apply_batch, catch_up
from studbook_server.domain.contract import InvalidEvent, event_from_dict
from studbook_server.domain.projection import UNVERIFIED, StoredPrincipal
from studbook_server.errors import StudbookError
from studbook_server.locate import connection, resolve_database_url

_EXPORT = """
SELECT position, event_id::text, type, schema_version, occurred_at, recorded_at, actor, project,
       subject, correlation_id, causation_id, producer, payload, principal_id, principal
FROM public.events WHERE position > $1 ORDER BY position LIMIT $2
"""

Progress = Callable[[int], None]


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def export_events(
    con: Connection, out: IO[bytes], *, batch: int = 5000, progress: Progress | None = None
) -> int:
    """Write every stored event to ``out`` as NDJSON, in store order; return the count."""
    after = 0
    count = 0
    while True:
        rows = await con.fetch(_EXPORT, after, batch)
        if not rows:
            return count
        for r in rows:
            doc: dict[str, Any] = {
                "event_id": r["event_id"],
                "type": r["type"],
                "schema_version": r["schema_version"],
                "occurred_at": _time(r["occurred_at"]),
                "actor": r["actor"],
                "project": r["project"],
                "subject": r["subject"],
                "payload": r["payload"],
            }
            for optional in ("correlation_id", "causation_id", "producer"):
                if r[optional] is not None:
                    doc[optional] = r[optional]
            doc["recorded_at"] = _time(r["recorded_at"])
            doc["position"] = r["position"]
            if r["principal"] is not None:
                doc["principal"] = {"token_id": r["principal_id"], "name": r["principal"]}
            out.write(orjson.dumps(doc) + b"\n")
        after = rows[-1]["position"]
        count += len(rows)
        if progress:
            progress(count)


class ImportError_(StudbookError):
    """A line of the import file is not a valid exported event."""


class TransferFileError(StudbookError):
    """The file to export to or import from cannot be opened, read or written."""


def _incoming(lines: Iterable[bytes]) -> Iterator[Incoming]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            recorded = datetime.fromisoformat(doc.pop("recorded_at"))
            doc.pop("position", None)
            # Who the exporting store authenticated, restored as recorded (an import is an
            # operator's restore of a store's history, not a client's claim).
            sender = doc.pop("principal", None)
            principal = (
                StoredPrincipal(sender["token_id"], sender["name"]) if sender else UNVERIFIED
            )
            event = event_from_dict(doc)
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            detail = (
                "; ".join(f"{v.path}: {v.message}" for v in exc.violations)
                if isinstance(exc, InvalidEvent)
                else str(exc)
            )
            raise ImportError_(f"line {number}: not an exported event: {detail}") from exc
        yield Incoming(doc, event, recorded, principal)


async def import_events(
    con: Connection, lines: Iterable[bytes], *, batch: int = 2000, progress: Progress | None = None
) -> tuple[int, int]:
    """Append the events of an export that the store lacks; return (read, appended)."""
    read = appended = 0
    chunk: list[Incoming] = []

    async def flush() -> None:
        nonlocal appended
        async with con.transaction():
            await postgres.store_lock(con)
            # Project what the store already holds first, then the imported events, in the same
            # transaction as their append: the read models never skip or reorder an event.
            await catch_up(con)
            conflicts: list[postgres.Conflict] = []
            stored = await postgres.append(con, chunk, conflicts)
            if conflicts:
                raise ImportError_(f"not imported: {conflicts[0].reason}")
            await apply_batch(con, stored)
            appended += len(stored)
        chunk.clear()

    for item in _incoming(lines):
        chunk.append(item)
        read += 1
        if len(chunk) >= batch:
            await flush()
            if progress:
                progress(read)
    if chunk:
        await flush()
    if progress:
        progress(read)
    return read, appended


async def export_main(path: str | None, data_dir: Path | None = None) -> int:
    from studbook_server.config import load_settings

    url = resolve_database_url(load_settings(), data_dir)
    async with connection(url) as con:
        if path in (None, "-"):
            n = await export_events(con, sys.stdout.buffer)
        else:
            with _opened(path, "wb") as out:
                n = await export_events(con, out)
    print(f"export-events: wrote {n} events", file=sys.stderr)
    return 0


async def import_main(path: str, data_dir: Path | None = None) -> int:
    from rich.progress import Progress as Bar

    from studbook_server.config import load_settings

    url = resolve_database_url(load_settings(), data_dir)
    with _opened(path, "rb") as src:
        async with connection(url) as con:
            await postgres.migrate(con)
            with Bar() as bar:
                task = bar.add_task("importing events", total=None)
                read, appended = await import_events(
                    con, src, progress=lambda n: bar.update(task, completed=n)
                )
    print(f"import-events: read {read} events, appended {appended} new ones", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _opened(path: str, mode: Literal["rb", "wb"]) -> Iterator[BinaryIO]:
    """``path`` opened; failing to open, read or write it is a one-line StudbookError."""
    try:
        with open(path, mode) as f:
            yield f
    except OSError as exc:
        doing = "read" if mode == "rb" else "write"
        raise TransferFileError(f"cannot {doing} {path}: {exc.strerror or exc}") from exc

"""`rebuild`: replay the event store into fresh read-model tables and swap them in atomically.

The fresh tables live in schema `rm_new`, created `LIKE` the live ones (columns, constraints,
indexes). The bulk replay runs beside live traffic; the last stretch and the swap (two schema
renames) run in one transaction holding the store lock, so no event is applied twice or missed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from studbook_server.adapters import postgres
from studbook_server.adapters.readmodels import catch_up
from studbook_server.locate import database_errors, resolve_database_url

Progress = Callable[[int, int], None]

_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'rm' ORDER BY tablename"


async def rebuild(database_url: str, *, batch: int = 5000, progress: Progress | None = None) -> int:
    """Rebuild the read models; return the number of events replayed."""
    admin = await postgres.connect(database_url)
    try:
        await admin.execute("DROP SCHEMA IF EXISTS rm_new CASCADE")
        await admin.execute("CREATE SCHEMA rm_new")
        for row in await admin.fetch(_TABLES):
            # Names come from the catalog, not from input.
            await admin.execute(
                f'CREATE TABLE rm_new."{row[0]}" (LIKE rm."{row[0]}" INCLUDING ALL)'
            )
        await admin.execute("INSERT INTO rm_new.checkpoint (position) VALUES (0)")
        total = await postgres.head_position(admin)
    finally:
        await admin.close()

    con = await postgres.connect(database_url, search_path="rm_new")
    try:
        done = 0
        while True:
            n = await catch_up(con, batch=batch, until=total)
            done += n
            if progress:
                progress(done, total)
            if n == 0:
                break
        async with con.transaction():
            await postgres.store_lock(con)
            # The last stretch, with the same safety net as the bulk (nested: savepoints).
            done += await catch_up(con, batch=batch)
            await con.execute("ALTER SCHEMA rm RENAME TO rm_old")
            await con.execute("ALTER SCHEMA rm_new RENAME TO rm")
            await con.execute("DROP SCHEMA rm_old CASCADE")
        if progress:
            progress(done, max(done, total))
        return done
    finally:
        await con.close()


async def rebuild_main(data_dir: Path | None = None) -> int:
    from rich.progress import Progress as Bar

    from studbook_server.config import load_settings

    url = resolve_database_url(load_settings(), data_dir)
    with database_errors(url), Bar(transient=False) as bar:
        task = bar.add_task("replaying events", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        n = await rebuild(url, progress=update)
    print(
        f"rebuild: replayed {n} events into fresh read models and swapped them in", file=sys.stderr
    )
    return 0

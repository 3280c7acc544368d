"""export-events / import-events: a fresh instance rebuilt from an export has identical read models."""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from studbook_server import integrity
from studbook_server.adapters import postgres
from studbook_server.adapters.readmodels import catch_up
from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import StoredPrincipal
from studbook_server.transfer import ImportError_, export_events, import_events
from tests.support import assert_same_read_models, dump_read_models, migrated, scenario

Factory = Callable[[], Coroutine[Any, Any, str]]


async def _store(url: str, events: list[dict[str, Any]]) -> None:
    con = await postgres.connect(url)
    try:
        # Several appends, so recorded times differ, as in a real history.
        for start in range(0, len(events), 5):
            chunk = events[start : start + 5]
            async with con.transaction():
                await postgres.append(
                    con,
                    [
                        postgres.Incoming(
                            e,
                            event_from_dict(orjson.loads(orjson.dumps(e))),
                            principal=StoredPrincipal(f"tok-{e['actor']}", e["actor"]),
                        )
                        for e in chunk
                    ],
                )
        await catch_up(con)
    finally:
        await con.close()


async def test_export_then_import_reproduces_identical_read_models(
    database_factory: Factory,
) -> None:
    source, target = await database_factory(), await database_factory()
    await migrated(source)
    await migrated(target)
    await _store(source, scenario())

    out = io.BytesIO()
    con = await postgres.connect(source)
    try:
        exported = await export_events(con, out, batch=7)
        assert (await integrity.verify(con)).checked == exported
    finally:
        await con.close()
    assert exported == len(scenario())
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line)["position"] for line in lines] == list(range(1, exported + 1))
    # Who the source store authenticated travels with each event, and is restored as recorded.
    assert {orjson.loads(line)["principal"]["name"] for line in lines} == {"alice", "bob"}

    con = await postgres.connect(target)
    try:
        assert await import_events(con, lines, batch=4) == (exported, exported)
        await catch_up(con)
        # Re-importing is a no-op.
        assert await import_events(con, lines) == (exported, 0)
        assert await catch_up(con) == 0
        assert (await integrity.verify(con)).checked == exported
    finally:
        await con.close()
    assert_same_read_models(await dump_read_models(target), await dump_read_models(source))


async def test_import_names_the_bad_line(database_factory: Factory) -> None:
    url = await database_factory()
    await migrated(url)
    good = orjson.dumps({**scenario()[0], "recorded_at": "2026-03-01T00:00:00Z", "position": 1})
    con = await postgres.connect(url)
    try:
        with pytest.raises(ImportError_, match="line 2"):
            await import_events(con, [good, b'{"type": "run.started"}'])
    finally:
        await con.close()

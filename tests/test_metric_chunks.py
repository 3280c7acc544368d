"""Metric chunks (rm.metric_series, rm.metric_chunks): the layout is the same however events fall
into batches, live, on a rebuild and after migration 0010; paged, every-Nth and bucketed reads
return what the points say. Real PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from studbook_server.adapters import postgres, readmodels
from studbook_server.adapters.readmodels import CHUNK_POINTS, TAIL_POINTS, catch_up, cut_chunks
from studbook_server.domain.contract import event_from_dict
from studbook_server.graphql._ids import cursor
from studbook_server.graphql._loaders import Loaders
from studbook_server.rebuild import rebuild
from tests.support import ev

Factory = Callable[[], Coroutine[Any, Any, str]]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_cut_chunks_seals_at_multiples_and_cuts_the_tail_at_multiples_of_its_rows() -> None:
    steps = list(range(10))
    ats = [0] * 10
    positions = [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    rows = cut_chunks(7, 0, steps, [float(s) for s in steps], ats, positions, size=4, tail=2)
    # (series, seq, n): chunks [0, 4) and [4, 8) sealed; the rest a tail row of 2.
    assert [(r[0], r[1], r[2]) for r in rows] == [(7, 0, 4), (7, 4, 4), (7, 8, 2)]
    assert rows[1][11] == [4.0, 5.0, 6.0, 7.0]
    assert rows[1][13] == [2, 2, 2, 3]
    # From ordinal 5 (a tail row [4, 6) holds one point before): up to ordinal 6, then rows of
    # two whatever the events (positions) they come from; nothing sealed off a multiple of 4.
    rows = cut_chunks(7, 5, steps[:4], [0.0, 1.0, 2.0, 3.0], ats[:4], [9, 10, 10, 11], 4, 2)
    assert [(r[1], r[2], r[8], r[9]) for r in rows] == [
        (5, 1, 9, 9),
        (6, 2, 10, 10),
        (8, 1, 11, 11),
    ]
    # From a multiple of `size` with fewer than `size` points: tail rows only.
    rows = cut_chunks(7, 8, steps[:3], [0.0, 1.0, 2.0], ats[:3], [4, 5, 6], 4, 2)
    assert [(r[1], r[2], r[8], r[9]) for r in rows] == [(8, 2, 4, 5), (10, 1, 6, 6)]


def test_short_arrays_pack_as_the_general_encoder_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-struct path for short arrays writes the same bytes as the general one."""
    rng = random.Random(5)
    cases: list[tuple[int, str, list[Any]]] = []
    for n in (0, 1, 2, 3, 7, 31, 32):
        ints = [rng.randint(-(2**63), 2**63 - 1) for _ in range(n)]
        floats = [rng.choice([rng.uniform(-1e9, 1e9), 0.0, -0.0, float("inf"), 5e-324])
                  for _ in range(n)]  # fmt: skip
        cases += [(20, "q", ints), (701, "d", floats), (1184, "q", ints)]
    short = [readmodels._array(oid, code, items) for oid, code, items in cases]
    monkeypatch.setattr(readmodels, "_SHORT_ARRAY", -1)  # every array the general way
    assert short == [readmodels._array(oid, code, items) for oid, code, items in cases]


def test_a_chunk_keeps_the_latest_point_by_step_then_order() -> None:
    (row,) = cut_chunks(1, 0, [3, 5, 1, 5, 2], [0.1, 0.2, 0.3, 0.4, 0.5], [0] * 5, [1] * 5, 8)
    n, step_min, step_max, value_min, value_max, last = row[2:8]
    assert (n, step_min, step_max, value_min, value_max, last) == (5, 1, 5, 0.1, 0.5, 0.4)


def _metric_events(seed: int) -> list[dict[str, Any]]:
    """Two runs, three series, events of 1 to 700 points, steps mostly rising (one series
    logs a step out of order), crossing the chunk size several times."""
    rng = random.Random(seed)
    docs = [ev("run.started", f"run:r{r}", {"name": f"r{r}"}) for r in (1, 2)]
    step = {"loss": 0, "acc": 0, "lr": 0}
    for i in range(40):
        run = "r1" if i % 3 else "r2"
        points = []
        for key in ("loss", "acc") if run == "r1" else ("lr",):
            for _ in range(rng.choice([1, 3, 50, 300, 700])):
                step[key] += 1
                s = step[key] - 5 if key == "acc" and rng.random() < 0.01 else step[key]
                t = (T0 + timedelta(seconds=s)).isoformat()
                points.append({"key": key, "value": rng.random(), "step": s, "timestamp": t})
        for j in range(0, len(points), 1000):
            docs.append(ev("run.metrics.logged", f"run:{run}", {"metrics": points[j : j + 1000]}))
    return docs


async def _store(url: str, docs: list[dict[str, Any]]) -> None:
    con = await postgres.connect(url)
    try:
        async with con.transaction():
            await postgres.append(
                con, [postgres.Incoming(d, event_from_dict(d, i)) for i, d in enumerate(docs)]
            )
    finally:
        await con.close()


async def _layout(con: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await con.fetch(
        """SELECT s.id, s.project, s.run_id, s.key, c.* FROM rm.metric_series s
           JOIN rm.metric_chunks c ON c.series_id = s.id ORDER BY s.id, c.seq"""
    )
    return [tuple(r) for r in rows]


async def _migrate_to(con: asyncpg.Connection, last: int) -> None:
    for version, path in postgres.migration_files():
        if version <= last:
            async with con.transaction():
                await con.execute(path.read_text())
                await con.execute(
                    "INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)",
                    version, path.name,
                )  # fmt: skip


@pytest.mark.parametrize("live_batch", [1, 7])
async def test_the_layout_is_the_same_for_any_batching_and_on_a_rebuild(
    database_factory: Factory, live_batch: int
) -> None:
    url = await database_factory()
    con = await postgres.connect(url)
    try:
        await postgres.migrate(con)
        docs = _metric_events(seed=live_batch)
        await _store(url, docs)
        assert await catch_up(con, batch=live_batch) == len(docs)
        live = await _layout(con)
        total = sum(len(d["payload"]["metrics"]) for d in docs if "metrics" in d["payload"])
        assert sum(r[6] for r in live) == total
        assert await con.fetchval("SELECT sum(points) FROM rm.run_metrics") == total
        # Sealed chunks hold exactly CHUNK_POINTS from a multiple of it; every series has some.
        sealed = [r for r in live if r[6] == CHUNK_POINTS and r[5] % CHUNK_POINTS == 0]
        assert {r[0] for r in sealed} == {1, 2, 3}
        # Tail rows hold the ordinals [k * TAIL_POINTS, (k + 1) * TAIL_POINTS), whatever the
        # events they came in; only a series' last row is partial.
        last = {sid: max(r[5] for r in live if r[0] == sid) for sid in {r[0] for r in live}}
        for r in live:
            if r not in sealed:
                assert r[5] % TAIL_POINTS == 0, r[:7]
                assert 0 < r[6] <= TAIL_POINTS, r[:7]
                assert r[6] == TAIL_POINTS or r[5] == last[r[0]], r[:7]
        assert any(r[12] != r[13] for r in live if r not in sealed), "no tail row mixes events"
        await rebuild(url, batch=5000)
        assert await _layout(con) == live
    finally:
        await con.close()


async def test_migration_0010_converts_points_into_the_layout_a_rebuild_makes(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    con = await postgres.connect(url)
    try:
        await con.execute(
            """CREATE TABLE public.schema_migrations (version integer PRIMARY KEY,
               name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        await _migrate_to(con, 9)
        docs = _metric_events(seed=3)
        await _store(url, docs)
        # The old layout: one row per point, in logged order, as the projector wrote them.
        stored = await con.fetch(
            "SELECT position, subject, payload FROM public.events WHERE type = 'run.metrics.logged'"
            " ORDER BY position"
        )
        rows = [
            ("churn", e["subject"].removeprefix("run:"), m["key"], m["step"], m["value"],
             datetime.fromisoformat(m["timestamp"]), e["position"])
            for e in stored for m in e["payload"]["metrics"]
        ]  # fmt: skip
        await con.copy_records_to_table(
            "run_metric_points",
            records=rows,
            schema_name="rm",
            columns=["project", "run_id", "key", "step", "value", "at", "position"],
        )
        await postgres.migrate(con)
        assert await con.fetchval("SELECT to_regclass('rm.run_metric_points')") is None
        converted = await _layout(con)
        await rebuild(url)
        rebuilt = await _layout(con)
        for a, b in zip(converted, rebuilt, strict=True):
            assert a == b, [
                (i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y
            ][:3]
    finally:
        await con.close()


async def test_paged_every_nth_and_bucketed_reads_match_the_points(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    con = await postgres.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await postgres.migrate(con)
        docs = _metric_events(seed=11)
        await _store(url, docs)
        await catch_up(con, batch=5)
        points = await con.fetch(
            """SELECT u.step, u.value, u.position, c.seq + u.o - 1 AS ordinal
               FROM rm.metric_series s JOIN rm.metric_chunks c ON c.series_id = s.id,
               unnest(c.steps, c.vals, c.positions) WITH ORDINALITY AS u(step, value, position, o)
               WHERE s.run_id = 'r1' AND s.key = 'acc'"""
        )
        assert len(points) > 3 * CHUNK_POINTS
        by_step = sorted(points, key=lambda p: (p["step"], p["position"], p["ordinal"]))

        async def pages(every: int, step_from: int | None, step_to: int | None) -> list[int]:
            got: list[int] = []
            after: tuple[int, int] | None = None
            while True:
                key = (
                    "churn", "r1", "acc", step_from, step_to,
                    after[0] if after else None, after[1] if after else None, 301, every,
                )  # fmt: skip
                page = await Loaders(pool).metric_history.load(key)
                got += [r["step"] for r in page[:300]]
                if len(page) <= 300:
                    return got
                after = (page[299]["step"], page[299]["position"])
                assert cursor(*after)

        assert await pages(1, None, None) == [p["step"] for p in by_step]
        assert await pages(1, 1500, 2600) == [
            p["step"] for p in by_step if 1500 <= p["step"] <= 2600
        ]
        assert await pages(7, None, None) == [p["step"] for p in by_step if p["ordinal"] % 7 == 0]
        # Sparse: read by subscript, not by unpacking whole chunks.
        assert await pages(300, None, None) == [
            p["step"] for p in by_step if p["ordinal"] % 300 == 0
        ]
        assert await pages(300, 1000, None) == [
            p["step"] for p in by_step if p["ordinal"] % 300 == 0 and p["step"] >= 1000
        ]

        buckets = await Loaders(pool).metric_buckets.load(("churn", "r1", "acc", None, None, 10))
        lo, hi = by_step[0]["step"], by_step[-1]["step"]
        width = (hi - lo + 10) // 10
        for b in buckets:
            inside = [p for p in by_step if (p["step"] - lo) // width == b["bucket"]]
            assert (b["first_step"], b["last_step"], b["n"]) == (
                inside[0]["step"], inside[-1]["step"], len(inside),
            )  # fmt: skip
            assert b["value_min"] == min(p["value"] for p in inside)
            assert b["value_max"] == max(p["value"] for p in inside)
            assert b["last_value"] == inside[-1]["value"]
            assert b["step_from"] == lo + b["bucket"] * width
        assert sum(b["n"] for b in buckets) == len(by_step)
    finally:
        await pool.close()
        await con.close()

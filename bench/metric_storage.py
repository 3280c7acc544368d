"""Metric storage: bytes per point and history read latency, chunks beside one row per point.

Writes N runs x M points (K keys per run, `--points-per-event` points per `run.metrics.logged`
event, one timestamp per step, noisy loss-like values) to a fresh Kafka topic, projects them
with the real `KafkaProjector` into a fresh database, VACUUMs, then reports:

* bytes per point, `pg_total_relation_size` (heap, TOAST, indexes): the read models
  (rm.metric_chunks + rm.metric_series, and rm.run_metrics, the per-series summary) and the
  event store (public.events, whole table, and the `run.metrics.logged` payloads alone),
  separately and together;
* the baseline: the same points copied into the one-row-per-point layout the read models had
  before migration 0010 (rm.run_metric_points: btree on (project, run_id, key, step), BRIN on
  position), in a schema of its own in the same database;
* the event store's payloads under each TOAST compression the server has (pglz, lz4 when built
  in, and none), copied into scratch tables;
* history read latency on the longest series (medians of `--repeat`): the first and a middle
  page of 1000 (metricHistory), every Nth point for 1000 points (metricHistory(every:)), 500
  buckets (metricBuckets); each beside the same answer from the baseline table.

`--long-series N` adds one more series of N points (run `long`, key `loss`) after the storage
figures, written through the projector's own chunk writer (`write_metric_points`, 100k points
per transaction) but not through Kafka, so a 10M-point chart can be read without projecting 10M
points first; the reads then use that series.

Prints ONE JSON object on stdout; progress goes to stderr.

    .venv/bin/python bench/metric_storage.py [--runs N] [--points M] [--keys K]
        [--points-per-event P] [--repeat R]

Needs the services of `scripts/stack up` (STUDBOOK_KAFKA_BOOTSTRAP / STUDBOOK_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from _common import (
    PROJECT,
    BenchError,
    add_service_args,
    fresh_database,
    fresh_topic,
    log,
    machine_info,
    median,
    parse_with_tiny,
    produce,
    run_bench,
    service_defaults,
)
from studbook_server.adapters import postgres
from studbook_server.adapters.readmodels import CHUNK_POINTS, write_metric_points
from studbook_server.config import Settings
from studbook_server.domain.projection import MetricPoints, SeriesPoints, micros
from studbook_server.graphql._loaders import Loaders
from studbook_server.projector import KafkaProjector

DATABASE_PREFIX = "studbook_bench_storage_"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TINY = {"runs": 2, "points": 6000, "keys": 2, "points_per_event": 100, "repeat": 3}
PAGE = 1000
BUCKETS = 500

# The layout before chunks (schema/sql/0002_read_models.sql and 0004), filled from the chunks.
_BASELINE = """
CREATE SCHEMA baseline;
CREATE TABLE baseline.run_metric_points (
    project text NOT NULL, run_id text NOT NULL, key text NOT NULL, step bigint NOT NULL,
    value double precision NOT NULL, at timestamptz NOT NULL, position bigint NOT NULL);
INSERT INTO baseline.run_metric_points
SELECT s.project, s.run_id, s.key, u.step, u.value, u.at, u.position
FROM rm.metric_series s JOIN rm.metric_chunks c ON c.series_id = s.id,
     unnest(c.steps, c.vals, c.ats, c.positions) AS u(step, value, at, position)
ORDER BY c.position_min, s.id;
CREATE INDEX run_metric_points_series ON baseline.run_metric_points (project, run_id, key, step);
CREATE INDEX run_metric_points_position ON baseline.run_metric_points USING brin (position);
"""

# The old metricHistory statement (one key), on the baseline table.
_BASE_PAGE = """
SELECT key, step, value, at, position FROM baseline.run_metric_points
WHERE project = $1 AND run_id = $2 AND key = $3
  AND ($4::int8 IS NULL OR (step, position) > ($4, $5::int8))
ORDER BY step, position LIMIT $6
"""

# Every Nth point in logged order, and min/max per bucket, the way one-row-per-point answers.
_BASE_EVERY = """
SELECT step, value, at, position FROM (
    SELECT *, row_number() OVER (ORDER BY position, step) - 1 AS ordinal
    FROM baseline.run_metric_points WHERE project = $1 AND run_id = $2 AND key = $3) p
WHERE ordinal % $4 = 0 ORDER BY step, position LIMIT $5
"""
_BASE_BUCKETS = """
WITH p AS (SELECT * FROM baseline.run_metric_points WHERE project = $1 AND run_id = $2 AND key = $3),
span AS (SELECT min(step) AS lo, (max(step) - min(step) + $4) / $4 AS width FROM p)
SELECT (p.step - span.lo) / span.width AS bucket, min(step), max(step), min(value), max(value),
       (array_agg(value ORDER BY step DESC, position DESC))[1], count(*)
FROM p, span GROUP BY 1 ORDER BY 1
"""

_SIZE = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c WHERE c.oid = ANY($1::regclass[])"


def make_events(
    runs: int, points: int, keys: int, per_event: int, seed: int
) -> list[dict[str, Any]]:
    """Each run: run.started, then its points, `per_event` per event, steps rising, all keys of
    a step together (as `log_metrics` sends them) with one timestamp per step."""
    rng = random.Random(seed)
    names = ["loss", "accuracy", "learning_rate", "grad_norm", "val_loss", "throughput"]
    names += [f"metric_{i}" for i in range(len(names), keys)]
    docs: list[dict[str, Any]] = []
    steps = points // keys
    for r in range(runs):
        run = f"run-{r}"

        def doc(type_: str, payload: dict[str, Any], when: datetime, run: str = run) -> None:
            docs.append({
                "event_id": str(uuid.uuid4()), "type": type_, "schema_version": 1,
                "occurred_at": when.isoformat().replace("+00:00", "Z"), "actor": "bench",
                "project": PROJECT, "subject": f"run:{run}", "payload": payload,
                "producer": {"name": "bench", "version": "1"},
            })  # fmt: skip

        docs.append({
            "event_id": str(uuid.uuid4()), "type": "run.started", "schema_version": 2,
            "occurred_at": T0.isoformat().replace("+00:00", "Z"), "actor": "bench",
            "project": PROJECT, "subject": f"run:{run}", "payload": {"name": run},
            "producer": {"name": "bench", "version": "1"},
        })  # fmt: skip
        batch: list[dict[str, Any]] = []
        for step in range(steps):
            when = T0 + timedelta(milliseconds=37 * step)
            stamp = when.isoformat().replace("+00:00", "Z")
            for k in range(keys):
                value = 1 / (1 + step * 1e-4) * (1 + k) + rng.gauss(0, 0.01)
                batch.append({"key": names[k], "value": value, "step": step, "timestamp": stamp})
            if len(batch) >= per_event or step == steps - 1:
                doc("run.metrics.logged", {"metrics": batch}, when)
                batch = []
    return docs


async def project_kafka(args: argparse.Namespace, url: str, docs: list[dict[str, Any]]) -> float:
    """Produce `docs`, project them with a KafkaProjector; return the projection seconds."""
    records = [(d["subject"].encode(), orjson.dumps(d)) for d in docs]
    async with fresh_topic(args.bootstrap, "studbook-bench-storage-") as topic:
        await produce(args.bootstrap, topic, records)
        settings = Settings(
            database_url=url, kafka_bootstrap=args.bootstrap, events_topic=topic,
            consumer_group=f"bench-storage-{uuid.uuid4().hex[:8]}", log_level="WARNING",
            batch_max_records=2000, batch_timeout_ms=200,
        )  # fmt: skip
        pool = await postgres.create_pool(url, max_size=3)
        projector = KafkaProjector(settings, pool, name="bench-storage")
        started = time.monotonic()
        task = asyncio.create_task(projector.run())
        try:
            con = await asyncpg.connect(url)
            try:
                while True:
                    if task.done():
                        task.result()
                        raise BenchError("the projector stopped before projecting everything")
                    if await con.fetchval("SELECT position FROM rm.checkpoint") >= len(docs):
                        break
                    if time.monotonic() - started > args.timeout:
                        raise BenchError(f"not projected within {args.timeout} s")
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
            finally:
                await con.close()
        finally:
            projector.stop()
            await task
            await pool.close()
    return elapsed


async def write_long_series(con: asyncpg.Connection, points: int, seed: int) -> None:
    """One series of `points` points through `write_metric_points`, 100k per transaction."""
    rng = random.Random(seed)
    t0 = micros(T0)
    step = 0
    log(f"writing a series of {points} points through the chunk writer")
    while step < points:
        batch = MetricPoints()
        sp = SeriesPoints()
        end = min(points, step + 100_000)
        sp.steps = list(range(step, end))
        sp.values = [1 / (1 + s * 1e-6) + rng.gauss(0, 0.01) for s in sp.steps]
        sp.ats = [t0 + 37_000 * s for s in sp.steps]
        # As if logged 1000 points per event, one store position each.
        sp.positions = [10_000_000 + s // 1000 for s in sp.steps]
        batch[(PROJECT, "long", "loss")] = sp
        batch.count = len(sp.steps)
        async with con.transaction():
            await con.execute("SET LOCAL search_path = rm, public")
            await write_metric_points(con, batch)
            summary = sp.summary()
            await con.execute(
                """INSERT INTO rm.run_metrics AS t (project, run_id, key, value, step, at,
                       position, min_value, max_value, points)
                   VALUES ($1, 'long', 'loss', $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (project, run_id, key) DO UPDATE SET value = EXCLUDED.value,
                       step = EXCLUDED.step, at = EXCLUDED.at, position = EXCLUDED.position,
                       min_value = LEAST(t.min_value, EXCLUDED.min_value),
                       max_value = GREATEST(t.max_value, EXCLUDED.max_value),
                       points = t.points + EXCLUDED.points""",
                PROJECT, summary.value, summary.step, summary.at, summary.position,
                summary.min_value, summary.max_value, summary.points,
            )  # fmt: skip
        step = end


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Median milliseconds of `repeat` calls (after one warm-up), and the last answer."""
    answer = await call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await call()
        samples.append((time.perf_counter() - started) * 1000)
    return round(median(samples), 3), answer


async def payload_compression(con: asyncpg.Connection) -> dict[str, Any]:
    """The metric events' payloads copied under each compression the server has."""
    out: dict[str, Any] = {}
    for method in ("pglz", "lz4", "none"):
        table = f"baseline.payload_{method}"
        column = "payload jsonb" + ("" if method == "none" else f" COMPRESSION {method}")
        try:
            await con.execute(f"CREATE TABLE {table} ({column})")  # names from this code
        except asyncpg.FeatureNotSupportedError:
            out[method] = None  # e.g. lz4 on a server built without it
            continue
        if method == "none":
            await con.execute(f"ALTER TABLE {table} ALTER COLUMN payload SET STORAGE EXTERNAL")
        await con.execute(
            # Through text: a datum copied as it is keeps the compression it was stored with.
            f"INSERT INTO {table} SELECT payload::text::jsonb FROM public.events"
            " WHERE type = 'run.metrics.logged'"
        )
        await con.execute(f"VACUUM ANALYZE {table}")
        out[method] = await con.fetchval(_SIZE, [table])
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    docs = make_events(args.runs, args.points, args.keys, args.points_per_event, args.seed)
    total = sum(len(d["payload"]["metrics"]) for d in docs if d["type"] == "run.metrics.logged")
    log(f"{len(docs)} events, {total} points")
    async with fresh_database(args.database_url, DATABASE_PREFIX) as url:
        projection_s = await project_kafka(args, url, docs)
        log(f"projected in {projection_s:.1f} s ({total / projection_s:,.0f} points/s)")
        con = await asyncpg.connect(url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        assert pool is not None
        try:
            stored = await con.fetchval("SELECT coalesce(sum(n), 0) FROM rm.metric_chunks")
            if stored != total:
                raise BenchError(f"rm.metric_chunks holds {stored} points, expected {total}")
            chunks_written = await con.fetchval(_SIZE, ["rm.metric_chunks", "rm.metric_series"])
            await con.execute("VACUUM ANALYZE")
            await con.execute(_BASELINE)
            await con.execute("VACUUM ANALYZE baseline.run_metric_points")
            size = {
                "chunks": await con.fetchval(_SIZE, ["rm.metric_chunks", "rm.metric_series"]),
                "summary": await con.fetchval(_SIZE, ["rm.run_metrics"]),
                "events": await con.fetchval(_SIZE, ["public.events"]),
                "baseline_points": await con.fetchval(_SIZE, ["baseline.run_metric_points"]),
                "metric_payloads": await con.fetchval(
                    "SELECT sum(pg_column_size(payload))::int8 FROM public.events"
                    " WHERE type = 'run.metrics.logged'"
                ),
            }
            columns = await con.fetchrow(
                "SELECT sum(pg_column_size(steps)) / sum(n)::float8 AS steps,"
                " sum(pg_column_size(vals)) / sum(n)::float8 AS vals,"
                " sum(pg_column_size(ats)) / sum(n)::float8 AS ats,"
                " sum(pg_column_size(positions)) / sum(n)::float8 AS positions, count(*) AS chunks"
                " FROM rm.metric_chunks WHERE n = $1", CHUNK_POINTS,
            )  # fmt: skip
            compression = await payload_compression(con)
            if args.long_series:
                await write_long_series(con, args.long_series, args.seed)
                await con.execute("DROP SCHEMA baseline CASCADE")
                await con.execute(_BASELINE)
                await con.execute("VACUUM ANALYZE")
            compression_column = await con.fetchval(
                "SELECT attcompression FROM pg_attribute"
                " WHERE attrelid = 'rm.metric_chunks'::regclass AND attname = 'vals'"
            )

            def per_point(n: int | None) -> float | None:
                return None if n is None else round(n / total, 2)

            read_models = size["chunks"] + size["summary"]
            baseline_read_models = size["baseline_points"] + size["summary"]

            # The longest series (run-0's first key, or the long series).
            row = await con.fetchrow(
                "SELECT s.run_id, s.key, sum(c.n)::int8 AS n, max(c.step_max) AS top"
                " FROM rm.metric_series s JOIN rm.metric_chunks c ON c.series_id = s.id"
                " GROUP BY s.id ORDER BY n DESC, s.id LIMIT 1"
            )
            key, n, top = row["key"], row["n"], row["top"]
            middle = top // 2
            every = max(1, n // PAGE)
            base = (PROJECT, row["run_id"], key)

            def history(after: tuple[int, int] | None, every: int = 1) -> Any:
                lk = (*base, None, None, after and after[0], after and after[1], PAGE + 1, every)
                return Loaders(pool).metric_history.load(lk)

            mid_after = (middle, 0)
            reads = {}
            checks = []
            for name, new, old in [
                (
                    "first_page",
                    lambda: history(None),
                    lambda: pool.fetch(_BASE_PAGE, *base, None, None, PAGE + 1),
                ),
                (
                    "middle_page",
                    lambda: history(mid_after),
                    lambda: pool.fetch(_BASE_PAGE, *base, *mid_after, PAGE + 1),
                ),
                (
                    "every_nth",
                    lambda: history(None, every),
                    lambda: pool.fetch(_BASE_EVERY, *base, every, PAGE + 1),
                ),
                (
                    "buckets_500",
                    lambda: Loaders(pool).metric_buckets.load((*base, None, None, BUCKETS)),
                    lambda: pool.fetch(_BASE_BUCKETS, *base, BUCKETS),
                ),
            ]:
                new_ms, new_rows = await timed(args.repeat, new)
                old_ms, old_rows = await timed(args.repeat, old)
                if name == "buckets_500":
                    same = [(r["first_step"], r["last_step"], r["value_min"], r["value_max"],
                             r["last_value"], r["n"]) for r in new_rows] == [
                        tuple(r[1:]) for r in old_rows
                    ]  # fmt: skip
                else:
                    same = [(r["step"], r["position"]) for r in new_rows] == [
                        (r["step"], r["position"]) for r in old_rows
                    ]
                checks.append((name, same, len(new_rows)))
                reads[name] = {
                    "chunks_ms": new_ms,
                    "baseline_ms": old_ms,
                    "ratio_baseline_to_chunks": round(old_ms / new_ms, 2) if new_ms else None,
                    "rows": len(new_rows),
                }
            wrong = [name for name, same, _ in checks if not same]
            if wrong:
                raise BenchError(f"chunked reads differ from the baseline's: {wrong}")
            return {
                "machine": await machine_info(url),
                "workload": {
                    "runs": args.runs,
                    "points_per_run": args.points,
                    "keys": args.keys,
                    "points_per_event": args.points_per_event,
                    "points": total,
                    "long_series": args.long_series,
                    "events": len(docs),
                    "longest_series_points": n,
                    "every": every,
                    "chunk_compression": {"l": "lz4", "p": "pglz"}.get(
                        compression_column, "server default"
                    ),
                },
                "projection": {
                    "seconds": round(projection_s, 2),
                    "points_per_s": round(total / projection_s),
                },
                "bytes_per_point": {
                    "read_models": per_point(read_models),
                    "chunks": per_point(size["chunks"]),
                    "chunks_before_vacuum": per_point(chunks_written),
                    "summary": per_point(size["summary"]),
                    "event_store": per_point(size["events"]),
                    "event_store_metric_payloads": per_point(size["metric_payloads"]),
                    "together": per_point(read_models + size["events"]),
                    "baseline_read_models": per_point(baseline_read_models),
                    "baseline_points_table": per_point(size["baseline_points"]),
                    "baseline_together": per_point(baseline_read_models + size["events"]),
                    "ratio_baseline_to_chunks_read_models": round(
                        baseline_read_models / read_models, 2
                    ),
                },
                "sealed_chunk_array_bytes_per_point": {
                    k: round(columns[k], 2) if columns[k] is not None else None
                    for k in ("steps", "vals", "ats", "positions")
                },
                "chunks": {
                    "sealed": columns["chunks"],
                    "tail_rows": await con.fetchval(
                        "SELECT count(*) FROM rm.metric_chunks WHERE n <> $1", CHUNK_POINTS
                    ),
                },
                "event_payload_bytes_per_point_by_compression": {
                    k: per_point(v) for k, v in compression.items()
                },
                "history_reads": reads,
                "verified": True,
            }
        finally:
            await pool.close()
            await con.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=4, help="runs (default 4)")
    p.add_argument("--points", type=int, default=500_000, help="points per run (default 500k)")
    p.add_argument("--keys", type=int, default=5, help="metric keys per run (default 5)")
    p.add_argument("--points-per-event", type=int, default=500, help="(default 500)")
    p.add_argument("--repeat", type=int, default=7, help="timed reads per query (median)")
    p.add_argument("--seed", type=int, default=20260301)
    p.add_argument(
        "--long-series", type=int, default=0, help="points of one more series, for the reads"
    )
    add_service_args(p, timeout=1800, timeout_help="projection time limit, s (default 1800)")
    args = parse_with_tiny(p, TINY, argv)
    service_defaults(args)
    if args.keys < 1 or args.points < args.keys or args.points_per_event < args.keys:
        print("--points and --points-per-event must be at least --keys", file=sys.stderr)
        return 2
    return run_bench(measure, args, cancel_on_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for tests that drive the real pipeline: event builders, projector runs, table dumps."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from studbook_server.adapters import postgres
from studbook_server.config import Settings
from studbook_server.domain import attestation
from studbook_server.projector import KafkaProjector

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(days: float = 0, hours: float = 0) -> str:
    return (T0 + timedelta(days=days, hours=hours)).isoformat().replace("+00:00", "Z")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def ev(
    type: str,
    subject: str,
    payload: dict[str, Any],
    *,
    when: str | None = None,
    project: str = "churn",
    actor: str = "alice",
    version: int | None = None,
) -> dict[str, Any]:
    """A wire event with a fresh event id."""
    return {
        "event_id": str(uuid.uuid4()),
        "type": type,
        "schema_version": version or (2 if type == "run.started" else 1),
        "occurred_at": when or at(),
        "actor": actor,
        "project": project,
        "subject": subject,
        "payload": payload,
        "producer": {"name": "tests", "version": "1"},
    }


def scenario() -> list[dict[str, Any]]:
    """One history touching every event type: data -> runs -> models -> aliases -> deployments."""
    r1, r2, r3 = "run-1", "run-2", "run-3"
    e: list[dict[str, Any]] = [
        ev("project.created", "project:churn", {"description": "Churn models"}, when=at(0)),
        ev("dataset.created", "dataset:events", {"name": "events", "uri": "s3://d/events"}, when=at(0)),
        ev("dataset.version.created", "dataset:events",
           {"version": "v1", "uri": "s3://d/events/1", "digest": digest("e1"), "size_bytes": 10,
            "row_count": 100, "schema": [{"name": "user", "type": "string"}]}, when=at(1)),
        ev("dataset.version.created", "dataset:features",
           {"version": "f1", "uri": "s3://d/features/1", "digest": digest("f1"),
            "parents": [{"dataset": "events", "version": "v1"}], "produced_by_run": "prep-1"},
           when=at(1, 2)),
        ev("run.started", f"run:{r1}",
           {"name": "baseline", "experiment": "xgb",
            "code": {"git_repo": "git@x:churn.git", "git_commit": "abc1234", "git_dirty": False},
            "environment": {"python_version": "3.11.7", "host": "gpu-1"}}, when=at(2)),
        ev("run.params.logged", f"run:{r1}", {"params": {"lr": 0.1, "depth": 6}}, when=at(2)),
        ev("run.input.used", f"run:{r1}", {"dataset": "features", "version": "f1", "role": "train"},
           when=at(2)),
        ev("run.metrics.logged", f"run:{r1}",
           {"metrics": [{"key": "loss", "value": 1.0 / (s + 1), "step": s} for s in range(10)]},
           when=at(2, 1)),
        ev("run.tags.set", f"run:{r1}", {"tags": {"team": "growth", "tmp": "x"}}, when=at(2, 1)),
        ev("run.tags.set", f"run:{r1}", {"tags": {"tmp": None}}, when=at(2, 1)),
        ev("run.output.produced", f"run:{r1}", {"uri": "s3://m/r1.pkl", "digest": digest("m1")},
           when=at(2, 2)),
        ev("run.finished", f"run:{r1}", {"status": "completed"}, when=at(2, 3)),
        # A v1 run.started (host at the top level): upcast on read.
        ev("run.started", f"run:{r2}", {"name": "deeper", "host": "gpu-2"}, when=at(3), version=1),
        ev("run.params.logged", f"run:{r2}", {"params": {"lr": 0.05, "depth": 8}}, when=at(3)),
        ev("run.input.used", f"run:{r2}", {"dataset": "features", "version": "f1", "role": "train"},
           when=at(3)),
        ev("run.metrics.logged", f"run:{r2}",
           {"metrics": [{"key": "loss", "value": 0.5 - s / 100, "step": s} for s in range(5)]},
           when=at(3, 1)),
        ev("run.finished", f"run:{r2}", {"status": "completed"}, when=at(3, 2)),
        ev("run.started", f"run:{r3}", {"name": "broken"}, when=at(4)),
        ev("run.finished", f"run:{r3}",
           {"status": "failed", "error": {"type": "ValueError", "message": "bad shape"}},
           when=at(4, 1)),
        ev("model.created", "model:churn-clf", {"name": "churn-clf"}, when=at(2)),
        ev("model.version.registered", "model:churn-clf",
           {"run": r1, "artifact_uri": "s3://m/r1.pkl", "framework": "xgboost"}, when=at(2, 4)),
        ev("model.version.registered", "model:churn-clf",
           {"run": r2, "artifact_uri": "s3://m/r2.pkl", "framework": "xgboost"}, when=at(3, 4)),
        ev("model.version.approved", "model:churn-clf", {"version": 1, "comment": "ok"},
           when=at(5), actor="bob"),
        ev("model.alias.set", "model:churn-clf", {"alias": "production", "version": 1}, when=at(6)),
        ev("model.version.deployed", "model:churn-clf",
           {"version": 1, "environment": "prod", "target": "k8s/churn"}, when=at(6, 1)),
        ev("model.alias.set", "model:churn-clf", {"alias": "production", "version": 2}, when=at(8)),
        ev("model.version.rejected", "model:churn-clf", {"version": 2, "comment": "regressed"},
           when=at(9), actor="bob"),
        ev("model.alias.set", "model:churn-clf", {"alias": "production", "version": 1}, when=at(10)),
        ev("model.alias.set", "model:churn-clf", {"alias": "staging", "version": 2}, when=at(10)),
        ev("model.alias.removed", "model:churn-clf", {"alias": "staging"}, when=at(11)),
        ev("model.version.undeployed", "model:churn-clf", {"version": 1, "environment": "prod"},
           when=at(12)),
        ev("annotation.added", f"run:{r2}", {"text": "used the wrong split", "labels": {"k": "v"}},
           when=at(12)),
        ev("subject.redacted", f"run:{r1}", {"reason": "GDPR", "fields": ["environment.host"]},
           when=at(13)),
    ]  # fmt: skip
    return e


# Who the test pipelines produce as, when they sign records the way the gateway does.
PIPELINE_SENDER = attestation.Attested("tok-pipeline", "pipeline", frozenset({"write", "approve"}))


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    events: Sequence[dict[str, Any] | bytes],
    *,
    key: bytes | None = None,
) -> None:
    """Produce ``events``; with the store's attestation ``key``, each event carries the
    gateway's signed principal header (PIPELINE_SENDER), as if sent through the gateway."""
    for item in events:
        if isinstance(item, bytes):
            await producer.send(topic, item, key=b"junk")
        else:
            value = orjson.dumps(item)
            headers = attestation.headers(key, value, PIPELINE_SENDER) if key else None
            await producer.send(topic, value, key=item["subject"].encode(), headers=headers)
    await producer.flush()


async def attestation_key(database_url: str) -> bytes:
    """The key the gateway signs principals with, from the store (made on first use)."""
    con = await postgres.connect(database_url)
    try:
        return await postgres.server_key(con, attestation.KEY_NAME)
    finally:
        await con.close()


def settings_for(database_url: str, bootstrap: str, topic: str, group: str, **kw: Any) -> Settings:
    base = {
        "database_url": database_url,
        "kafka_bootstrap": bootstrap,
        "events_topic": topic,
        "consumer_group": group,
        "batch_max_records": 500,
        "batch_timeout_ms": 100,
        "log_level": "INFO",
    }
    base.update(kw)
    return Settings(**base)


async def migrated(database_url: str) -> None:
    con = await postgres.connect(database_url)
    try:
        await postgres.migrate(con)
    finally:
        await con.close()


async def wait_consumed(
    database_url: str, group: str, topic: str, total: int, limit_s: float = 60
) -> None:
    """Wait until the stored offsets of ``group`` cover ``total`` records of ``topic``."""
    con = await asyncpg.connect(database_url)
    try:
        deadline = asyncio.get_running_loop().time() + limit_s
        while True:
            done = await con.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
                group, topic,
            )  # fmt: skip
            if done >= total:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"projector consumed {done} of {total} records in {limit_s}s")
            await asyncio.sleep(0.1)
    finally:
        await con.close()


async def project_all(settings: Settings, total: int, projectors: int = 1) -> list[KafkaProjector]:
    """Run ``projectors`` KafkaProjectors in one group until ``total`` records are stored."""
    pool = await postgres.create_pool(settings.database_url, max_size=2 * projectors + 1)
    runners = [KafkaProjector(settings, pool, name=f"projector-{i}") for i in range(projectors)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    waiter = asyncio.create_task(
        wait_consumed(settings.database_url, settings.consumer_group, settings.events_topic, total)
    )
    try:
        # A projector that dies must fail the test now, not after the wait's timeout.
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
        assert waiter in done, "a projector stopped before consuming everything"
    finally:
        waiter.cancel()
        for r in runners:
            r.stop()
        await asyncio.gather(*tasks)
        await pool.close()
    return runners


# Columns whose values depend on when and in which batch the store received an event, not on the
# events themselves. Dropped when comparing read models built in different databases.
ARRIVAL_COLUMNS = frozenset(
    {"recorded_at", "recorded_from", "recorded_to", "position", "created_position", "part"}
    # rm.metric_chunks: the store positions of a chunk's points; a series' id follows the store
    # order of its first point (rm.metric_series.id, rm.metric_chunks.series_id)
    | {"positions", "position_min", "position_max", "id", "series_id"}
)


async def dump_read_models(
    database_url: str, *, schema: str = "rm", drop: frozenset[str] = frozenset()
) -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model table's rows, as sorted tuples (optionally without some columns)."""
    con = await postgres.connect(database_url)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        tables = await con.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema
        )
        for (table,) in tables:
            cols = [
                r[0]
                for r in await con.fetch(
                    """SELECT column_name FROM information_schema.columns
                       WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position""",
                    schema,
                    table,
                )
                if r[0] not in drop
            ]
            if table == "checkpoint" and drop:
                continue
            select = ", ".join(f'"{c}"' for c in cols)
            rows = await con.fetch(f'SELECT {select} FROM {schema}."{table}"')
            out[table] = sorted(
                tuple(orjson.dumps(v, default=str).decode() for v in r) for r in rows
            )
        return out
    finally:
        await con.close()


def assert_same_read_models(
    left: dict[str, list[tuple[Any, ...]]], right: dict[str, list[tuple[Any, ...]]]
) -> None:
    """Table-by-table equality with a message that shows the differing rows."""
    assert sorted(left) == sorted(right)
    for table in left:
        only_left = sorted(set(left[table]) - set(right[table]))
        only_right = sorted(set(right[table]) - set(left[table]))
        assert left[table] == right[table], (
            f"{table}: only left {only_left[:5]}; only right {only_right[:5]}"
        )

"""The write path against real Kafka and PostgreSQL: events in, read models out, effectively once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaProducer

from studbook_server.adapters import postgres
from tests.conftest import Services
from tests.support import (
    migrated,
    produce,
    project_all,
    scenario,
    settings_for,
)

Factory = Callable[..., Coroutine[Any, Any, str]]


async def _pipeline(
    services: Services,
    database_factory: Factory,
    topic_factory: Factory,
    producer: AIOKafkaProducer,
    events: list[dict[str, Any] | bytes],
    *,
    projectors: int = 1,
    batch: int = 500,
) -> str:
    """Fresh database and topic; produce ``events``; project them all; return the database URL."""
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=4)
    await produce(producer, topic, events)
    settings = settings_for(
        url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}", batch_max_records=batch
    )
    await project_all(settings, len(events), projectors=projectors)
    return url


async def test_scenario_produces_expected_read_models(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, scenario())
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.events") == len(scenario())
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        project = await con.fetchrow("SELECT * FROM projects")
        assert (project["project"], project["description"]) == ("churn", "Churn models")

        runs = {r["run_id"]: r for r in await con.fetch("SELECT * FROM runs")}
        assert {k: r["status"] for k, r in runs.items()} == {
            "run-1": "completed", "run-2": "completed", "run-3": "failed"
        }  # fmt: skip
        assert runs["run-1"]["git_commit"] == "abc1234"
        assert runs["run-1"]["experiment"] == "xgb"
        # run-1's host was redacted; run-2's v1 top-level host was upcast into environment.
        assert runs["run-1"]["environment"] == {"python_version": "3.11.7"}
        assert runs["run-2"]["environment"] == {"host": "gpu-2"}
        assert runs["run-3"]["error"] == {"type": "ValueError", "message": "bad shape"}

        params = await con.fetch("SELECT run_id, key, value FROM run_params ORDER BY 1, 2")
        assert [tuple(p) for p in params] == [
            ("run-1", "depth", 6), ("run-1", "lr", 0.1), ("run-2", "depth", 8), ("run-2", "lr", 0.05)
        ]  # fmt: skip
        tags = await con.fetch("SELECT run_id, key, value FROM run_tags")
        assert [tuple(t) for t in tags] == [("run-1", "team", "growth")]

        assert await con.fetchval("SELECT count(*) FROM run_metric_points") == 15
        m = await con.fetchrow("SELECT * FROM run_metrics WHERE run_id = 'run-1' AND key = 'loss'")
        assert (m["step"], m["value"], m["min_value"], m["max_value"], m["points"]) == (
            9, 0.1, 0.1, 1.0, 10
        )  # fmt: skip

        versions = await con.fetch(
            "SELECT dataset, version, number, parents FROM dataset_versions ORDER BY 1"
        )
        assert [tuple(v) for v in versions] == [
            ("events", "v1", 1, []), ("features", "f1", 1, [{"dataset": "events", "version": "v1"}])
        ]  # fmt: skip
        datasets = {r["name"]: r["uri"] for r in await con.fetch("SELECT name, uri FROM datasets")}
        assert datasets == {"events": "s3://d/events", "features": None}

        mv = await con.fetch("SELECT number, run_id FROM model_versions ORDER BY number")
        assert [tuple(r) for r in mv] == [(1, "run-1"), (2, "run-2")]
        approvals = await con.fetch(
            "SELECT version, decision, reviewer FROM approvals ORDER BY version"
        )
        assert [tuple(a) for a in approvals] == [(1, "approved", "bob"), (2, "rejected", "bob")]

        edges = {
            tuple(r) for r in await con.fetch("SELECT edge_type, src, dst, role FROM lineage_edges")
        }
        assert edges == {
            ("derived", "dataset_version:events@v1", "dataset_version:features@f1", None),
            ("output", "run:prep-1", "dataset_version:features@f1", None),
            ("input", "dataset_version:features@f1", "run:run-1", "train"),
            ("input", "dataset_version:features@f1", "run:run-2", "train"),
            ("trained", "run:run-1", "model_version:churn-clf@1", None),
            ("trained", "run:run-2", "model_version:churn-clf@2", None),
        }
    finally:
        await con.close()

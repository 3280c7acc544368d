"""The write path against real Kafka and PostgreSQL: events in, read models out, effectively once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from studbook_server import integrity
from studbook_server.adapters import postgres
from studbook_server.adapters.readmodels import catch_up
from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import StoredPrincipal
from studbook_server.errors import ChainBroken
from studbook_server.projector import KafkaProjector
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import (
    ARRIVAL_COLUMNS,
    PIPELINE_SENDER,
    assert_same_read_models,
    at,
    attestation_key,
    digest,
    dump_read_models,
    ev,
    migrated,
    produce,
    project_all,
    scenario,
    settings_for,
    wait_consumed,
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
    await produce(producer, topic, events, key=await attestation_key(url))
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

        assert await con.fetchval("SELECT sum(n) FROM metric_chunks") == 15
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
            "SELECT version, decision, reviewer, reviewer_id, claimed_by FROM approvals "
            "ORDER BY version"
        )
        # The reviewer is the sender the gateway attested; the event's `actor` is only a claim.
        assert [tuple(a) for a in approvals] == [
            (1, "approved", "pipeline", "tok-pipeline", "bob"),
            (2, "rejected", "pipeline", "tok-pipeline", "bob"),
        ]

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


async def test_sending_every_event_twice_changes_nothing(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    events = scenario()
    once = await _pipeline(services, database_factory, topic_factory, kafka_producer, events)
    # Twice, and the second copy of each in a separate later batch too.
    twice = await _pipeline(
        services, database_factory, topic_factory, kafka_producer, [*events, *events], batch=7
    )
    assert_same_read_models(
        await dump_read_models(twice, drop=ARRIVAL_COLUMNS),
        await dump_read_models(once, drop=ARRIVAL_COLUMNS),
    )
    con = await postgres.connect(twice)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.events") == len(events)
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
    finally:
        await con.close()


async def test_references_to_subjects_not_seen_yet_resolve_when_they_arrive(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    # The run uses a dataset version and produces a model before either subject's events exist.
    early = [
        ev("run.started", "run:r-early", {"name": "eager"}),
        ev("run.input.used", "run:r-early", {"dataset": "late", "version": "v9", "role": "test"}),
        ev("model.version.registered", "model:m", {"run": "r-early", "artifact_uri": "s3://m"}),
    ]
    late = [
        ev("dataset.version.created", "dataset:late",
           {"version": "v9", "uri": "s3://late", "digest": digest("late")}),
    ]  # fmt: skip
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, early + late)
    con = await postgres.connect(url)
    try:
        resolved = await con.fetch(
            """SELECT e.edge_type, dv.digest FROM lineage_edges e
               JOIN dataset_versions dv ON e.src = 'dataset_version:' || dv.dataset || '@' || dv.version
               WHERE e.dst = 'run:r-early'"""
        )
        assert [tuple(r) for r in resolved] == [("input", digest("late"))]
        trained = await con.fetchval(
            "SELECT count(*) FROM lineage_edges e JOIN runs r ON e.src = 'run:' || r.run_id "
            "WHERE e.edge_type = 'trained'"
        )
        assert trained == 1
    finally:
        await con.close()


async def test_poison_events_are_dead_lettered_and_the_rest_applied(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    bad_metric = ev("run.metrics.logged", "run:p", {"metrics": [{"key": "loss", "value": "high"}]})
    unknown_version = ev("model.alias.set", "model:m", {"alias": "production", "version": 3})
    nul = ev("annotation.added", "run:p", {"text": "a\u0000b"})
    events: list[dict[str, Any] | bytes] = [
        ev("run.started", "run:p", {"name": "poisoned"}),
        b"{not json",
        bad_metric,
        unknown_version,
        nul,
        ev("run.metrics.logged", "run:p", {"metrics": [{"key": "loss", "value": 0.5, "step": 1}]}),
        ev("run.finished", "run:p", {"status": "completed"}),
        # A JSON null is a parameter value like any other.
        ev("run.params.logged", "run:p", {"params": {"note": None, "lr": 0.1}}),
        # A backslash followed by "u0000" is text, not a NUL: it must be applied.
        ev("annotation.added", "run:p", {"text": "C:\\u0000dir"}),
    ]
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, events)
    con = await postgres.connect(url)
    try:
        dead = await con.fetch(
            "SELECT event_id, position, source, reason, raw FROM public.dead_letters ORDER BY id"
        )
        reasons = {d["event_id"]: d["reason"] for d in dead}
        assert len(dead) == 4
        assert any(
            d["event_id"] is None and "not valid JSON" in d["reason"] and d["raw"] == b"{not json"
            for d in dead
        )
        assert "/payload/metrics/0/value" in reasons[bad_metric["event_id"]]
        assert "NUL" in reasons[nul["event_id"]]
        assert "version 3" in reasons[unknown_version["event_id"]]
        # The semantically rejected event is stored (it was claimed) and points at its position.
        stored = next(d for d in dead if d["event_id"] == unknown_version["event_id"])
        assert stored["position"] is not None
        assert stored["source"] == "store"
        run = await con.fetchrow("SELECT status FROM runs WHERE run_id = 'p'")
        assert run["status"] == "completed"
        assert await con.fetchval("SELECT value FROM run_metrics WHERE run_id = 'p'") == 0.5
        assert await con.fetchval("SELECT text FROM annotations") == "C:\\u0000dir"
        params = await con.fetch(
            "SELECT key, value FROM run_params WHERE run_id = 'p' ORDER BY key"
        )
        assert [tuple(p) for p in params] == [("lr", 0.1), ("note", None)]
    finally:
        await con.close()


async def test_verify_passes_then_names_the_edited_position(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, scenario())
    con = await postgres.connect(url)
    try:
        report = await integrity.verify(con)
        assert report.checked == len(scenario())
        assert report.redacted >= 1  # the scenario's redaction erased run-1's host
        await con.execute(
            """UPDATE public.events SET payload = jsonb_set(payload, '{status}', '"failed"')
               WHERE position = (SELECT position FROM public.events WHERE type = 'run.finished'
                                 ORDER BY position LIMIT 1 OFFSET 1)"""
        )
        edited = await con.fetchval(
            "SELECT position FROM public.events WHERE type = 'run.finished' ORDER BY position LIMIT 1 OFFSET 1"
        )
        with pytest.raises(ChainBroken) as broken:
            await integrity.verify(con)
        assert broken.value.position == edited
        assert f"position {edited}" in str(broken.value)
    finally:
        await con.close()


async def test_rebuild_equals_the_incremental_read_models(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await _pipeline(
        services, database_factory, topic_factory, kafka_producer, scenario(), batch=5
    )
    before = await dump_read_models(url)
    seen: list[tuple[int, int]] = []
    replayed = await rebuild(url, batch=4, progress=lambda done, total: seen.append((done, total)))
    assert replayed == len(scenario())
    assert seen
    assert seen[-1][0] == len(scenario())
    assert await dump_read_models(url) == before
    con = await postgres.connect(url)
    try:
        schemas = {
            r[0]
            for r in await con.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rm%'")
        }
        assert schemas == {"rm"}
    finally:
        await con.close()


async def test_two_projectors_in_one_group_equal_one(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    events: list[dict[str, Any] | bytes] = list(scenario())
    for i in range(40):
        run = f"run:bulk-{i}"
        events += [
            ev("run.started", run, {"name": f"bulk {i}"}, when=at(20, i)),
            ev("run.metrics.logged", run,
               {"metrics": [{"key": "acc", "value": i + s / 10, "step": s} for s in range(20)]}),
            ev("run.finished", run, {"status": "completed"}, when=at(21, i)),
        ]  # fmt: skip
    one = await _pipeline(
        services, database_factory, topic_factory, kafka_producer, events, batch=20
    )
    two = await _pipeline(
        services, database_factory, topic_factory, kafka_producer, events, projectors=2, batch=20
    )
    assert_same_read_models(
        await dump_read_models(two, drop=ARRIVAL_COLUMNS),
        await dump_read_models(one, drop=ARRIVAL_COLUMNS),
    )


async def test_two_projectors_split_the_partitions(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group, batch_max_records=10)
    pool = await postgres.create_pool(url, max_size=4)
    runners = [KafkaProjector(settings, pool, name=f"p{i}") for i in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        for _ in range(200):  # both members joined and hold partitions
            if all(r.consumer.assignment() for r in runners):
                break
            await asyncio.sleep(0.1)
        owned = [{tp.partition for tp in r.consumer.assignment()} for r in runners]
        assert owned[0], owned
        assert owned[1], owned
        assert not owned[0] & owned[1], owned
        assert owned[0] | owned[1] == {0, 1, 2, 3}
        events = [ev("run.started", f"run:s-{i}", {"name": str(i)}) for i in range(200)]
        await produce(kafka_producer, topic, events)
        await wait_consumed(url, group, topic, len(events))
    finally:
        for r in runners:
            r.stop()
        await asyncio.gather(*tasks)
        await pool.close()
    assert [r.stats.appended > 0 for r in runners] == [True, True]
    assert sum(r.stats.appended for r in runners) == len(events)


async def test_embedded_store_events_are_projected_the_same(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    events = scenario()
    via_kafka = await _pipeline(services, database_factory, topic_factory, kafka_producer, events)
    embedded = await database_factory()
    await migrated(embedded)
    con = await postgres.connect(embedded)
    try:
        sender = StoredPrincipal(PIPELINE_SENDER.token_id, PIPELINE_SENDER.name)
        incoming = [
            postgres.Incoming(e, event_from_dict(orjson.loads(orjson.dumps(e))), principal=sender)
            for e in events
        ]
        async with con.transaction():
            stored = await postgres.append(con, incoming)
        assert [s.position for s in stored] == list(range(1, len(incoming) + 1))
        assert await catch_up(con, batch=3) == len(incoming)
        assert await catch_up(con, batch=3) == 0
    finally:
        await con.close()
    assert_same_read_models(
        await dump_read_models(embedded, drop=ARRIVAL_COLUMNS),
        await dump_read_models(via_kafka, drop=ARRIVAL_COLUMNS),
    )


async def test_migrations_are_recorded_and_not_reapplied(database_factory: Factory) -> None:
    url = await database_factory()
    con = await postgres.connect(url)
    try:
        first = await postgres.migrate(con)
        second = await postgres.migrate(con)
        recorded = [
            r[0] for r in await con.fetch("SELECT version FROM public.schema_migrations ORDER BY 1")
        ]
    finally:
        await con.close()
    assert first == recorded == [v for v, _ in postgres.migration_files()]
    assert second == []


async def test_unreachable_database_fails_with_a_clear_error() -> None:
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await postgres.connect("postgresql://postgres@127.0.0.1:1/none")


async def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_applied(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    """A valid event whose rows PostgreSQL refuses (here: a CHECK constraint the test adds)
    must not stop the projector, nor stop it again after a restart."""
    url = await database_factory()
    await migrated(url)
    con = await postgres.connect(url)
    try:
        await con.execute("ALTER TABLE rm.runs ADD CONSTRAINT no_evil CHECK (name <> 'evil')")
    finally:
        await con.close()
    topic = await topic_factory(partitions=1)
    evil = ev("run.started", "run:evil", {"name": "evil"})
    events = [
        ev("run.started", "run:before", {"name": "before"}),
        evil,
        ev("run.started", "run:after", {"name": "after"}),
    ]
    await produce(kafka_producer, topic, events)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    await project_all(settings, len(events))
    con = await postgres.connect(url)
    try:
        assert {r[0] for r in await con.fetch("SELECT run_id FROM runs")} == {"before", "after"}
        dead = await con.fetchrow(
            "SELECT event_id, source, reason, position FROM public.dead_letters"
        )
        assert dead["event_id"] == evil["event_id"]
        assert "no_evil" in dead["reason"]
        assert dead["source"].startswith(f"kafka:{topic}/0@")
        # The refused event is kept in the store as claimed, and the dead letter points at it.
        assert await con.fetchval("SELECT count(*) FROM public.events") == 3
        stored = await con.fetchval(
            "SELECT event_id::text FROM public.events WHERE position = $1", dead["position"]
        )
        assert stored == evil["event_id"]
        assert await con.fetchval("SELECT sum(next_offset) FROM public.consumer_offsets") == 3
    finally:
        await con.close()

    # The embedded tailer has the same safety net: the stored event is dead-lettered by position.
    embedded = await database_factory()
    await migrated(embedded)
    con = await postgres.connect(embedded)
    try:
        await con.execute("ALTER TABLE rm.runs ADD CONSTRAINT no_evil CHECK (name <> 'evil')")
        incoming = [
            postgres.Incoming(e, event_from_dict(orjson.loads(orjson.dumps(e)))) for e in events
        ]
        async with con.transaction():
            await postgres.append(con, incoming)
        assert await catch_up(con) == 3
        assert await con.fetchval("SELECT position FROM checkpoint") == 3
        assert await con.fetchval("SELECT position FROM public.dead_letters") == 2
        assert await con.fetchval("SELECT count(*) FROM runs") == 2
    finally:
        await con.close()


async def test_a_restarted_projector_resumes_at_stored_offsets_without_redoing_work(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=2)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    first: list[dict[str, Any] | bytes] = [
        b"not json",
        *(ev("run.started", f"run:a{i}", {"name": "a"}) for i in range(20)),
    ]
    await produce(kafka_producer, topic, first)
    [one] = await project_all(settings, len(first))
    assert (one.stats.records, one.stats.duplicates) == (len(first), 0)

    more = [ev("run.started", f"run:b{i}", {"name": "b"}) for i in range(5)]
    await produce(kafka_producer, topic, more)
    [two] = await project_all(settings, len(first) + len(more))
    # Only the new records were read again: nothing re-applied, nothing dead-lettered twice.
    assert (two.stats.records, two.stats.duplicates, two.stats.dead_letters) == (len(more), 0, 0)
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 1
        assert await con.fetchval("SELECT count(*) FROM public.events") == 25
    finally:
        await con.close()


async def test_numbers_jsonb_rewrites_still_verify_and_rebuild_the_same(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    odd = [
        {"key": "m", "value": v, "step": i} for i, v in enumerate([-0.0, 1e16, 3.4e38, 1e-7, 2.5])
    ]
    events = [
        ev("run.started", "run:odd", {"name": "odd numbers"}),
        ev("run.metrics.logged", "run:odd", {"metrics": odd}),
        ev("run.params.logged", "run:odd", {"params": {"big": 1.8e19, "zero": -0.0}}),
    ]
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, events)
    con = await postgres.connect(url)
    try:
        assert (await integrity.verify(con)).checked == 3
    finally:
        await con.close()
    before = await dump_read_models(url)
    await rebuild(url)
    assert_same_read_models(await dump_read_models(url), before)


async def test_redacting_a_field_the_history_needs_is_refused_and_the_rest_goes_on(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    events: list[dict[str, Any] | bytes] = [
        ev("run.started", "run:r", {"name": "kept", "environment": {"host": "gpu-7"}}),
        ev("subject.redacted", "run:r", {"reason": "oops", "fields": ["name"]}),
        ev("subject.redacted", "run:r", {"reason": "GDPR", "fields": ["environment.host"]}),
        # A record whose event_id is not an id (with a NUL, even): dead-lettered, not fatal.
        orjson.dumps({"event_id": "bad\u0000id", "type": "run.started"}),
        ev("run.finished", "run:r", {"status": "completed"}),
    ]
    url = await _pipeline(services, database_factory, topic_factory, kafka_producer, events)
    con = await postgres.connect(url)
    try:
        run = await con.fetchrow("SELECT name, status, environment FROM runs WHERE run_id = 'r'")
        assert (run["name"], run["status"], run["environment"]) == ("kept", "completed", {})
        reasons = [
            r[0] for r in await con.fetch("SELECT reason FROM public.dead_letters ORDER BY id")
        ]
        assert len(reasons) == 2
        assert any("may not erase name" in r for r in reasons)
        assert any("invalid event" in r for r in reasons)
        assert (await integrity.verify(con)).checked == 4
    finally:
        await con.close()
    before = await dump_read_models(url)
    await rebuild(url)
    assert_same_read_models(await dump_read_models(url), before)

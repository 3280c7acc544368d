"""Trustworthy history, against the real Kafka and PostgreSQL: identity is the server's fact,
decisions need the `approve` scope, the chain and its seals name every tamper, no single event
stops or skews projection, and redaction keeps the history whole."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from studbook_server import auth, integrity
from studbook_server.adapters import postgres, readmodels
from studbook_server.adapters.readmodels import catch_up
from studbook_server.domain import attestation, chain
from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import StoredPrincipal
from studbook_server.errors import ChainBroken, ConfigError
from studbook_server.http import build_app
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import (
    ARRIVAL_COLUMNS,
    at,
    digest,
    dump_read_models,
    ev,
    migrated,
    produce,
    project_all,
    scenario,
    settings_for,
)

Factory = Callable[..., Coroutine[Any, Any, str]]
FORGED = "security-lead@corp"


async def _tokens(url: str) -> dict[str, tuple[str, str]]:
    con = await postgres.connect(url)
    try:
        return {
            "trainer": await auth.create_token(con, "trainer", ["read", "write"], ["churn"]),
            "reviewer": await auth.create_token(con, "reviewer", ["read", "approve"], ["churn"]),
            "admin": await auth.create_token(con, "admin", ["admin"], ["*"]),
        }
    finally:
        await con.close()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_identity_is_the_tokens_and_a_write_token_cannot_approve(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    tokens = await _tokens(url)
    topic = await topic_factory(partitions=2)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    registered = [
        ev("run.started", "run:r1", {"name": "train"}, actor=FORGED),
        ev("model.version.registered", "model:m", {"run": "r1", "artifact_uri": "s3://m/1"}),
    ]
    # The forged approval of the issue: a claimed approver and a back-dated time.
    forged = ev("model.version.approved", "model:m", {"version": 1}, actor=FORGED, when=at(0))
    with TestClient(build_app("ingest", settings)) as client:
        r = client.post("/v1/events", json=registered, headers=_bearer(tokens["trainer"][1]))
        assert r.status_code == 202, r.text
        r = client.post("/v1/events", json=[forged], headers=_bearer(tokens["trainer"][1]))
        assert r.status_code == 403
        assert r.json()["error"] == (
            "token `trainer` lacks the `approve` scope needed to send `model.version.approved` "
            "(event 0)"
        )
        # The refused event is named, so the SDK reports it instead of holding back the rest.
        assert [(e["index"], e["path"]) for e in r.json()["errors"]] == [(0, "/type")]
        r = client.post("/v1/events", json=registered, headers=_bearer(tokens["reviewer"][1]))
        assert r.status_code == 403  # an `approve` token cannot train
        r = client.post("/v1/events", json=[forged], headers=_bearer(tokens["reviewer"][1]))
        assert r.status_code == 202, r.text
    # Straight to Kafka, without the gateway: an unsigned approval and one with a forged header.
    unsigned = ev("model.version.approved", "model:m", {"version": 1}, actor=FORGED)
    faked = ev("model.version.approved", "model:m", {"version": 1}, actor=FORGED)
    value = orjson.dumps(faked)
    wrong_key = attestation.headers(
        b"k" * 32, value, attestation.Attested("x", FORGED, frozenset({"approve"}))
    )
    await kafka_producer.send(topic, orjson.dumps(unsigned), key=b"model:m")
    await kafka_producer.send(topic, value, key=b"model:m", headers=wrong_key)
    note = ev("annotation.added", "run:r1", {"text": "from a kafka:// client"}, actor=FORGED)
    await produce(kafka_producer, topic, [note])
    await project_all(settings, 6)

    con = await postgres.connect(url)
    try:
        rows = {
            r["event_id"]: r
            for r in await con.fetch(
                "SELECT event_id::text, principal_id, principal, actor FROM public.events"
            )
        }
        assert {k: (r["principal_id"], r["principal"], r["actor"]) for k, r in rows.items()} == {
            registered[0]["event_id"]: (tokens["trainer"][0], "trainer", FORGED),
            registered[1]["event_id"]: (tokens["trainer"][0], "trainer", "alice"),
            forged["event_id"]: (tokens["reviewer"][0], "reviewer", FORGED),
            note["event_id"]: (None, None, FORGED),
        }
        reasons = [r["reason"] for r in await con.fetch("SELECT reason FROM public.dead_letters")]
        assert len(reasons) == 2
        assert all("needs a sender authenticated with the `approve` scope" in r for r in reasons)
        assert (await integrity.verify(con)).checked == 4
        # The chain covers the principal: naming someone else breaks it at that row.
        position = await con.fetchval(
            "SELECT position FROM public.events WHERE event_id = $1", uuid.UUID(forged["event_id"])
        )
        await con.execute(
            "UPDATE public.events SET principal = $2 WHERE position = $1", position, FORGED
        )
        with pytest.raises(ChainBroken) as broken:
            await integrity.verify(con)
        assert broken.value.position == position
        await con.execute(
            "UPDATE public.events SET principal = 'reviewer' WHERE position = $1", position
        )
    finally:
        await con.close()

    with TestClient(build_app("api", settings)) as client:
        answer = client.post(
            "/graphql",
            json={
                "query": """{
                trail: auditTrail(filter: {project: "churn"}) {
                    nodes { type actor principalId claimedActor } }
                mv: modelVersion(id: "churn/model_version:m@1") {
                    approved registeredBy
                    approvals { reviewer claimedReviewer backdated decidedAt recordedAt } }
                byClaim: auditTrail(filter: {claimedActor: "security-lead@corp"}) { nodes { type } }
            }"""
            },
            headers=_bearer(tokens["admin"][1]),
        ).json()
    assert "errors" not in answer, answer
    data = answer["data"]
    assert [(n["type"], n["actor"], n["claimedActor"]) for n in data["trail"]["nodes"]] == [
        ("run.started", "trainer", FORGED),
        ("model.version.registered", "trainer", "alice"),
        ("model.version.approved", "reviewer", FORGED),
        ("annotation.added", f"unverified:{FORGED}", FORGED),
    ]
    assert data["trail"]["nodes"][2]["principalId"] == tokens["reviewer"][0]
    assert data["trail"]["nodes"][3]["principalId"] is None
    assert data["mv"]["registeredBy"] == "trainer"
    [approval] = data["mv"]["approvals"]
    assert (approval["reviewer"], approval["claimedReviewer"]) == ("reviewer", FORGED)
    assert approval["backdated"] is True  # it claims a time months before it was recorded
    assert [n["type"] for n in data["byClaim"]["nodes"]] == [
        "run.started", "model.version.approved", "annotation.added"
    ]  # fmt: skip


async def test_four_eyes_refuses_the_registrants_own_approval(database_factory: Factory) -> None:
    url = await database_factory()
    settings = settings_for(
        url, "", "unused", "unused", kafka_bootstrap=None, four_eyes_projects=frozenset({"churn"})
    )
    with TestClient(build_app("up", settings)) as client:
        tokens = await _tokens(url)
        admin, reviewer = _bearer(tokens["admin"][1]), _bearer(tokens["reviewer"][1])
        registered = ev("model.version.registered", "model:m", {"artifact_uri": "s3://m/1"})
        r = client.post("/v1/events", json=[registered], headers=admin)
        assert r.status_code == 202, r.text
        for _ in range(100):
            mv = client.post(
                "/graphql", json={"query": '{ modelVersion(id: "churn/model_version:m@1") { number } }'},
                headers=admin,
            ).json()["data"]["modelVersion"]  # fmt: skip
            if mv:
                break
            await asyncio.sleep(0.05)
        own = ev("model.version.approved", "model:m", {"version": 1})
        r = client.post("/v1/events", json=[own], headers=admin)
        assert r.status_code == 403
        assert r.json()["error"].startswith("four eyes: token `admin` registered `m` version 1")
        r = client.post(
            "/graphql",
            json={
                "query": 'mutation { approve(modelVersion: "churn/model_version:m@1") { eventId } }'
            },
            headers=admin,
        ).json()
        assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert "four eyes" in r["errors"][0]["message"]
        r = client.post("/v1/events", json=[own], headers=reviewer)
        assert r.status_code == 202, r.text


async def test_a_time_out_of_range_is_refused_and_never_stops_the_projector(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    tokens = await _tokens(url)
    topic = await topic_factory(partitions=1)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    poison = ev("run.started", "run:old", {"name": "x"}, when="0001-01-01T00:30:00+01:00")
    future = ev("run.started", "run:new", {"name": "x"}, when="2999-01-01T00:00:00Z")
    points = ev(
        "run.metrics.logged", "run:old",
        {"metrics": [{"key": "l", "value": 1, "timestamp": "1969-12-31T23:59:59Z"}]},
    )  # fmt: skip
    with TestClient(build_app("ingest", settings)) as client:
        r = client.post(
            "/v1/events", json=[poison, future, points], headers=_bearer(tokens["admin"][1])
        )
    assert r.status_code == 422
    range_text = "between 1970-01-01T00:00:00Z and one day past the server's clock"
    assert [(e["index"], e["path"]) for e in r.json()["errors"]] == [
        (0, "/occurred_at"), (1, "/occurred_at"), (2, "/payload/metrics/0/timestamp")
    ]  # fmt: skip
    assert all(range_text in e["message"] for e in r.json()["errors"])
    # The embedded gateway answers 422 too (it used to be a 500 that the SDK spooled forever).
    embedded = await database_factory()
    up = settings_for(embedded, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=True)
    with TestClient(build_app("up", up)) as client:
        r = client.post("/v1/events", json=[poison])
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "/occurred_at"
    # Straight to Kafka: the record is a dead letter, the events around it are projected.
    before = ev("run.started", "run:ok-1", {"name": "before"})
    after = ev("run.started", "run:ok-2", {"name": "after"})
    await produce(kafka_producer, topic, [before, poison, points, after])
    [runner] = await project_all(settings, 4)
    assert runner.stats.dead_letters == 2
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM rm.runs WHERE run_id LIKE 'ok-%'") == 2
        reasons = [r[0] for r in await con.fetch("SELECT reason FROM public.dead_letters")]
        assert all(range_text in reason for reason in reasons), reasons
        # Stored times are UTC, whatever offset was sent.
        sent = ev(
            "run.finished", "run:ok-1", {"status": "completed"}, when="2026-03-01T14:00:00+02:00"
        )
        async with con.transaction():
            await postgres.append(con, [postgres.Incoming(sent, event_from_dict(dict(sent)))])
        stamp = await con.fetchval(
            "SELECT occurred_at AT TIME ZONE 'UTC' FROM public.events WHERE type = 'run.finished'"
        )
        assert stamp.isoformat() == "2026-03-01T12:00:00"
    finally:
        await con.close()


# ---------------------------------------------------------------------------------- tamper


async def _sealed_store(
    database_factory: Factory, tmp_path: Path
) -> tuple[str, Path, Path, list[dict[str, Any]]]:
    """A store holding the scenario (with a redaction), projected, sealed at its head."""
    url = await database_factory()
    await migrated(url)
    # Three notes after the scenario's redaction, so the last rows can go without it.
    events = [
        *scenario(),
        *(ev("annotation.added", "run:run-2", {"text": f"n{i}"}) for i in range(3)),
    ]
    who = StoredPrincipal("tok-1", "pipeline")
    con = await postgres.connect(url)
    try:
        async with con.transaction():
            await postgres.append(
                con,
                [
                    postgres.Incoming(
                        e, event_from_dict(orjson.loads(orjson.dumps(e))), principal=who
                    )
                    for e in events
                ],
            )
        await catch_up(con)
        key_path = tmp_path / "seal.pem"
        integrity.create_key(key_path)
        log = tmp_path / "seals.ndjson"
        await integrity.seal(con, integrity.load_private_key(key_path), log)
    finally:
        await con.close()
    return url, key_path, log, events


async def _verify(
    url: str, key_path: Path | None = None, log: Path | None = None
) -> integrity.VerifyReport:
    seals = []
    if key_path is not None and log is not None:
        seals = integrity.read_seals(
            log, integrity.load_public_key(key_path.with_name("seal.pem.pub"))
        )
    con = await postgres.connect(url)
    try:
        return await integrity.verify(con, seals)
    finally:
        await con.close()


async def _broken_at(
    url: str, key_path: Path | None = None, log: Path | None = None
) -> ChainBroken:
    with pytest.raises(ChainBroken) as broken:
        await _verify(url, key_path, log)
    return broken.value


async def _sql(url: str, statement: str, *args: Any) -> Any:
    con = await asyncpg.connect(url)
    try:
        return await con.fetchval(statement, *args)
    finally:
        await con.close()


_POSITION_OF = "SELECT position FROM public.events WHERE type = $1 ORDER BY position LIMIT 1"


async def test_verify_names_the_first_position_of_every_tamper(
    database_factory: Factory, tmp_path: Path
) -> None:
    url, key, log, events = await _sealed_store(database_factory, tmp_path)
    report = await _verify(url, key, log)
    assert (report.checked, report.seals, report.head) == (len(events), 1, len(events))
    assert report.redacted == 1  # run-1's start lost its host, and still verifies

    finished = await _sql(url, _POSITION_OF, "run.finished")
    started = await _sql(url, _POSITION_OF, "run.started")  # the redacted one
    # 1. Edit a payload.
    await _sql(
        url,
        "UPDATE public.events SET payload = jsonb_set(payload, '{status}', '\"failed\"') WHERE position = $1",
        finished,
    )
    assert (await _broken_at(url)).position == finished
    await _sql(
        url,
        "UPDATE public.events SET payload = jsonb_set(payload, '{status}', '\"completed\"') WHERE position = $1",
        finished,
    )
    assert (await _verify(url)).checked == len(events)

    # 2. Edit a payload and claim a redaction did it (the hole of hash version 1).
    await _sql(
        url,
        'UPDATE public.events SET payload = \'{"status": "failed"}\', redacted_by = gen_random_uuid() WHERE position = $1',
        finished,
    )
    broken = await _broken_at(url)
    assert broken.position == finished
    await _sql(
        url,
        'UPDATE public.events SET payload = \'{"status": "completed"}\', redacted_by = NULL WHERE position = $1',
        finished,
    )

    # 3. Erase a field, citing the real redaction, which never named it.
    redaction = await _sql(
        url, "SELECT event_id FROM public.events WHERE type = 'subject.redacted'"
    )
    await _sql(
        url,
        """UPDATE public.events SET payload = payload #- '{code,git_repo}',
                  salts = salts - '/code/git_repo',
                  redacted = redacted || jsonb_build_object('/code/git_repo', jsonb_build_array(repeat('0', 64), $2::text)),
                  redacted_by = $2::uuid
           WHERE position = $1""",
        started, str(redaction),
    )  # fmt: skip
    broken = await _broken_at(url)
    assert broken.position == started
    assert "does not name it" in str(broken)


async def test_verify_names_deleted_swapped_and_truncated_rows(
    database_factory: Factory, tmp_path: Path
) -> None:
    # 4. Delete a row in the middle.
    url, key, log, events = await _sealed_store(database_factory, tmp_path / "a")
    await _sql(url, "DELETE FROM public.events WHERE position = 7")
    broken = await _broken_at(url)
    assert (broken.position, "row is missing" in str(broken)) == (7, True)

    # 5. Swap two rows.
    url, key, log, events = await _sealed_store(database_factory, tmp_path / "b")
    for a, b in ((5, -1), (6, 5), (-1, 6)):
        await _sql(url, "UPDATE public.events SET position = $2 WHERE position = $1", a, b)
    assert (await _broken_at(url)).position == 5

    # 6. Delete the last rows: only a seal shows it.
    url, key, log, events = await _sealed_store(database_factory, tmp_path / "c")
    last = len(events)
    await _sql(url, "DELETE FROM public.events WHERE position > $1", last - 3)
    assert (await _verify(url)).checked == last - 3  # the chain alone cannot tell
    broken = await _broken_at(url, key, log)
    assert broken.position == last - 2
    assert "rows were deleted" in str(broken)

    # Deleting the redaction itself leaves its erasure unexplained.
    await _sql(url, "DELETE FROM public.events WHERE type = 'subject.redacted'")
    broken = await _broken_at(url)
    assert broken.position == await _sql(url, _POSITION_OF, "run.started")
    assert "not by a stored redaction" in str(broken)


async def test_a_recomputed_chain_is_caught_by_the_seal(
    database_factory: Factory, tmp_path: Path
) -> None:
    # 7. Edit a row, then recompute every hash after it, as an attacker with write access can.
    url, key, log, events = await _sealed_store(database_factory, tmp_path)
    finished = await _sql(url, _POSITION_OF, "run.finished")
    con = await postgres.connect(url)
    try:
        await con.execute(
            "UPDATE public.events SET payload = jsonb_set(payload, '{status}', '\"failed\"') WHERE position = $1",
            finished,
        )
        rows = await con.fetch(integrity._VERIFY, 0, 10_000)  # the columns verify reads
        previous = chain.GENESIS
        for r in rows:
            leaves = chain.leaves(r["payload"])
            fields = {k: r[k] for k in integrity._V2_FIELDS}
            content = chain.content_hash_v2(
                **fields,
                payload_commitments=chain.commitments(leaves, r["salts"], r["redacted"] or {}),
            )
            previous = chain.link(previous, content)
            await con.execute(
                "UPDATE public.events SET content_hash = $2, chain_hash = $3 WHERE position = $1",
                r["position"], content, previous,
            )  # fmt: skip
    finally:
        await con.close()
    assert (await _verify(url)).checked == len(events)  # consistent on its own
    broken = await _broken_at(url, key, log)
    assert broken.position == len(events)  # the sealed head no longer matches
    assert "rewritten" in str(broken)

    # The seal log itself cannot be edited or trimmed unnoticed.
    lines = log.read_bytes().splitlines()
    doc = orjson.loads(lines[0])
    doc["chain_hash"] = "00" * 32
    log.write_bytes(orjson.dumps(doc) + b"\n")
    with pytest.raises(ConfigError, match="signature does not match"):
        await _verify(url, key, log)


# ------------------------------------------------------------------------- dead letters


async def test_any_failure_of_one_record_is_its_dead_letter_and_23505_is_not_retried(
    services: Services, database_factory: Factory, topic_factory: Factory,
    kafka_producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url = await database_factory()
    await migrated(url)
    topic = await topic_factory(partitions=1)
    settings = settings_for(url, services.kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    overflow = ev("annotation.added", "run:a", {"text": "raises OverflowError when written"})
    unique = ev("annotation.added", "run:a", {"text": "raises a unique violation when written"})
    fine = [ev("annotation.added", "run:a", {"text": f"fine {i}"}) for i in range(3)]
    write_changes = readmodels.write_changes
    calls: dict[str, int] = {}

    async def faulty(con: postgres.Connection, ch: Any) -> None:
        # Fault injection: the database writer fails for two chosen events, as a bug or a
        # uniqueness mistake would.
        texts = {row[3] for row in ch.annotations}
        for marker, exc in (
            ("OverflowError", OverflowError("date value out of range")),
            ("unique", asyncpg.UniqueViolationError("duplicate key value")),
        ):
            if any(marker in t for t in texts):
                calls[marker] = calls.get(marker, 0) + 1
                raise exc
        await write_changes(con, ch)

    monkeypatch.setattr(readmodels, "write_changes", faulty)
    await produce(kafka_producer, topic, [fine[0], overflow, fine[1], unique, fine[2]])
    [runner] = await asyncio.wait_for(project_all(settings, 5), timeout=60)
    assert runner.stats.dead_letters == 2
    # Once in its batch (if the batch got that far), once alone: then dead-lettered, never
    # retried in a loop (a retried 23505 would never let the projector finish).
    assert calls["OverflowError"] == 2
    assert calls["unique"] in (1, 2)
    con = await postgres.connect(url)
    try:
        letters = {
            r["event_id"]: r["reason"]
            for r in await con.fetch("SELECT event_id, reason FROM public.dead_letters")
        }
        assert set(letters) == {overflow["event_id"], unique["event_id"]}
        assert "OverflowError" in letters[overflow["event_id"]]
        assert "UniqueViolationError" in letters[unique["event_id"]]
        texts = {r[0] for r in await con.fetch("SELECT text FROM rm.annotations")}
        assert texts == {"fine 0", "fine 1", "fine 2"}
    finally:
        await con.close()


# --------------------------------------------------------------------------- redaction


async def test_redaction_refuses_lineage_paths_and_scrubs_dead_letters(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    await migrated(url)
    d = digest("x")
    events = [
        ev("dataset.version.created", "dataset:events", {"version": "v1", "uri": "s3://e/1", "digest": d}),
        ev("dataset.version.created", "dataset:feats",
           {"version": "f1", "uri": "s3://f/1", "digest": digest("f"),
            "parents": [{"dataset": "events", "version": "v1"}]}),
        # Refused by projection (alias of a version that does not exist): a dead letter that
        # carries personal data of the run.
        ev("run.started", "run:r", {"name": "n", "environment": {"host": "alice-laptop"}}),
        ev("model.alias.set", "model:m", {"alias": "a", "version": 9}),
        ev("run.tags.set", "run:r", {"tags": {"owner": "alice"}}),
        ev("subject.redacted", "dataset:feats", {"reason": "bypass", "fields": ["parents.0"]}),
        ev("subject.redacted", "run:r", {"reason": "bypass", "fields": ["metrics.0.value"]}),
        ev("subject.redacted", "run:r", {"reason": "bypass", "fields": ["tags.owner"]}),
        ev("subject.redacted", "run:r", {"reason": "GDPR", "fields": ["environment.host"]}),
    ]  # fmt: skip
    # A dead letter from Kafka about the same run, with the same personal data.
    leaked = ev("run.started", "run:r", {"name": "n", "environment": {"host": "alice-laptop"}})
    con = await postgres.connect(url)
    try:
        await con.execute(
            "INSERT INTO public.dead_letters (event_id, source, reason, raw) VALUES ($1, 'kafka:t/0@1', 'test', $2)",
            leaked["event_id"], orjson.dumps(leaked),
        )  # fmt: skip
        async with con.transaction():
            await postgres.append(
                con,
                [
                    postgres.Incoming(e, event_from_dict(orjson.loads(orjson.dumps(e))))
                    for e in events
                ],
            )
        await catch_up(con)
        reasons = [
            r[0] for r in await con.fetch("SELECT reason FROM public.dead_letters ORDER BY id")
        ]
        refused = [r for r in reasons if "may not erase" in r]
        assert [r.split(" may not erase ")[1].split(":")[0] for r in refused] == [
            "parents.0", "metrics.0.value", "tags.owner"
        ]  # fmt: skip
        raws = [orjson.loads(r[0]) for r in await con.fetch("SELECT raw FROM public.dead_letters")]
        assert b"alice-laptop" not in orjson.dumps(raws)
        assert (
            sum(
                "erased by redaction" in r[0]
                for r in await con.fetch("SELECT reason FROM public.dead_letters")
            )
            == 1
        )
        payload = await con.fetchval("SELECT payload FROM public.events WHERE type = 'run.started'")
        assert payload == {"name": "n", "environment": {}}
        assert (await integrity.verify(con)).redacted == 1
    finally:
        await con.close()
    before = await dump_read_models(url, drop=ARRIVAL_COLUMNS)
    await rebuild(url)
    assert await dump_read_models(url, drop=ARRIVAL_COLUMNS) == before
    # The lineage a bypassing redaction used to erase is still there after the rebuild.
    edge = await _sql(
        url, "SELECT edge_type FROM rm.lineage_edges WHERE src = $1 AND dst = $2",
        "dataset_version:events@v1", "dataset_version:feats@f1",
    )  # fmt: skip
    assert edge == "derived"


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUDBOOK_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "studbook_server.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_seal_and_verify_from_the_command_line(
    database_factory: Factory, tmp_path: Path
) -> None:
    url, _, _, events = await _sealed_store(database_factory, tmp_path / "store")
    key, log = tmp_path / "keys" / "seal.pem", tmp_path / "seals.ndjson"
    made = _cli(url, "seal", "--init-key", "--key", str(key))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert _cli(url, "seal", "--init-key", "--key", str(key)).returncode == 1  # never overwritten
    for _ in range(2):
        sealed = _cli(url, "seal", "--key", str(key), "--log", str(log))
        assert sealed.returncode == 0, sealed.stderr
        assert f"position {len(events)}" in sealed.stdout
    checked = _cli(url, "verify", "--seals", str(log), "--public-key", f"{key}.pub")
    assert checked.returncode == 0, checked.stderr
    assert f"ok, {len(events)} events" in checked.stdout
    assert "2 of 2 seals match" in checked.stdout
    await _sql(url, "DELETE FROM public.events WHERE position = $1", len(events))
    failed = _cli(url, "verify", "--seals", str(log), "--public-key", f"{key}.pub")
    assert failed.returncode == 1
    assert f"position {len(events)}: row is missing" in failed.stderr
    # A truncated store is never sealed over: the earlier seals are checked first.
    refused = _cli(url, "seal", "--key", str(key), "--log", str(log))
    assert refused.returncode == 1
    assert "seal: refused, the chain does not verify" in refused.stderr
    assert len(log.read_bytes().splitlines()) == 2

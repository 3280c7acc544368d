"""OpenLineage in, end to end: the real `openlineage-python` client reports a two-job pipeline to
Studbook, the real SDK trains on the pipeline's output, and GraphQL answers across both, on `up`
(embedded: the event store is the transport) and on the Kafka deployment (`api` + `ingest` +
a projector). Every server is uvicorn on a loopback port, since the client speaks HTTP to a URL.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    documentation_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpCompression,
    HttpConfig,
    HttpTransport,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

import studbook
from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.http import build_app
from studbook_server.projector import KafkaProjector
from studbook_server.rebuild import rebuild
from tests.conftest import Services
from tests.support import (
    assert_same_read_models,
    dump_read_models,
    migrated,
    settings_for,
    wait_consumed,
)

Factory = Callable[..., Coroutine[Any, Any, str]]

RAW = "churn/dataset_version:postgres/db_5432/analytics.public.events@42"
FEATURES = "s3/lake/features/churn"
MODEL_VERSION = "churn/model_version:churn-clf@1"
CONTENT = "sha256:" + "5e" * 32  # what training code hashed the features to


# ----------------------------------------------------------------------------- the servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def served(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yield its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _token(
    database_url: str,
    *,
    projects: tuple[str, ...] = ("churn",),
    scopes: tuple[str, ...] = ("write", "read"),
) -> str:
    con = await postgres.connect(database_url)
    try:
        _id, token = await auth.create_token(con, "airflow", list(scopes), list(projects))
        return token
    finally:
        await con.close()


def graphql(base: str, token: str, query: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base}/graphql", data=orjson.dumps({"query": query}), method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        body: dict[str, Any] = orjson.loads(r.read())
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def eventually(
    base: str, token: str, query: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The answer to ``query`` once ``ready`` holds for it (the projection is asynchronous)."""
    deadline = time.monotonic() + 60
    while True:
        data = graphql(base, token, query)
        if ready(data):
            return data
        assert time.monotonic() < deadline, f"not projected in 60 s: {data}"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- the pipeline


def _schema(*columns: str) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=c, type="string") for c in columns]
    )


@dataclass
class Pipeline:
    """A nightly DAG with two tasks: `extract` reads a versioned table and writes features;
    `publish` reads the features (no version facet) and fails while exporting them."""

    dag: str = field(default_factory=lambda: str(uuid.uuid4()))
    extract: str = field(default_factory=lambda: str(uuid.uuid4()))
    publish: str = field(default_factory=lambda: str(uuid.uuid4()))
    custom: dict[str, Any] = field(
        default_factory=lambda: {"queue": "etl", "retries": [1, 2], "nested": {"ok": True}}
    )

    def events(self) -> list[RunEvent]:
        start = datetime.now(UTC) - timedelta(minutes=30)

        def at(minutes: int) -> str:
            return (start + timedelta(minutes=minutes)).isoformat()

        def job(name: str, job_type: str) -> Job:
            facet = job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="AIRFLOW", jobType=job_type
            )
            return Job(namespace="churn", name=name, facets={"jobType": facet})

        parent = {
            "parent": parent_run.ParentRunFacet(
                run=parent_run.Run(runId=self.dag),
                job=parent_run.Job(namespace="churn", name="nightly"),
            )
        }
        raw = InputDataset(
            namespace="postgres://db:5432",
            name="analytics.public.events",
            facets={
                "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="42"),
                "schema": _schema("user_id", "event", "at"),
            },
        )
        features = OutputDataset(
            namespace="s3://lake", name="features/churn", facets={"schema": _schema("user_id", "n")}
        )
        written = OutputDataset(
            namespace="s3://lake",
            name="features/churn",
            facets={"schema": _schema("user_id", "n")},
            outputFacets={
                "outputStatistics": (
                    output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=1200, size=4096
                    )
                )
            },
        )
        features_in = InputDataset(namespace="s3://lake", name="features/churn")
        export = OutputDataset(namespace="s3://exports", name="churn/features.csv")
        failure = error_message_run.ErrorMessageRunFacet(
            message="division by zero",
            programmingLanguage="python",
            stackTrace="Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero",
        )
        custom = {
            "_producer": "https://example.com/airflow-plugin",
            "_schemaURL": "https://example.com/schemas/QueueRunFacet.json",
            **self.custom,
        }

        def event(state: RunState, when: int, run: Run, job: Job, **io: Any) -> RunEvent:
            return RunEvent(eventType=state, eventTime=at(when), run=run, job=job, **io)

        extract, publish = job("nightly.extract", "TASK"), job("nightly.publish", "TASK")
        return [
            event(RunState.START, 0, Run(runId=self.dag), job("nightly", "DAG")),
            event(
                RunState.START, 1, Run(runId=self.extract, facets={**parent, "queue": custom}),
                extract, inputs=[raw], outputs=[features],
            ),
            event(
                RunState.COMPLETE, 5, Run(runId=self.extract, facets=parent), extract,
                inputs=[raw], outputs=[written],
            ),
            event(
                RunState.START, 6, Run(runId=self.publish, facets=parent), publish,
                inputs=[features_in], outputs=[export],
            ),
            event(
                RunState.FAIL, 7, Run(runId=self.publish, facets={**parent, "errorMessage": failure}),
                publish, inputs=[features_in], outputs=[export],
            ),
            event(RunState.FAIL, 8, Run(runId=self.dag), job("nightly", "DAG")),
        ]  # fmt: skip


def lineage_client(base: str, token: str, *, compress: bool) -> OpenLineageClient:
    """The client as an Airflow or dbt integration configures it (`transport: {type: http,
    url, auth: {type: api_key, apiKey}, compression: gzip}`), with a run tag from its config."""
    config = HttpConfig(
        url=base,
        auth=ApiKeyTokenProvider({"apiKey": token}),
        compression=HttpCompression.GZIP if compress else None,
    )
    return OpenLineageClient(
        transport=HttpTransport(config), config={"tags": {"run": {"team": "growth"}}}
    )


def train(ingest: str, token: str, spool: Path) -> None:
    """Training code: an evaluation reads the features by uri, then a snapshot of them (named by
    their uri, content hashed) trains a model version that becomes `production`."""
    studbook.init(url=ingest, project="churn", token=token, actor="trainer", spool_dir=spool)
    try:
        with studbook.start_run("baseline eval") as evaluation:
            evaluation.use(uri="s3://lake/features/churn", role="evaluation")
        studbook.flush(timeout=30)
        snapshot = studbook.dataset_version(uri="s3://lake/features/churn", digest=CONTENT)
        assert snapshot.dataset == FEATURES
        with studbook.start_run("xgb on features") as run:
            run.use(snapshot, role="train")
            run.log_metric("auc", 0.91)
            run.register_model("churn-clf", artifact_uri="s3://models/churn-clf/1")
        studbook.flush(timeout=30)
        studbook.set_alias("churn-clf", version=1, alias="production")
        studbook.flush(timeout=30)
    finally:
        studbook.shutdown(timeout=30)


# ----------------------------------------------------------------------------- the answers


def check_graph(api: str, token: str, p: Pipeline) -> None:
    """What GraphQL must answer once the pipeline and the training are projected."""
    failed = eventually(
        api, token,
        f"""{{ run(id: "churn/run:{p.publish}") {{ status error name experiment parentRunId
               parentRun {{ name status }} tags {{ key value }} inputs {{ id }} }} }}""",
        lambda d: d["run"] is not None and d["run"]["status"] == "FAILED"
        and d["run"]["parentRun"] is not None and d["run"]["parentRun"]["status"] == "FAILED",
    )["run"]  # fmt: skip
    assert failed["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}
    assert (failed["name"], failed["experiment"]) == ("nightly.publish", "nightly.publish")
    assert failed["parentRunId"] == p.dag
    assert failed["parentRun"]["name"] == "nightly"
    tags = {t["key"]: t["value"] for t in failed["tags"]}
    assert tags["team"] == "growth", "the client's run tags become Studbook tags"
    assert tags["openlineage.job.integration"] == "AIRFLOW"
    assert tags["openlineage.job.namespace"] == "churn"
    features_v = f"churn/dataset_version:{FEATURES}@{p.extract}"
    assert failed["inputs"] == [{"id": features_v}], "the read without a version facet resolved"

    eventually(
        api, token,
        f'{{ modelVersion(id: "{MODEL_VERSION}") {{ aliases {{ alias }} }} }}',
        lambda d: d["modelVersion"] is not None
        and [a["alias"] for a in d["modelVersion"]["aliases"]] == ["production"],
    )  # fmt: skip
    up = graphql(
        api, token,
        f"""{{ lineage(from: "{MODEL_VERSION}", direction: UPSTREAM, depth: 10) {{
               truncated nodes {{ id type }} edges {{ source destination type }} }} }}""",
    )["lineage"]  # fmt: skip
    assert not up["truncated"]
    nodes = {n["id"] for n in up["nodes"]}
    snapshot_v = f"churn/dataset_version:{FEATURES}@{CONTENT[7:19]}"
    assert {RAW, f"churn/run:{p.extract}", features_v, snapshot_v} <= nodes
    edges = {(e["source"], e["destination"], e["type"]) for e in up["edges"]}
    assert (RAW, f"churn/run:{p.extract}", "INPUT") in edges
    assert (f"churn/run:{p.extract}", features_v, "OUTPUT") in edges
    assert (features_v, snapshot_v, "DERIVED") in edges

    impact = graphql(
        api, token,
        f"""{{ impact(datasetVersion: "{RAW}") {{ truncated
               modelVersions {{ modelVersion {{ id run {{ name }} }} aliases }} }} }}""",
    )["impact"]  # fmt: skip
    assert impact["modelVersions"] == [
        {
            "modelVersion": {"id": MODEL_VERSION, "run": {"name": "xgb on features"}},
            "aliases": ["production"],
        }
    ]
    consumers = graphql(
        api, token,
        f"""{{ datasetVersion(id: "{features_v}") {{ digest rowCount sizeBytes uri number
               schema producedBy {{ runId status }} children {{ id }}
               consumers {{ nodes {{ name }} }} }} }}""",
    )["datasetVersion"]  # fmt: skip
    assert consumers["digest"] is None
    assert (consumers["rowCount"], consumers["sizeBytes"]) == (1200, 4096)
    assert consumers["uri"] == "s3://lake/features/churn"
    assert [f["name"] for f in consumers["schema"]] == ["user_id", "n"]
    assert consumers["producedBy"] == {"runId": p.extract, "status": "COMPLETED"}
    assert consumers["children"] == [{"id": snapshot_v}]
    assert sorted(r["name"] for r in consumers["consumers"]["nodes"]) == [
        "baseline eval", "nightly.publish",
    ]  # fmt: skip

    kept = graphql(
        api, token,
        f"""{{ run(id: "churn/run:{p.extract}") {{ facets }}
               dataset(id: "churn/dataset:{FEATURES}") {{ uri facets }} }}""",
    )  # fmt: skip
    facets = kept["run"]["facets"]
    queue = facets["run"]["queue"]
    assert {k: queue[k] for k in p.custom} == p.custom, "a custom facet is kept as sent"
    assert queue["_schemaURL"] == "https://example.com/schemas/QueueRunFacet.json"
    assert facets["run"]["parent"]["run"]["runId"] == p.dag
    assert facets["job"]["jobType"]["integration"] == "AIRFLOW"
    assert facets["outputs"][FEATURES]["outputStatistics"]["rowCount"] == 1200
    assert kept["dataset"]["uri"] == "s3://lake/features/churn"
    assert [f["name"] for f in kept["dataset"]["facets"]["schema"]["fields"]] == ["user_id", "n"]


def emit_all(client: OpenLineageClient, events: list[RunEvent]) -> None:
    for event in events:
        client.emit(event)


# ----------------------------------------------------------------------------- the tests


async def test_pipeline_and_training_make_one_graph_on_up(
    database_factory: Factory, tmp_path: Path
) -> None:
    url = await database_factory()
    await migrated(url)
    token = await _token(url)
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None)
    p = Pipeline()
    events = p.events()
    with served(build_app("up", settings)) as up:
        client = lineage_client(up, token, compress=True)
        await asyncio.to_thread(emit_all, client, events)
        await asyncio.to_thread(train, up, token, tmp_path / "spool")
        await _store_projected(url)
        await asyncio.to_thread(check_graph, up, token, p)

        con = await postgres.connect(url)
        try:
            stored = await con.fetchval("SELECT count(*) FROM public.events")
            before = await dump_read_models(url)
            await asyncio.to_thread(emit_all, client, events)  # every event a second time
            # Embedded, a duplicate is not even appended: the store is unchanged at once...
            assert await con.fetchval("SELECT count(*) FROM public.events") == stored
            assert await con.fetchval("SELECT position FROM rm.checkpoint") == await con.fetchval(
                "SELECT max(position) FROM public.events"
            )
        finally:
            await con.close()
        # ...and so are the read models.
        assert_same_read_models(before, await dump_read_models(url))
        sent = await _reported(url)
        assert sent == len(events), "each OpenLineage event is stored once, verbatim"
    # Replaying the store in other batches (a rebuild) derives the same read models: versions
    # resolved, gaps filled and facets kept depend on the events' order, not on batch bounds.
    assert await rebuild(url, batch=3) == stored
    assert_same_read_models(before, await dump_read_models(url))


async def _store_projected(database_url: str) -> None:
    """Wait until the read models have applied every event in the store (embedded mode)."""
    con = await postgres.connect(database_url)
    try:
        deadline = time.monotonic() + 60
        while await con.fetchval(
            "SELECT (SELECT position FROM rm.checkpoint) < coalesce(max(position), 0) FROM public.events"
        ):
            assert time.monotonic() < deadline, "the tailer did not catch up in 60 s"
            await asyncio.sleep(0.05)
    finally:
        await con.close()


async def _reported(database_url: str) -> int:
    con = await postgres.connect(database_url)
    try:
        count: int = await con.fetchval(
            "SELECT count(*) FROM public.events WHERE type = 'openlineage.event.reported'"
        )
        return count
    finally:
        await con.close()


async def _records(bootstrap: str, topic: str) -> int:
    """How many records the topic holds (its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_pipeline_and_training_make_one_graph_on_kafka(
    services: Services, database_factory: Factory, topic_factory: Factory, tmp_path: Path
) -> None:
    url = await database_factory()
    await migrated(url)
    token = await _token(url)
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(url, services.kafka_bootstrap, topic, group)
    pool = await postgres.create_pool(url, max_size=3)
    projector = KafkaProjector(settings, pool, name="projector-ol")
    running = asyncio.create_task(projector.run())
    p = Pipeline()
    events = p.events()
    try:
        with served(build_app("api", settings)) as api, served(build_app("ingest", settings)) as gw:
            client = lineage_client(api, token, compress=False)
            await asyncio.to_thread(emit_all, client, events)
            await asyncio.to_thread(train, gw, token, tmp_path / "spool")
            # Partitions are projected independently: wait for all of them, then ask.
            await wait_consumed(url, group, topic, await _records(services.kafka_bootstrap, topic))
            await asyncio.to_thread(check_graph, api, token, p)
            stored, before = await _stored(url), await dump_read_models(url)
            await asyncio.to_thread(emit_all, client, events)
            # On Kafka the duplicates are records too: the projector reads them, stores none.
            await wait_consumed(url, group, topic, await _records(services.kafka_bootstrap, topic))
            assert await _stored(url) == stored
            assert_same_read_models(before, await dump_read_models(url))
            assert await _reported(url) == len(events)
    finally:
        projector.stop()
        await running
        await pool.close()


async def _stored(database_url: str) -> int:
    con = await postgres.connect(database_url)
    try:
        count: int = await con.fetchval("SELECT count(*) FROM public.events")
        return count
    finally:
        await con.close()


# ----------------------------------------------------------------------------- refusals


async def test_refusals_name_the_problem(database_factory: Factory) -> None:
    url = await database_factory()
    await migrated(url)
    token = await _token(url)
    wide = await _token(url, projects=("*",))
    reader = await _token(url, scopes=("read",))
    settings = settings_for(
        url, "", "unused", "unused", kafka_bootstrap=None, max_body_bytes=200_000
    )
    p = Pipeline()
    with served(build_app("up", settings)) as up:
        client = lineage_client(up, token, compress=False)

        def refused(event: RunEvent, with_client: OpenLineageClient = client) -> requests.Response:
            with pytest.raises(requests.HTTPError) as caught:
                with_client.emit(event)
            return caught.value.response

        wrong = p.events()[0]
        wrong.job = Job(namespace="Default", name="nightly")
        answer = refused(wrong)
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["path"] == "/job/namespace"
        assert "does not name a Studbook project" in answer.json()["errors"][0]["message"]

        other = p.events()[0]
        other.job = Job(namespace="fraud", name="nightly")
        answer = refused(other)
        assert answer.status_code == 400, "a token for one project: a namespace naming another"
        assert "names project `fraud`, but the request is for project `churn`" in answer.text
        answer = refused(other, lineage_client(up, "sbk_nope_nope", compress=False))
        assert answer.status_code == 401
        answer = refused(p.events()[0], lineage_client(up, reader, compress=False))
        assert answer.status_code == 403
        assert "lacks the `write` scope" in answer.json()["error"]

        # A token for every project may write anywhere its namespace says.
        await asyncio.to_thread(lineage_client(up, wide, compress=True).emit, other)

        # A large event (checked off the event loop) and a DatasetEvent, whose project is the
        # token's only one, are taken too.
        big = p.events()[1]
        big.run.facets["notes"] = {
            "_producer": "https://example.com/p",
            "_schemaURL": "https://example.com/Notes.json",
            "text": "x" * 80_000,
        }
        await asyncio.to_thread(lineage_client(up, token, compress=True).emit, big)
        documented = DatasetEvent(
            eventTime=datetime.now(UTC).isoformat(),
            producer="https://example.com/catalog",
            dataset=StaticDataset(
                namespace="s3://lake",
                name="features/churn",
                facets={
                    "documentation": documentation_dataset.DocumentationDatasetFacet(
                        description="Per-user churn features, nightly"
                    )
                },
            ),
        )
        await asyncio.to_thread(client.emit, documented)
        dataset = await asyncio.to_thread(
            eventually, up, token,
            f'{{ dataset(id: "churn/dataset:{FEATURES}") {{ description uri facets }} }}',
            lambda d: d["dataset"] is not None and d["dataset"]["description"] is not None,
        )  # fmt: skip
        assert dataset["dataset"]["description"] == "Per-user churn features, nightly"
        assert dataset["dataset"]["facets"]["documentation"]["description"].endswith("nightly")

        def post(body: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(
                f"{up}/api/v1/lineage", data=body, method="POST",
                headers={"authorization": f"Bearer {token}", "content-type": "application/json",
                         **headers},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, orjson.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, orjson.loads(exc.read())

        status, body = post(b"{not json")
        assert (status, body["error"][:24]) == (400, "the body is not valid JS")
        status, body = post(orjson.dumps({"eventTime": "soon", "producer": "x"}))
        assert status == 400
        assert {e["path"] for e in body["errors"]} >= {"/eventTime", "/producer", "/job"}
        status, body = post(gzip.compress(b" " * 250_000 + b"{}"), **{"content-encoding": "gzip"})
        assert status == 413, "the limit holds for the decompressed body"
        status, body = post(b"{}", **{"content-encoding": "br"})
        assert status == 415
        status, body = post(b"\x1f\x8b not gzip", **{"content-encoding": "gzip"})
        assert status == 400

    # Refused events changed nothing; the accepted ones are stored.
    assert await _reported(url) == 3


async def test_the_route_is_served_by_api_and_up_only(database_factory: Factory) -> None:
    url = await database_factory()
    settings = settings_for(url, "localhost:1", "t", "g")

    def paths(role: str) -> set[str | None]:
        return {getattr(r, "path", None) for r in build_app(role, settings).routes}

    assert "/api/v1/lineage" not in paths("ingest")
    assert "/api/v1/lineage" in paths("api")
    assert "/api/v1/lineage" in paths("up")
    with TestClient(build_app("up", settings_for(url, "", "u", "u", kafka_bootstrap=None))) as c:
        assert c.get("/api/v1/lineage").status_code == 405
        answer = c.post("/api/v1/lineage", content=b"{}")
        assert answer.status_code == 401
        assert "Bearer" in answer.json()["error"]

"""OpenLineage in, the pure parts: dataset names, spec validation, the mapping to Studbook events
and what the projection makes of them. Events are built and serialised by the real
`openlineage-python` client's classes, so their shapes are the ones integrations send."""

from __future__ import annotations

import copy
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
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
    source_code_location_job,
    tags_run,
)
from openlineage.client.serde import Serde

import studbook
from studbook._naming import canonical_uri, dataset_name, openlineage_uri
from studbook_server.domain.contract import event_from_dict, validate_event
from studbook_server.domain.projection import (
    UNVERSIONED,
    Changes,
    State,
    StoredEvent,
    StoredPrincipal,
    project,
)
from studbook_server.openlineage import _spec
from studbook_server.openlineage._mapping import (
    MappingError,
    body_digest,
    error_type,
    map_event,
    resolve_project,
    version_id,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
PARENT = str(uuid.uuid4())
DIGEST = "sha256:" + "ab" * 32


def wire(event: Any) -> dict[str, Any]:
    """What the client puts on the wire."""
    doc: dict[str, Any] = orjson.loads(Serde.to_json(event))
    return doc


def schema(*columns: str) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=c, type="string") for c in columns]
    )


def run_event(
    state: RunState,
    run_id: str,
    job: str,
    *,
    inputs: list[InputDataset] | None = None,
    outputs: list[OutputDataset] | None = None,
    minutes: int = 0,
    run_facets: dict[str, Any] | None = None,
    job_facets: dict[str, Any] | None = None,
    namespace: str = "churn",
) -> dict[str, Any]:
    return wire(
        RunEvent(
            eventType=state,
            eventTime=(T0 + timedelta(minutes=minutes)).isoformat(),
            run=Run(runId=run_id, facets=run_facets or {}),
            job=Job(namespace=namespace, name=job, facets=job_facets or {}),
            inputs=inputs or [],
            outputs=outputs or [],
            producer="https://github.com/apache/airflow/tree/providers-openlineage/2.0.0",
        )
    )


RAW = InputDataset(
    namespace="postgres://db:5432",
    name="analytics.public.events",
    facets={
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="42"),
        "schema": schema("user_id", "event"),
    },
)
FEATURES_OUT = OutputDataset(
    namespace="s3://lake",
    name="features/churn",
    facets={"schema": schema("user_id", "n_events")},
    outputFacets={
        "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=1200, size=4096
        )
    },
)
FEATURES_IN = InputDataset(namespace="s3://lake", name="features/churn")


def docs_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    kind = _spec.kind_of(event)
    assert _spec.violations(event) == []
    mapped = map_event(event, kind, resolve_project(event, kind, None))
    for doc in mapped.docs:
        assert validate_event(copy.deepcopy(doc)) == [], doc["type"]
    return mapped.docs


def by_type(docs: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["type"] == event_type]


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("uri", "namespace", "name", "expected"),
    [
        ("s3://lake/features/churn", "s3://lake", "features/churn", "s3/lake/features/churn"),
        ("s3://lake/features/churn/", "s3://lake/", "/features/churn", "s3/lake/features/churn"),
        (
            "postgres://db:5432/analytics.public.events",
            "postgres://db:5432",
            "analytics.public.events",
            "postgres/db_5432/analytics.public.events",
        ),
        ("file:///data/train.csv", "file", "/data/train.csv", "file/data/train.csv"),
        ("file://localhost/data/train.csv", "file", "data/train.csv", "file/data/train.csv"),
        (
            "bigquery:proj.sales.orders",
            "bigquery",
            "proj.sales.orders",
            "bigquery/proj.sales.orders",
        ),
        ("gs://b/k", "gs://b", "k", "gs/b/k"),
        ("kafka://broker:9092/clicks", "kafka://broker:9092", "clicks", "kafka/broker_9092/clicks"),
    ],
)
def test_a_uri_and_its_openlineage_spelling_name_the_same_dataset(
    uri: str, namespace: str, name: str, expected: str
) -> None:
    assert canonical_uri(uri) == openlineage_uri(namespace, name)
    assert dataset_name(uri) == dataset_name(openlineage_uri(namespace, name)) == expected
    assert studbook.dataset_name(uri) == expected


def test_uris_that_do_not_fit_get_a_readable_prefix_and_a_digest() -> None:
    partitioned = dataset_name("s3://lake/events/date=2026-03-01")
    assert re.fullmatch(r"s3/lake/events/date_2026-03-01-[0-9a-f]{12}", partitioned)
    assert dataset_name("s3://lake/events/date=2026-03-02") != partitioned
    long = dataset_name("s3://lake/" + "x" * 400)
    assert NAME.fullmatch(long)
    assert len(long) == 200
    # A percent-encoded local path (Path.as_uri) names the same dataset as the raw path.
    assert dataset_name("file:///data/my%20file.csv") == dataset_name(
        openlineage_uri("file", "/data/my file.csv")
    )


@given(st.text(min_size=1, max_size=400))
def test_every_uri_gets_a_valid_name(uri: str) -> None:
    assert NAME.fullmatch(dataset_name(uri))


HIERARCHICAL = st.from_regex(
    r"(s3|gs|file|hdfs|postgres)://([a-z0-9.-]{1,3}(:[0-9]{1,3})?)?(/[a-z0-9_/=:.]{0,4})?",
    fullmatch=True,
)


@given(HIERARCHICAL, HIERARCHICAL)
def test_distinct_uris_get_distinct_names(one: str, other: str) -> None:
    # Host names have no `_`, so a port's `_` cannot be mistaken for one.
    if dataset_name(one) == dataset_name(other):
        assert canonical_uri(one) == canonical_uri(other)


def test_version_ids() -> None:
    assert version_id("42") == "42"
    assert version_id("3051729675574597004") == "3051729675574597004"
    stamp = version_id("2026-03-01T02:00:00Z")
    assert re.fullmatch(r"2026-03-01T02_00_00Z-[0-9a-f]{12}", stamp)
    assert version_id("v/1") != version_id("v:1")


def test_error_types_come_from_the_message_or_the_stack_trace() -> None:
    py = {"message": "boom", "stackTrace": "Traceback (most recent call last):\nValueError: boom"}
    jvm = {
        "message": "x",
        "stackTrace": 'Exception in thread "main" java.lang.IllegalStateException: x\n\tat a.B(B.java:1)',
    }
    spark = {"message": "org.apache.spark.sql.AnalysisException: Table or view not found"}
    assert error_type(py) == "ValueError"
    assert error_type(jvm) == "java.lang.IllegalStateException"
    assert error_type(spark) == "org.apache.spark.sql.AnalysisException"
    assert error_type({"message": "it broke"}) == "FAIL"


# ---------------------------------------------------------------------------------- the spec


def test_events_the_client_builds_are_valid() -> None:
    rid = str(uuid.uuid4())
    assert _spec.violations(run_event(RunState.START, rid, "nightly.extract", inputs=[RAW])) == []
    static = wire(
        DatasetEvent(
            eventTime=T0.isoformat(),
            producer="https://example.com/p",
            dataset=StaticDataset(namespace="s3://lake", name="features/churn"),
        )
    )
    assert _spec.kind_of(static) == "DatasetEvent"
    assert _spec.violations(static) == []
    job = wire(
        JobEvent(
            eventTime=T0.isoformat(),
            producer="https://example.com/p",
            job=Job(namespace="churn", name="static"),
            inputs=[FEATURES_IN],
        )
    )
    assert _spec.kind_of(job) == "JobEvent"
    assert _spec.violations(job) == []


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (lambda e: e["run"].update(runId="not-a-uuid"), "/run/runId", "uuid"),
        (lambda e: e.update(eventType="DONE"), "/eventType", "is not one of"),
        (lambda e: e["job"].pop("name"), "/job/name", "required field `name` is missing"),
        (lambda e: e.update(producer="not a uri"), "/producer", "uri"),
        (
            lambda e: e["run"]["facets"].update(bad={"_producer": "https://x"}),
            "/run/facets/bad/_schemaURL",
            "required field `_schemaURL` is missing",
        ),
        (
            lambda e: e["run"]["facets"]["errorMessage"].update(message=5),
            "/run/facets/errorMessage/message",
            "must be a string",
        ),
        (
            lambda e: e["inputs"][0]["facets"]["version"].pop("datasetVersion"),
            "/inputs/0/facets/version/datasetVersion",
            "required field",
        ),
    ],
)
def test_spec_violations_name_the_field(change: Any, path: str, words: str) -> None:
    failure = error_message_run.ErrorMessageRunFacet(message="m", programmingLanguage="python")
    event = run_event(
        RunState.FAIL, str(uuid.uuid4()), "j", inputs=[RAW], run_facets={"errorMessage": failure}
    )
    change(event)
    found = _spec.violations(event)
    assert any(v.path == path and words in v.message for v in found), found


def test_a_deleted_facet_is_not_checked_for_fields() -> None:
    event = run_event(RunState.COMPLETE, str(uuid.uuid4()), "j", inputs=[RAW])
    event["inputs"][0]["facets"]["version"] = {
        "_producer": "https://x", "_schemaURL": "https://y", "_deleted": True
    }  # fmt: skip
    assert _spec.violations(event) == []


# ---------------------------------------------------------------------------------- mapping


def test_a_failed_run_maps_to_its_lifecycle_lineage_and_tags() -> None:
    rid = str(uuid.uuid4())
    failure = error_message_run.ErrorMessageRunFacet(
        message="division by zero",
        programmingLanguage="python",
        stackTrace="Traceback (most recent call last):\nZeroDivisionError: division by zero",
    )
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=PARENT), job=parent_run.Job(namespace="churn", name="nightly")
    )
    start = run_event(
        RunState.START, rid, "nightly.publish", inputs=[FEATURES_IN],
        run_facets={"parent": parent},
        job_facets={
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="AIRFLOW", jobType="TASK"
            ),
            "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet(
                type="git", url="https://git.example.com/etl/blob/main/dags/nightly.py",
                repoUrl="https://git.example.com/etl.git", path="dags/nightly.py",
                version="4E1C2A9", branch="main",
            ),
        },
    )  # fmt: skip
    docs = docs_of(start)
    assert [d["type"] for d in docs] == [
        "openlineage.event.reported", "run.started", "run.tags.set", "dataset.read",
    ]  # fmt: skip
    reported, started, tags, read = docs
    assert reported["payload"]["event"] == start, "the OpenLineage event is kept verbatim"
    assert reported["subject"] == started["subject"] == f"run:{rid}"
    assert started["payload"] == {
        "name": "nightly.publish",
        "experiment": "nightly.publish",
        "parent_run": PARENT,
        "code": {
            "git_repo": "https://git.example.com/etl.git",
            "git_commit": "4e1c2a9",
            "git_branch": "main",
            "entry_point": "dags/nightly.py",
        },
    }
    assert started["occurred_at"] == "2026-03-01T02:00:00.000000Z"
    assert tags["payload"]["tags"] == {
        "openlineage.job.namespace": "churn",
        "openlineage.job.name": "nightly.publish",
        "openlineage.job.integration": "AIRFLOW",
        "openlineage.job.processing_type": "BATCH",
        "openlineage.job.type": "TASK",
    }
    assert read["subject"] == "dataset:s3/lake/features/churn"
    assert read["payload"] == {"run": rid, "uri": "s3://lake/features/churn"}
    assert all(d["project"] == "churn" and d["correlation_id"] == rid for d in docs)
    assert all(d["causation_id"] == reported["event_id"] for d in docs[1:])

    fail = run_event(
        RunState.FAIL, rid, "nightly.publish", inputs=[FEATURES_IN], minutes=3,
        outputs=[OutputDataset(namespace="s3://lake", name="exports/churn")],
        run_facets={"errorMessage": failure},
    )  # fmt: skip
    docs = docs_of(fail)
    assert [d["type"] for d in docs] == [
        "openlineage.event.reported", "run.tags.set", "dataset.read", "dataset.version.reported",
        "run.output.produced", "run.finished",
    ]  # fmt: skip
    written = by_type(docs, "dataset.version.reported")[0]
    assert written["subject"] == "dataset:s3/lake/exports/churn"
    assert written["payload"] == {
        "version": rid, "uri": "s3://lake/exports/churn", "produced_by_run": rid
    }  # fmt: skip
    assert by_type(docs, "run.finished")[0]["payload"] == {
        "status": "failed",
        "error": {"type": "ZeroDivisionError", "message": "division by zero"},
    }


def test_outputs_carry_schema_statistics_and_the_version_facet() -> None:
    rid = str(uuid.uuid4())
    versioned = OutputDataset(
        namespace="s3://lake", name="tables/users",
        facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="7")},
    )  # fmt: skip
    docs = docs_of(run_event(RunState.COMPLETE, rid, "x", outputs=[FEATURES_OUT, versioned]))
    features, users = by_type(docs, "dataset.version.reported")
    assert features["payload"] == {
        "version": rid,
        "uri": "s3://lake/features/churn",
        "produced_by_run": rid,
        "schema": [
            {"name": "user_id", "type": "string", "fields": []},
            {"name": "n_events", "type": "string", "fields": []},
        ],
        "row_count": 1200,
        "size_bytes": 4096,
    }
    assert users["payload"]["version"] == "7"
    assert by_type(docs, "run.finished")[0]["payload"] == {"status": "completed"}


def test_event_ids_are_the_same_for_a_redelivery_and_differ_otherwise() -> None:
    rid = str(uuid.uuid4())
    event = run_event(RunState.COMPLETE, rid, "x", inputs=[RAW], outputs=[FEATURES_OUT])
    ids = [d["event_id"] for d in docs_of(event)]
    shuffled = orjson.loads(orjson.dumps(dict(reversed(list(event.items())))))
    assert body_digest(shuffled) == body_digest(event)
    assert [d["event_id"] for d in docs_of(shuffled)] == ids
    later = run_event(RunState.COMPLETE, rid, "x", inputs=[RAW], outputs=[FEATURES_OUT], minutes=1)
    assert not set(ids) & {d["event_id"] for d in docs_of(later)}
    assert len(set(ids)) == len(ids)


def test_projects_come_from_the_job_namespace() -> None:
    event = run_event(RunState.START, str(uuid.uuid4()), "x", namespace="churn/airflow-prod")
    assert resolve_project(event, "RunEvent", None) == "churn"
    assert resolve_project(event, "RunEvent", "churn") == "churn"
    with pytest.raises(MappingError) as mismatch:
        resolve_project(event, "RunEvent", "growth")
    assert mismatch.value.violations[0].path == "/job/namespace"
    assert "names project `churn`, but the request is for project `growth`" in str(mismatch.value)
    bad = run_event(RunState.START, str(uuid.uuid4()), "x", namespace="Default Namespace")
    with pytest.raises(MappingError, match="does not name a Studbook project"):
        resolve_project(bad, "RunEvent", None)
    static = {"dataset": {"namespace": "s3://lake", "name": "x"}}
    with pytest.raises(MappingError, match="names no job, so no project"):
        resolve_project(static, "DatasetEvent", None)
    assert resolve_project(static, "DatasetEvent", "churn") == "churn"


def test_times_without_offset_or_out_of_range_are_refused() -> None:
    event = run_event(RunState.START, str(uuid.uuid4()), "x")
    for bad in ("2026-03-01T02:00:00", "1969-12-31T23:59:59Z"):
        event["eventTime"] = bad
        with pytest.raises(MappingError) as refused:
            map_event(event, "RunEvent", "churn")
        assert refused.value.violations[0].path == "/eventTime"


def test_run_tags_facets_become_tags_and_ours_win() -> None:
    facet = tags_run.TagsRunFacet(
        tags=[
            tags_run.TagsRunFacetFields(key="team", value="growth", source="USER"),
            tags_run.TagsRunFacetFields(key="openlineage.job.name", value="spoofed"),
        ]
    )
    docs = docs_of(run_event(RunState.RUNNING, str(uuid.uuid4()), "x", run_facets={"tags": facet}))
    assert [d["type"] for d in docs] == ["openlineage.event.reported", "run.tags.set"]
    assert docs[1]["payload"]["tags"]["team"] == "growth"
    assert docs[1]["payload"]["tags"]["openlineage.job.name"] == "x"


def test_a_dataset_event_documents_its_dataset() -> None:
    event = wire(
        DatasetEvent(
            eventTime=T0.isoformat(),
            producer="https://example.com/p",
            dataset=StaticDataset(
                namespace="s3://lake",
                name="features/churn",
                facets={
                    "documentation": documentation_dataset.DocumentationDatasetFacet(
                        description="Per-user features"
                    )
                },
            ),
        )
    )
    mapped = map_event(event, "DatasetEvent", "churn")
    reported, created = mapped.docs
    assert reported["subject"] == created["subject"] == "dataset:s3/lake/features/churn"
    assert created["payload"] == {
        "name": "s3/lake/features/churn",
        "uri": "s3://lake/features/churn",
        "description": "Per-user features",
    }


# ---------------------------------------------------------------------------------- projection


class Store:
    """Stored events projected one at a time, with the state carried over as the read models
    would hold it (each event its own batch, as under load)."""

    def __init__(self) -> None:
        self.state = State()
        self.changes = Changes()
        self.position = 0

    def add(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.position += 1
            stored = StoredEvent(
                event_from_dict(copy.deepcopy(doc)),
                self.position,
                T0 + timedelta(seconds=self.position),
                StoredPrincipal("tok", "airflow"),
            )
            self.changes.absorb(project([stored], self.state))

    def edges(self) -> set[tuple[str, str, str]]:
        return {(row[1], row[2], row[3]) for row in self.changes.edges.values()}


def sdk_snapshot(dataset: str, uri: str, digest: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "dataset.version.created",
        "schema_version": 1,
        "occurred_at": "2026-03-01T03:00:00Z",
        "actor": "trainer",
        "project": "churn",
        "subject": f"dataset:{dataset}",
        "payload": {"version": digest[7:19], "uri": uri, "digest": digest},
    }


def test_projection_joins_the_pipeline_and_the_training_data() -> None:
    job1, job2 = str(uuid.uuid4()), str(uuid.uuid4())
    store = Store()
    store.add(
        docs_of(run_event(RunState.START, job1, "extract", inputs=[RAW], outputs=[FEATURES_OUT]))
    )
    store.add(
        docs_of(
            run_event(
                RunState.COMPLETE, job1, "extract", inputs=[RAW], outputs=[FEATURES_OUT], minutes=5
            )
        )
    )
    store.add(docs_of(run_event(RunState.START, job2, "publish", inputs=[FEATURES_IN], minutes=6)))
    store.add(docs_of(run_event(RunState.FAIL, job2, "publish", inputs=[FEATURES_IN], minutes=7)))
    digest = DIGEST
    store.add([sdk_snapshot("s3/lake/features/churn", "s3://lake/features/churn", digest)])

    raw = "dataset_version:postgres/db_5432/analytics.public.events@42"
    features = f"dataset_version:s3/lake/features/churn@{job1}"
    snapshot = f"dataset_version:s3/lake/features/churn@{digest[7:19]}"
    assert store.edges() == {
        ("input", raw, f"run:{job1}"),
        ("output", f"run:{job1}", features),
        ("input", features, f"run:{job2}"),
        ("derived", features, snapshot),
    }
    versions = {(r[1], r[2]): r for r in store.changes.dataset_versions_reported}
    assert set(versions) == {
        ("postgres/db_5432/analytics.public.events", "42"),
        ("s3/lake/features/churn", job1),
    }
    assert store.changes.dataset_versions[0][9] == [
        {"dataset": "s3/lake/features/churn", "version": job1}
    ], "the snapshot names the pipeline's version as its parent"
    # COMPLETE filled in what START did not say; the run is failed with no error facet.
    assert len(store.changes.dataset_versions_filled) >= 1
    assert [r[2] for r in store.changes.runs_finished] == ["completed", "failed"]


def test_a_read_of_a_dataset_without_versions_is_of_its_unversioned_state() -> None:
    rid = str(uuid.uuid4())
    store = Store()
    store.add(docs_of(run_event(RunState.START, rid, "x", inputs=[FEATURES_IN])))
    node = f"dataset_version:s3/lake/features/churn@{UNVERSIONED}"
    assert store.edges() == {("input", node, f"run:{rid}")}
    (row,) = store.changes.dataset_versions_reported
    assert (row[1], row[2], row[3], row[4]) == (
        "s3/lake/features/churn",
        UNVERSIONED,
        1,
        "s3://lake/features/churn",
    )


def test_facets_are_kept_per_run_and_dataset_newest_first() -> None:
    rid = str(uuid.uuid4())
    custom = {"_producer": "https://x", "_schemaURL": "https://x/Custom.json", "answer": 42}
    store = Store()
    start = run_event(RunState.START, rid, "x", inputs=[RAW], outputs=[FEATURES_OUT])
    start["run"]["facets"]["custom"] = custom
    store.add(docs_of(start))
    done = run_event(RunState.COMPLETE, rid, "x", outputs=[FEATURES_OUT], minutes=1)
    done["run"]["facets"]["custom"] = {**custom, "answer": 43}
    done["outputs"][0]["facets"]["schema"] = {
        "_producer": "https://x",
        "_schemaURL": "https://y",
        "_deleted": True,
    }
    store.add(docs_of(done))
    facets = {(r[1], r[2], r[3]): r[4] for r in store.changes.facets.values()}
    assert facets[(f"run:{rid}", "run", "custom")]["answer"] == 43
    assert (
        facets[("dataset:postgres/db_5432/analytics.public.events", "dataset", "version")][
            "datasetVersion"
        ]
        == "42"
    )
    assert (
        facets[(f"run:{rid}", "output:s3/lake/features/churn", "outputStatistics")]["rowCount"]
        == 1200
    )
    assert facets[("dataset:s3/lake/features/churn", "dataset", "schema")] is None, "deleted"


def test_every_dataset_an_event_names_exists_under_its_own_name() -> None:
    rid = str(uuid.uuid4())
    for docs in (
        docs_of(run_event(RunState.START, rid, "x", inputs=[RAW], outputs=[FEATURES_OUT])),
        # The verbatim event alone (its datasets' other events may be in another batch).
        docs_of(run_event(RunState.OTHER, rid, "x", inputs=[RAW], outputs=[FEATURES_OUT]))[:1],
    ):
        store = Store()
        store.add(docs)
        assert {key: row[:2] for key, row in store.changes.datasets.items()} == {
            ("churn", "postgres/db_5432/analytics.public.events"): (
                "churn", "postgres/db_5432/analytics.public.events"
            ),
            ("churn", "s3/lake/features/churn"): ("churn", "s3/lake/features/churn"),
        }  # fmt: skip
        uris = {row[1]: row[3] for row in store.changes.datasets.values()}
        assert uris["s3/lake/features/churn"] == "s3://lake/features/churn"


def test_a_run_keeps_the_version_it_read_first() -> None:
    first, reader, second = (str(uuid.uuid4()) for _ in range(3))
    store = Store()
    store.add(docs_of(run_event(RunState.COMPLETE, first, "write", outputs=[FEATURES_OUT])))
    store.add(docs_of(run_event(RunState.START, reader, "read", inputs=[FEATURES_IN], minutes=1)))
    # Another run writes a new version while the reader runs; the reader lists its input again.
    store.add(
        docs_of(run_event(RunState.COMPLETE, second, "write", outputs=[FEATURES_OUT], minutes=2))
    )
    store.add(
        docs_of(run_event(RunState.COMPLETE, reader, "read", inputs=[FEATURES_IN], minutes=3))
    )
    assert {e for e in store.edges() if e[0] == "input"} == {
        ("input", f"dataset_version:s3/lake/features/churn@{first}", f"run:{reader}")
    }
    numbers = {r[2]: r[3] for r in store.changes.dataset_versions_reported}
    assert numbers == {first: 1, second: 2}


def test_a_run_that_rewrites_its_input_reads_the_version_before_its_own() -> None:
    rid = str(uuid.uuid4())
    store = Store()
    table = OutputDataset(namespace="s3://lake", name="features/churn")
    for state, minutes in ((RunState.START, 0), (RunState.COMPLETE, 1)):
        store.add(
            docs_of(
                run_event(
                    state, rid, "append", inputs=[FEATURES_IN], outputs=[table], minutes=minutes
                )
            )
        )
    assert store.edges() == {
        ("input", f"dataset_version:s3/lake/features/churn@{UNVERSIONED}", f"run:{rid}"),
        ("output", f"run:{rid}", f"dataset_version:s3/lake/features/churn@{rid}"),
    }


def test_the_queries_in_the_docs_validate() -> None:
    from graphql import parse, validate
    from studbook_server.graphql import schema

    doc = Path(__file__).resolve().parents[2] / "docs" / "openlineage.md"
    blocks = re.findall(r"```graphql\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 4
    for block in blocks:
        assert not validate(schema()._schema, parse(block)), block


def test_a_reported_version_hashed_later_keeps_its_number_and_learns_its_digest() -> None:
    rid = str(uuid.uuid4())
    table = OutputDataset(
        namespace="s3://lake",
        name="features/churn",
        facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="7")},
    )
    store = Store()
    store.add(docs_of(run_event(RunState.COMPLETE, rid, "x", outputs=[table])))
    hashed = sdk_snapshot("s3/lake/features/churn", "s3://lake/features/churn", DIGEST)
    hashed["payload"]["version"] = "7"
    store.add([hashed])
    assert store.changes.rejected == []
    assert store.changes.dataset_versions == [], "no second row for the same version"
    assert [r[2] for r in store.changes.dataset_versions_reported] == ["7"]
    assert store.changes.dataset_versions_filled[-1][6] == DIGEST
    assert store.state.dataset_version_digests[("churn", "s3/lake/features/churn", "7")] == DIGEST

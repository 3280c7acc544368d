"""Unit tests of the event contract: the schema files, validation messages, upcasting, codec.

Pure and fast: no services, no network; only the files under ``schema/events``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import orjson
import pytest

from studbook_server.domain import contract
from studbook_server.domain.contract import (
    CURRENT_VERSIONS,
    EVENT_TYPES,
    MAX_VIOLATIONS_PER_EVENT,
    UPCASTERS,
    Event,
    InvalidEvent,
    Violation,
    decode_event,
    encode_event,
    event_from_dict,
    known_versions,
    schema_dir,
    schema_path,
    upcast,
    validate_batch,
    validate_event,
)

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
EVENT_ID = "3f2b1c9e-8d4a-4e6b-9f1a-2c3d4e5f6a7b"
RUN_ID = "0b6f7a52-3c1d-4e8f-9a2b-5c6d7e8f9a0b"
DIGEST = "sha256:" + "ab" * 32
PAYLOAD_FILE = re.compile(r"^(?P<type>[a-z_.]+)\.v(?P<version>[1-9][0-9]*)\.schema\.json$")

# A valid payload at the current version of every type, exercising most optional fields.
VALID_PAYLOADS: Mapping[str, dict[str, Any]] = {
    "project.created": {"description": "Image classification experiments."},
    "dataset.created": {"name": "imagenet-subset", "uri": "s3://data/imagenet-subset/"},
    "dataset.version.created": {
        "version": "9f86d081",
        "uri": "s3://data/imagenet-subset/9f86d081/",
        "digest": DIGEST,
        "size_bytes": 0,
        "row_count": 12000,
        "schema": [{"name": "label", "type": "int64"}],
        "parents": [{"dataset": "imagenet", "version": "2012"}],
        "produced_by_run": RUN_ID,
        "source": {"uri": "file:///data/imagenet-subset", "repo_path": "data/imagenet-subset"},
    },
    "dataset.version.reported": {
        "version": RUN_ID,
        "uri": "s3://lake/features/churn",
        "produced_by_run": RUN_ID,
        "schema": [{"name": "user_id", "type": "bigint"}],
        "row_count": 10,
        "size_bytes": 0,
    },
    "dataset.read": {
        "run": RUN_ID,
        "uri": "s3://lake/features/churn",
        "version": "42",
        "role": "train",
    },
    "run.started": {
        "name": "resnet50-baseline",
        "experiment": "resnet-sweep",
        "parent_run": "sweep-1",
        "code": {
            "git_repo": "https://git.example.com/v.git",
            "git_commit": "4e1c2a9",
            "git_dirty": True,
            "entry_point": "train.py",
            "argv": ["--lr", "0.1", "--token", "***"],
            "working_dir": ".",
            "diff": {"digest": DIGEST, "size_bytes": 10, "stored": True},
        },
        "environment": {"python_version": "3.11.7", "packages": ["numpy==2.1.0"], "host": "gpu"},
        "reproduces": {"run": RUN_ID, "derived": False},
    },
    "run.params.logged": {"params": {"lr": 0.001, "layers": 50, "amp": True, "note": None}},
    "run.metrics.logged": {
        "metrics": [
            {"key": "train/loss", "value": 0.5},
            {"key": "val/acc", "value": 1, "step": 3, "timestamp": "2026-03-01T12:00:00.5+02:00"},
        ]
    },
    "run.tags.set": {"tags": {"team": "vision", "stale": None}},
    "run.input.used": {"dataset": "imagenet-subset", "version": "9f86d081", "role": "train"},
    "run.output.produced": {"uri": "s3://out/f/", "dataset": "features", "version": "7c1e"},
    "run.finished": {"status": "failed", "error": {"type": "OOM", "message": "out of memory"}},
    "run.diff.recorded": {
        "digest": DIGEST,
        "size_bytes": 4,
        "encoding": "base64",
        "diff": "AAEC/w==",
    },
    "model.created": {"name": "resnet50"},
    "model.version.registered": {
        "run": RUN_ID,
        "artifact_uri": "s3://models/resnet50/3/",
        "digest": DIGEST,
        "framework": "pytorch",
        "signature": {"inputs": []},
    },
    "model.alias.set": {"alias": "champion", "version": 3},
    "model.alias.removed": {"alias": "champion"},
    "model.version.approved": {"version": 3, "comment": "Good.", "evidence": [RUN_ID]},
    "model.version.rejected": {"version": 4},
    "model.version.deployed": {"version": 3, "environment": "production", "target": "ep-1"},
    "model.version.undeployed": {"version": 2, "environment": "production"},
    "annotation.added": {"text": "Loss spikes at step 12000.", "labels": {"kind": "incident"}},
    "subject.redacted": {"reason": "GDPR request", "fields": ["host", "code.git_repo"]},
    "experiment.created": {"name": "churn", "artifact_location": "mlflow-artifacts:/1"},
    "experiment.updated": {"name": "churn-v2", "lifecycle_stage": "deleted", "tags": {"t": None}},
    "run.lifecycle.set": {"lifecycle_stage": "deleted"},
    "artifact.stored": {
        "path": "1/r1/artifacts/model/MLmodel",
        "uri": "file:///var/lib/studbook/artifacts/vision/1/r1/artifacts/model/MLmodel",
        "size_bytes": 512,
        "digest": DIGEST,
        "run": "r1",
    },
    "logged_model.created": {
        "name": "model",
        "experiment": "1",
        "artifact_uri": "mlflow-artifacts:/1/models/m-0123/artifacts",
        "status": "LOGGED_MODEL_PENDING",
        "params": {"alpha": "0.5"},
        "tags": {"mlflow.user": "alice"},
    },
    "logged_model.updated": {"status": "LOGGED_MODEL_READY", "tags": {"stale": None}},
    "model.updated": {"description": "Churn classifier", "tags": {"team": "growth"}},
    "model.version.updated": {"version": 3, "stage": "Production", "tags": {"ok": "yes"}},
    "openlineage.event.reported": {
        "kind": "DatasetEvent",
        "event": {"dataset": {"namespace": "s3://lake", "name": "features/churn"}},
        "dataset": {"dataset": "s3/lake/features/churn", "uri": "s3://lake/features/churn"},
    },
}

SUBJECTS: Mapping[str, str] = {
    "project": "project:vision",
    "dataset": "dataset:imagenet-subset",
    "run": f"run:{RUN_ID}",
    "model": "model:resnet50",
    "annotation": f"run:{RUN_ID}",
    "subject": "dataset:imagenet-subset",
    "openlineage": f"run:{RUN_ID}",
    "artifact": f"run:{RUN_ID}",
    "logged_model": "logged_model:m-0123456789abcdef0123456789abcdef",
    "experiment": "experiment:1",
}

# Keywords fastjsonschema enforces (dependentRequired via the draft-07 translation), plus
# annotations; anything else in a schema would be silently ignored by the validator.
ENFORCED_OR_ANNOTATION = frozenset(
    {
        "$schema", "title", "description", "examples", "default", "$comment",
        "type", "enum", "const", "required", "properties", "additionalProperties",
        "propertyNames", "minProperties", "maxProperties", "dependentRequired",
        "items", "minItems", "maxItems", "uniqueItems",
        "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip


def make_event(
    event_type: str, payload: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """Return a valid wire envelope of ``event_type`` (current version unless overridden)."""
    event: dict[str, Any] = {
        "event_id": EVENT_ID,
        "type": event_type,
        "schema_version": CURRENT_VERSIONS[event_type],
        "occurred_at": "2026-03-01T12:00:00Z",
        "actor": "alice",
        "project": "vision",
        "subject": SUBJECTS[event_type.partition(".")[0]],
        "payload": copy.deepcopy(VALID_PAYLOADS[event_type]) if payload is None else payload,
    }
    event.update(fields)
    return event


def schema_files() -> list[Path]:
    return sorted((schema_dir() / "events").glob("*.schema.json"))


def load(path: Path) -> dict[str, Any]:
    schema = orjson.loads(path.read_bytes())
    assert isinstance(schema, dict)
    return schema


def payload_files() -> dict[tuple[str, int], Path]:
    out: dict[tuple[str, int], Path] = {}
    for path in schema_files():
        match = PAYLOAD_FILE.match(path.name)
        if match is not None:
            out[(match["type"], int(match["version"]))] = path
    return out


def subschemas(
    schema: Mapping[str, Any], where: str = ""
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield every schema object inside ``schema`` (itself included) with its location."""
    yield where, schema
    for keyword in ("properties", "$defs"):
        for name, sub in schema.get(keyword, {}).items():
            yield from subschemas(sub, f"{where}/{keyword}/{name}")
    for keyword in ("items", "additionalProperties", "propertyNames"):
        if isinstance(schema.get(keyword), Mapping):
            yield from subschemas(schema[keyword], f"{where}/{keyword}")


def one(violations: list[Violation]) -> Violation:
    assert len(violations) == 1, violations
    return violations[0]


# --------------------------------------------------------------------------- schema files


def test_schema_dir_is_the_repository_schema_folder() -> None:
    assert schema_dir() == Path(contract.__file__).resolve().parents[3] / "schema"
    assert schema_path("envelope") == schema_dir() / "events" / "envelope.schema.json"


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_schema_file_is_a_documented_2020_12_schema(path: Path) -> None:
    schema = load(path)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["title"].strip()
    assert schema["description"].strip().endswith(".")
    # jsonschema (a dev dependency) is the reference implementation of the meta-schema.

    jsonschema.Draft202012Validator.check_schema(schema)
    fastjsonschema.compile(contract._for_fastjsonschema(schema))
    for where, sub in subschemas(schema):
        if where and not where.endswith("/propertyNames"):
            assert str(sub.get("description", "")).strip(), f"{path.name}{where} has no description"
        unknown = set(sub) - ENFORCED_OR_ANNOTATION
        assert not unknown, f"{path.name}{where} uses {unknown}, which fastjsonschema ignores"
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path.name}{where} is open"


def test_event_types_agree_with_the_envelope_and_the_files() -> None:
    envelope = load(schema_path("envelope"))
    assert tuple(envelope["properties"]["type"]["enum"]) == EVENT_TYPES
    expected = {(t, v) for t in EVENT_TYPES for v in known_versions(t)}
    assert set(payload_files()) == expected
    assert {p.name for p in schema_files()} == {"envelope.schema.json"} | {
        p.name for p in payload_files().values()
    }


def test_every_pattern_in_the_schemas_has_a_readable_hint() -> None:
    patterns = {
        sub["pattern"]
        for path in schema_files()
        for _where, sub in subschemas(load(path))
        if "pattern" in sub
    }
    assert patterns == set(contract._PATTERN_HINTS)


def test_subject_rules_use_the_id_patterns_of_the_schemas() -> None:
    envelope = load(schema_path("envelope"))
    assert envelope["properties"]["project"]["pattern"] == f"^{contract._PROJECT_ID}$"
    patterns = set(contract._PATTERN_HINTS)
    assert f"^{contract._NAME}$" in patterns
    assert f"^{contract._RUN_ID}$" in patterns


@pytest.mark.parametrize("key", sorted(payload_files()), ids=lambda k: f"{k[0]}.v{k[1]}")
def test_schema_examples_are_valid(key: tuple[str, int]) -> None:

    schema = load(payload_files()[key])
    assert schema["examples"], "examples feed the event reference docs"
    for example in schema["examples"]:
        # A second implementation guards against fastjsonschema being too lenient.
        jsonschema.Draft202012Validator(schema).validate(example)
        event = make_event(key[0], copy.deepcopy(example), schema_version=key[1])
        assert validate_event(event) == []


def test_envelope_example_is_valid() -> None:
    for example in load(schema_path("envelope"))["examples"]:
        assert validate_event(example) == []


# --------------------------------------------------------------------------- valid events


def test_there_is_a_valid_example_for_every_type() -> None:
    assert set(VALID_PAYLOADS) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_valid_event_passes_and_decodes(event_type: str) -> None:
    event = make_event(event_type, correlation_id="job-1", causation_id=EVENT_ID)
    event["producer"] = {"name": "studbook-sdk", "version": "0.1.0", "host": "gpu-07"}
    before = copy.deepcopy(event)
    assert validate_event(event) == []
    assert event == before, "validation must not change the event"
    decoded = decode_event(orjson.dumps(event))
    assert decoded.to_dict() == event
    assert decode_event(encode_event(decoded)) == decoded


def test_validate_batch_of_valid_events_is_empty() -> None:
    assert validate_batch([make_event(t) for t in EVENT_TYPES]) == []


def test_optional_envelope_fields_and_offsets() -> None:
    event = make_event("run.finished", occurred_at="2026-03-01T14:00:00.123456789+02:00")
    decoded = event_from_dict(event)
    assert decoded.occurred_at == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    # Normalised to UTC: the same instant, whatever offset the client wrote.
    assert decoded.occurred_at.utcoffset() == timedelta(0)
    assert decoded.correlation_id is None
    assert decoded.producer is None
    wire = decoded.to_dict()
    assert wire["occurred_at"] == "2026-03-01T12:00:00.123456Z"
    assert "correlation_id" not in wire
    assert "producer" not in wire
    assert validate_event(wire) == []


# --------------------------------------------------------------------------- violations


def test_metric_value_of_the_wrong_type_names_index_path_and_expectation() -> None:
    bad = make_event("run.metrics.logged", {"metrics": [{"key": "loss", "value": "abc"}]})
    batch = [make_event("run.finished"), make_event("run.tags.set"), bad]
    assert validate_batch(batch) == [
        Violation(2, "/payload/metrics/0/value", "`value` must be a number (got a string)")
    ]


def test_violations_of_several_events_keep_their_indexes() -> None:
    batch = [make_event("run.finished", actor=""), make_event("run.finished"), {"type": 1}]
    violations = validate_batch(batch)
    assert violations[0] == Violation(0, "/actor", "`actor` must not be empty")
    assert {v.index for v in violations[1:]} == {2}
    assert Violation(2, "/type", "`type` must be a string (got an integer)") in violations
    assert Violation(2, "/payload", "required field `payload` is missing") in violations


def test_unknown_envelope_field() -> None:
    assert validate_event(make_event("run.finished", foo=1)) == [
        Violation(0, "/foo", "unknown field `foo`")
    ]


@pytest.mark.parametrize("field", ["recorded_at", "position"])
def test_store_assigned_fields_are_rejected(field: str) -> None:
    event = make_event("run.finished")
    event[field] = "2026-03-01T12:00:01Z" if field == "recorded_at" else 42
    assert validate_event(event, 4) == [
        Violation(4, f"/{field}", f"`{field}` is assigned by the event store; do not send it")
    ]


def test_missing_payload_field() -> None:
    event = make_event("run.output.produced", {"name": "report.html"})
    assert validate_event(event) == [
        Violation(0, "/payload/uri", "required field `uri` is missing")
    ]


def test_missing_envelope_fields_are_each_reported() -> None:
    event = make_event("run.finished")
    del event["actor"], event["event_id"]
    assert validate_event(event) == [
        Violation(0, "/actor", "required field `actor` is missing"),
        Violation(0, "/event_id", "required field `event_id` is missing"),
    ]


def test_unknown_payload_field() -> None:
    event = make_event("run.finished", {"status": "completed", "exit_code": 0})
    assert validate_event(event) == [
        Violation(0, "/payload/exit_code", "unknown field `exit_code`")
    ]


@pytest.mark.parametrize(
    "event_id", ["not-a-uuid", "3F2B1C9E-8D4A-4E6B-9F1A-2C3D4E5F6A7B", EVENT_ID + "\n"]
)
def test_bad_event_id(event_id: str) -> None:
    violation = one(validate_event(make_event("run.finished", event_id=event_id)))
    assert violation.path == "/event_id"
    assert violation.message.startswith("`event_id` must be a UUID in lowercase hex")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (0, "`schema_version` must be >= 1 (got 0)"),
        ("1", "`schema_version` must be an integer (got a string)"),
        (True, "`schema_version` must be an integer (got a boolean)"),
        (1.5, "`schema_version` must be an integer (got a number)"),
        (4, "`schema_version` 4 is not known for `run.started`; known versions: 1, 2, 3"),
    ],
)
def test_bad_schema_version(version: object, message: str) -> None:
    event = make_event("run.started", schema_version=version)
    assert validate_event(event) == [Violation(0, "/schema_version", message)]


def test_unknown_type() -> None:
    violation = one(validate_event(make_event("run.finished", type="run.exploded")))
    assert violation.path == "/type"
    assert violation.message.startswith('`type` is not one of ["project.created",')
    assert violation.message.endswith('(got "run.exploded")')


@pytest.mark.parametrize(
    ("occurred_at", "message"),
    [
        (
            "2026-03-01T12:00:00",
            "`occurred_at` must be an RFC 3339 date-time with a timezone offset,"
            ' e.g. 2026-03-01T12:00:00Z (got "2026-03-01T12:00:00")',
        ),
        (
            "2026-02-30T12:00:00Z",
            '`occurred_at` is not a valid date-time (got "2026-02-30T12:00:00Z")',
        ),
    ],
)
def test_bad_occurred_at(occurred_at: str, message: str) -> None:
    event = make_event("run.finished", occurred_at=occurred_at)
    assert validate_event(event) == [Violation(0, "/occurred_at", message)]


def test_subject_must_belong_to_the_type_family() -> None:
    event = make_event("run.finished", subject="model:resnet50")
    assert validate_event(event) == [
        Violation(
            0,
            "/subject",
            "`subject` must be 'run:<run id>' for `run.finished` events (got \"model:resnet50\")",
        )
    ]


def test_project_event_subject_is_its_project() -> None:
    event = make_event("project.created", subject="project:other")
    assert validate_event(event) == [
        Violation(
            0,
            "/subject",
            '`subject` of a project event must be "project:vision" (got "project:other")',
        )
    ]


def test_annotation_may_be_about_any_subject_kind() -> None:
    for subject in ("project:vision", "dataset:d", "run:r", "model:m/n"):
        assert validate_event(make_event("annotation.added", subject=subject)) == []
    assert one(validate_event(make_event("annotation.added", subject="run:"))).path == "/subject"


def test_payload_is_checked_only_once_the_envelope_is_valid() -> None:
    event = make_event("run.finished", {"status": "exploded"}, actor="")
    assert validate_event(event) == [Violation(0, "/actor", "`actor` must not be empty")]


def test_all_problems_of_one_event_are_reported() -> None:
    payload = {"dataset": "d", "version": "v", "role": "training", "extra": 1}
    assert validate_event(make_event("run.input.used", payload)) == [
        Violation(
            0,
            "/payload/role",
            '`role` is not one of ["train","validation","test","evaluation","other"]'
            ' (got "training")',
        ),
        Violation(0, "/payload/extra", "unknown field `extra`"),
    ]


def test_dependent_fields_both_or_neither() -> None:
    event = make_event("run.output.produced", {"uri": "s3://x", "dataset": "features"})
    assert validate_event(event) == [
        Violation(0, "/payload/version", "field `version` is required when `dataset` is given")
    ]


def test_free_form_keys_become_escaped_json_pointers() -> None:
    payload = {"params": {"opt.lr": [1], "a/b~c": {}, "ok": "fine"}}
    assert validate_event(make_event("run.params.logged", payload)) == [
        Violation(
            0,
            "/payload/params/opt.lr",
            "`opt.lr` must be a string, a number, a boolean or null (got an array)",
        ),
        Violation(
            0,
            "/payload/params/a~1b~0c",
            "`a/b~c` must be a string, a number, a boolean or null (got an object)",
        ),
    ]


def test_bad_property_names_are_pointed_at() -> None:
    long_name = "p" * 251
    payload = {"params": {long_name: 1, "": 2}}
    assert validate_event(make_event("run.params.logged", payload)) == [
        Violation(
            0,
            f"/payload/params/{long_name}",
            "field name in `params` is longer than 250 characters",
        ),
        Violation(0, "/payload/params/", "field name in `params` must not be empty"),
    ]


@pytest.mark.parametrize(
    ("event_type", "payload", "path", "message"),
    [
        (
            "dataset.version.created",
            {"version": "v1", "uri": "s3://x", "digest": "md5:00"},
            "/payload/digest",
            "`digest` must be a digest: 'sha256:' followed by 64 lowercase hex digits"
            ' (got "md5:00")',
        ),
        (
            "run.metrics.logged",
            {"metrics": []},
            "/payload/metrics",
            "`metrics` must have at least 1 item",
        ),
        (
            "run.metrics.logged",
            {"metrics": [{"key": "loss", "value": 1, "step": -1}]},
            "/payload/metrics/0/step",
            "`step` must be >= 0 (got -1)",
        ),
        (
            "run.metrics.logged",
            {"metrics": [{"key": "loss", "value": True}]},
            "/payload/metrics/0/value",
            "`value` must be a number (got a boolean)",
        ),
        (
            "run.metrics.logged",
            {"metrics": [5]},
            "/payload/metrics/0",
            "`metrics[0]` must be an object (got an integer)",
        ),
        ("run.tags.set", {"tags": {}}, "/payload/tags", "`tags` must have at least 1 field"),
        (
            "model.alias.set",
            {"alias": "Champion", "version": 1},
            "/payload/alias",
            "`alias` must be 1 to 63 lowercase letters, digits, '_' or '-', starting with a letter"
            ' (got "Champion")',
        ),
        (
            "subject.redacted",
            {"reason": "r", "fields": ["host", "host"]},
            "/payload/fields",
            "`fields` must not contain duplicate items",
        ),
        (
            "annotation.added",
            {"text": "x" * 10001},
            "/payload/text",
            "`text` must be at most 10000 characters (got 10001)",
        ),
        ("run.finished", [], "/payload", "`payload` must be an object (got an array)"),
    ],
)
def test_payload_violation_messages(event_type: str, payload: Any, path: str, message: str) -> None:
    assert validate_event(make_event(event_type, payload)) == [Violation(0, path, message)]
    # The reference implementation agrees that the payload is invalid.

    schema = load(schema_path(f"{event_type}.v{CURRENT_VERSIONS[event_type]}"))
    assert not jsonschema.Draft202012Validator(schema).is_valid(payload)


def test_run_started_v1_rejects_v2_fields_and_v2_rejects_v1_host() -> None:
    v1 = make_event("run.started", {"name": "r", "experiment": "e"}, schema_version=1)
    assert validate_event(v1) == [Violation(0, "/payload/experiment", "unknown field `experiment`")]
    v2 = make_event("run.started", {"name": "r", "host": "h"})
    assert validate_event(v2) == [Violation(0, "/payload/host", "unknown field `host`")]


def test_not_an_object() -> None:
    assert validate_event([], 7) == [Violation(7, "", "the event must be an object (got an array)")]


def test_violations_per_event_are_capped() -> None:
    metrics = [{"key": "loss", "value": "x"} for _ in range(MAX_VIOLATIONS_PER_EVENT + 50)]
    violations = validate_event(make_event("run.metrics.logged", {"metrics": metrics}))
    assert len(violations) == MAX_VIOLATIONS_PER_EVENT + 1
    assert violations[-1] == Violation(0, "", "50 more violations not shown")


def test_decode_rejects_bad_json_and_invalid_events() -> None:
    with pytest.raises(InvalidEvent) as bad_json:
        decode_event(b'{"event_id": ', 3)
    violation = one(bad_json.value.violations)
    assert (violation.index, violation.path) == (3, "")
    assert violation.message.startswith("not valid JSON: ")

    with pytest.raises(InvalidEvent, match="/foo: unknown field `foo`") as invalid:
        decode_event(orjson.dumps(make_event("run.finished", foo=1)))
    assert invalid.value.violations == [Violation(0, "/foo", "unknown field `foo`")]


# --------------------------------------------------------------------------- upcasting


def test_run_started_v1_host_moves_into_environment() -> None:
    payload = {"name": "r", "host": "gpu-07", "environment": {"python_version": "3.11.7"}}
    event = make_event("run.started", payload, schema_version=1)
    before = copy.deepcopy(event)
    upcasted = upcast(event)
    assert event == before, "upcast must not mutate its input"
    assert upcasted == {
        **before,
        "schema_version": 3,
        "payload": {"name": "r", "environment": {"python_version": "3.11.7", "host": "gpu-07"}},
    }
    assert validate_event(upcasted) == []


def test_run_started_v1_without_environment_gets_one() -> None:
    event = make_event("run.started", {"name": "r", "host": "gpu-07"}, schema_version=1)
    assert upcast(event)["payload"] == {"name": "r", "environment": {"host": "gpu-07"}}


def test_run_started_v1_without_host_is_unchanged_but_current() -> None:
    event = make_event("run.started", {"name": "r"}, schema_version=1)
    assert upcast(event) == {**event, "schema_version": 3}


@pytest.mark.parametrize(
    ("event_type", "old"),
    [
        ("run.started", {"name": "r", "code": {"git_commit": "4e1c2a9", "git_dirty": True}}),
        ("dataset.version.created", {"version": "v1", "uri": "s3://d/1", "digest": DIGEST}),
    ],
)
def test_versions_that_only_add_fields_upcast_unchanged(
    event_type: str, old: dict[str, Any]
) -> None:
    version = CURRENT_VERSIONS[event_type] - 1
    event = make_event(event_type, copy.deepcopy(old), schema_version=version)
    upcasted = upcast(event)
    assert upcasted["schema_version"] == CURRENT_VERSIONS[event_type]
    assert upcasted["payload"] == old
    assert upcasted["payload"] is not event["payload"]
    assert validate_event(upcasted) == []


def test_every_old_version_has_an_upcaster() -> None:
    expected = {(t, v) for t in EVENT_TYPES for v in known_versions(t) if v < CURRENT_VERSIONS[t]}
    assert set(UPCASTERS) == expected


def test_current_events_are_returned_as_is_and_newer_ones_refused() -> None:
    event = make_event("run.started")
    assert upcast(event) is event
    with pytest.raises(ValueError, match="newer than the current"):
        upcast({**event, "schema_version": CURRENT_VERSIONS["run.started"] + 1})


def test_decoding_upcasts_to_the_current_version() -> None:
    event = make_event("run.started", {"name": "r", "host": "h"}, schema_version=1)
    decoded = decode_event(orjson.dumps(event))
    assert decoded.schema_version == CURRENT_VERSIONS["run.started"] == 3
    assert decoded.payload == {"name": "r", "environment": {"host": "h"}}


# --------------------------------------------------------------------------- events


def test_event_subject_parts() -> None:
    decoded = event_from_dict(make_event("model.created", subject="model:team/resnet50"))
    assert (decoded.subject_kind, decoded.subject_key) == ("model", "team/resnet50")


def test_integral_floats_in_integer_fields_become_ints() -> None:
    payload = {"metrics": [{"key": "loss", "value": 2.0, "step": 7.0}]}
    event = make_event("run.metrics.logged", payload, schema_version=1.0)
    decoded = decode_event(orjson.dumps(event))
    assert decoded.schema_version == 1
    assert type(decoded.schema_version) is int
    step = decoded.payload["metrics"][0]["step"]
    assert (step, type(step)) == (7, int)
    value = decoded.payload["metrics"][0]["value"]
    assert (value, type(value)) == (2.0, float), "numbers stay numbers"
    alias = decode_event(
        orjson.dumps(make_event("model.alias.set", {"alias": "a", "version": 3.0}))
    )
    assert type(alias.payload["version"]) is int


def test_event_to_dict_spells_utc_as_z() -> None:
    event = Event(
        event_id=EVENT_ID,
        type="run.finished",
        schema_version=1,
        occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        actor="alice",
        project="vision",
        subject=f"run:{RUN_ID}",
        payload={"status": "completed"},
    )
    assert event.to_dict()["occurred_at"] == "2026-03-01T12:00:00Z"
    assert decode_event(encode_event(event)) == event

"""The fast check for metric batches accepts nothing the schema refuses, and takes the common case."""

from __future__ import annotations

import copy
import random
from typing import Any

import fastjsonschema
import pytest

from studbook_server.domain import contract

VALID_POINTS: list[dict[str, Any]] = [
    {"key": "loss", "value": 0.5},
    {"key": "loss", "value": 1, "step": 3},
    {"key": "val/acc", "value": -2.5e-3, "step": 0, "timestamp": "2026-03-01T09:00:00.123456Z"},
    {"key": "x" * 250, "value": 1e300, "timestamp": "2026-03-01T09:00:00+02:00"},
    {"key": "k", "value": 0, "step": 2**63 - 1},
]

BAD_VALUES: list[tuple[str, Any]] = [
    ("key", ""), ("key", "x" * 251), ("key", 3), ("key", None),
    ("value", "0.5"), ("value", True), ("value", None), ("value", [1]),
    ("step", -1), ("step", 2**63), ("step", "3"), ("step", True), ("step", 1.5),
    ("timestamp", "2026-02-30T00:00:00Z"), ("timestamp", "2026-03-01 09:00:00Z"),
    ("timestamp", "2026-03-01T09:00:00"), ("timestamp", 5), ("timestamp", "yesterday"),
    ("extra", 1),
]  # fmt: skip


def _schema_accepts(payload: Any) -> bool:
    try:
        contract._validator("run.metrics.logged.v1")(copy.deepcopy(payload))
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def test_valid_batches_take_the_fast_path() -> None:
    payload = {"metrics": VALID_POINTS}
    assert contract._metrics_v1_fast_ok(payload)
    assert _schema_accepts(payload)


@pytest.mark.parametrize(("field", "bad"), BAD_VALUES)
def test_the_fast_path_never_accepts_what_the_schema_refuses(field: str, bad: Any) -> None:
    for base in VALID_POINTS:
        point = {**base, field: bad}
        payload = {"metrics": [VALID_POINTS[0], point]}
        if contract._metrics_v1_fast_ok(payload):
            assert _schema_accepts(payload), payload


def test_random_payloads_agree_with_the_schema() -> None:
    rng = random.Random(7)
    shapes: list[Any] = [None, [], {}, {"metrics": []}, {"metrics": {}}, {"metrics": [1]},
                         {"metrics": [{"key": "a", "value": 1}], "other": 1}]  # fmt: skip
    for _ in range(2000):
        points = [dict(rng.choice(VALID_POINTS)) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.6:
            field, bad = rng.choice(BAD_VALUES)
            points[rng.randrange(len(points))][field] = bad
        if rng.random() < 0.1:
            del points[0]["key"]
        shapes.append({"metrics": points})
    for payload in shapes:
        fast = contract._metrics_v1_fast_ok(payload)
        assert not fast or _schema_accepts(payload), payload
    assert any(contract._metrics_v1_fast_ok(p) for p in shapes)


def test_an_invalid_batch_still_gets_the_precise_message() -> None:
    event = {
        "event_id": "0195f0c4-5d2e-7a1b-8c3d-4e5f60718293", "type": "run.metrics.logged",
        "schema_version": 1, "occurred_at": "2026-03-01T09:00:00Z", "actor": "a",
        "project": "p", "subject": "run:r",
        "payload": {"metrics": [{"key": "loss", "value": 1}, {"key": "loss", "value": "x"}]},
    }  # fmt: skip
    [violation] = contract.validate_event(event)
    assert violation.path == "/payload/metrics/1/value"


def test_points_of_one_second_are_parsed_once_and_still_checked() -> None:
    same_second = [
        {"key": "loss", "value": 1.0, "step": n, "timestamp": f"2026-03-01T09:00:00.{n:06d}Z"}
        for n in range(1, 50)
    ]
    assert contract._metrics_v1_fast_ok({"metrics": same_second})
    # A cached second never lets another second through unchecked.
    for bad in ("2026-02-30T09:00:00.5Z", "2026-03-01T09:00:00.5+25:00", "2026-03-01T09:00:00.5"):
        payload = {"metrics": [*same_second, {"key": "loss", "value": 1.0, "timestamp": bad}]}
        assert not contract._metrics_v1_fast_ok(payload), bad
        event = {
            "event_id": "0195f0c4-5d2e-7a1b-8c3d-4e5f60718293", "type": "run.metrics.logged",
            "schema_version": 1, "occurred_at": "2026-03-01T09:00:00Z", "actor": "a",
            "project": "p", "subject": "run:r", "payload": payload,
        }  # fmt: skip
        assert contract.validate_event(event), bad  # and the full check refuses it too


def test_a_second_at_the_edge_of_the_time_range_is_not_cached() -> None:
    latest = contract._Latest.get()
    edge = latest.replace(microsecond=0)  # part of this second lies past the allowance
    prefix = edge.strftime("%Y-%m-%dT%H:%M:%S")
    if latest.microsecond != 999_999:
        assert not contract._whole_second_valid(prefix, "Z")
    assert contract._whole_second_valid("2026-03-01T09:00:00", "+02:00")
    assert not contract._whole_second_valid("1969-12-31T23:59:59", "Z")
    assert not contract._whole_second_valid("2026-02-30T00:00:00", "Z")

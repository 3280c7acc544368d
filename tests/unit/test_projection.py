"""Pure projection rules: version numbering, bitemporal aliases, metric summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import at, ev

from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import Assignment, State, StoredEvent, project

K0 = datetime(2026, 6, 1, tzinfo=UTC)


def stored(
    events: list[dict[str, Any]], start: int = 1, recorded: datetime = K0
) -> list[StoredEvent]:
    return [
        StoredEvent(event_from_dict(e), start + i, recorded + timedelta(seconds=i))
        for i, e in enumerate(events)
    ]


def register(n: int) -> list[dict[str, Any]]:
    return [
        ev("model.version.registered", "model:m", {"artifact_uri": f"s3://m/{i}"}) for i in range(n)
    ]


def as_of(rows: list[Assignment], t: datetime, known: datetime) -> int | None:
    """Which version held the name at occurred time t, as known at recorded time `known`."""
    hits = [
        r.version
        for r in rows
        if r.recorded_from <= known
        and (r.recorded_to is None or known < r.recorded_to)
        and r.valid_from <= t
        and (r.valid_to is None or t < r.valid_to)
    ]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def ts(days: float) -> datetime:
    return datetime.fromisoformat(at(days))


def test_version_numbers_follow_event_order_and_continue_from_state() -> None:
    state = State(model_numbers={("churn", "m"): 4})
    ch = project(stored(register(3)), state)
    assert [r[2] for r in ch.model_versions] == [5, 6, 7]
    assert state.model_numbers[("churn", "m")] == 7


def test_alias_moves_close_intervals_in_occurred_time() -> None:
    events = [
        *register(2),
        ev("model.alias.set", "model:m", {"alias": "production", "version": 1}, when=at(1)),
        ev("model.alias.set", "model:m", {"alias": "production", "version": 2}, when=at(5)),
    ]
    state = State()
    ch = project(stored(events), state)
    rows = ch.assignments_new
    late = K0 + timedelta(days=1)
    assert as_of(rows, ts(0), late) is None
    assert as_of(rows, ts(2), late) == 1
    assert as_of(rows, ts(6), late) == 2


def test_a_late_recorded_move_rewrites_the_past_only_from_when_it_was_known() -> None:
    # Known first: production = 1 from day 1. Recorded a week later: production = 2 from day 3.
    first = stored(
        [
            *register(2),
            ev("model.alias.set", "model:m", {"alias": "production", "version": 1}, when=at(1)),
        ]
    )
    state = State()
    ch1 = project(first, state)
    k_late = K0 + timedelta(days=7)
    second = stored(
        [ev("model.alias.set", "model:m", {"alias": "production", "version": 2}, when=at(3))],
        start=10, recorded=k_late,
    )  # fmt: skip
    ch2 = project(second, state)
    # The day-1 row was believed until the late event was recorded, then cut at day 3.
    assert ch2.assignments_closed == [(3, 0, k_late)]
    rows = [*ch1.assignments_new, *ch2.assignments_new]
    for r in ch1.assignments_new:
        r.recorded_to = k_late  # what the writer's UPDATE does
    before, after = k_late - timedelta(seconds=1), k_late
    assert as_of(rows, ts(4), before) == 1  # what we knew then
    assert as_of(rows, ts(4), after) == 2  # what was true, as known now
    assert as_of(rows, ts(2), after) == 1
    assert {(r.part, r.version) for r in ch2.assignments_new} == {(1, 1), (0, 2)}


def test_a_late_move_before_a_known_later_move_ends_where_that_one_starts() -> None:
    events = [
        *register(3),
        ev("model.alias.set", "model:m", {"alias": "prod", "version": 1}, when=at(1)),
        ev("model.alias.set", "model:m", {"alias": "prod", "version": 3}, when=at(10)),
        ev("model.alias.set", "model:m", {"alias": "prod", "version": 2}, when=at(5)),
    ]
    ch = project(stored(events), State())
    rows = ch.assignments_new
    now = K0 + timedelta(days=1)
    assert [as_of(rows, ts(d), now) for d in (0, 2, 6, 11)] == [None, 1, 2, 3]


def test_alias_to_a_version_that_does_not_exist_is_rejected_with_a_reason() -> None:
    ch = project(
        stored([*register(1), ev("model.alias.set", "model:m", {"alias": "p", "version": 2})]),
        State(),
    )
    assert len(ch.rejected) == 1
    assert "version 2" in ch.rejected[0][1]
    assert "latest is version 1" in ch.rejected[0][1]
    assert ch.assignments_new == []


def test_removing_an_alias_that_is_not_set_is_rejected() -> None:
    ch = project(stored([ev("model.alias.removed", "model:m", {"alias": "p"})]), State())
    assert "no alias `p`" in ch.rejected[0][1]


def test_same_dataset_version_again_is_a_no_op_but_a_different_digest_is_rejected() -> None:
    def dv(d: str) -> dict[str, Any]:
        return ev(
            "dataset.version.created", "dataset:d", {"version": "v1", "uri": "s3://d", "digest": d}
        )

    same, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    ch = project(stored([dv(same), dv(same), dv(other)]), State())
    assert len(ch.dataset_versions) == 1
    assert len(ch.rejected) == 1
    assert "already exists" in ch.rejected[0][1]


def test_metric_summary_keeps_latest_by_step_and_min_max() -> None:
    points = [{"key": "loss", "value": v, "step": s} for s, v in [(2, 0.5), (0, 0.9), (1, 0.2)]]
    ch = project(stored([ev("run.metrics.logged", "run:r", {"metrics": points})]), State())
    summary = ch.metric_summaries[("churn", "r", "loss")]
    assert (summary.value, summary.step, summary.min_value, summary.max_value, summary.points) == (
        0.5,
        2,
        0.2,
        0.9,
        3,
    )

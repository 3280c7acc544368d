"""Pure projection rules of what `studbook reproduce` records: re-run edges between runs, the
diff's digest check (and a redacted diff), a dataset version's source."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import digest, ev

from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import State, StoredEvent, project, refused_redactions

K0 = datetime(2026, 6, 1, tzinfo=UTC)
DIFF = "-A = 1\n+A = 2\n"


def stored(events: list[dict[str, Any]]) -> list[StoredEvent]:
    return [
        StoredEvent(event_from_dict(e), 1 + i, K0 + timedelta(seconds=i))
        for i, e in enumerate(events)
    ]


def started(run: str, **payload: Any) -> dict[str, Any]:
    return ev("run.started", f"run:{run}", {"name": run, **payload}, version=3)


def test_a_re_run_is_an_edge_from_the_original_typed_by_whether_params_changed() -> None:
    ch = project(
        stored([
            started("orig"),
            started("again", reproduces={"run": "orig", "derived": False}),
            started("changed", reproduces={"run": "orig", "derived": True}),
            started("plain", reproduces={"run": "orig"}),
        ]),
        State(),
    )  # fmt: skip
    assert not ch.rejected
    edges = {(k[1], k[2], k[3]) for k in ch.edges}
    assert edges == {
        ("run:orig", "run:again", "reproduced"),
        ("run:orig", "run:changed", "derived_run"),
        ("run:orig", "run:plain", "reproduced"),
    }


def diff_event(text: str, claimed: str, size: int) -> dict[str, Any]:
    payload = {"digest": claimed, "size_bytes": size, "encoding": "utf-8", "diff": text}
    return ev("run.diff.recorded", "run:r", payload)


def test_a_diff_must_be_what_its_digest_and_size_say() -> None:
    good = "sha256:" + hashlib.sha256(DIFF.encode()).hexdigest()
    ok = project(stored([diff_event(DIFF, good, len(DIFF))]), State())
    assert ok.rejected == []
    forged = project(stored([diff_event(DIFF, digest("other"), len(DIFF))]), State())
    (reason,) = [r for _, r in forged.rejected]
    assert "does not match its `digest`" in reason
    short = project(stored([diff_event(DIFF, good, 3)]), State())
    assert len(short.rejected) == 1


def test_a_redacted_diff_replays_without_a_dead_letter() -> None:
    (replayed,) = stored([diff_event(DIFF, digest("any"), 10)])
    del replayed.event.payload["diff"]  # what a redaction of `diff` leaves in the store
    assert project([replayed], State()).rejected == []


def test_a_dataset_version_keeps_its_source() -> None:
    source = {"uri": "file:///home/ada/data/train.csv", "repo_path": "data/train.csv"}
    ch = project(
        stored([
            ev("dataset.version.created", "dataset:train",
               {"version": "v1", "uri": "s3://d/1", "digest": digest("1"), "source": source},
               version=2),
            ev("dataset.version.created", "dataset:train",
               {"version": "v2", "uri": "s3://d/2", "digest": digest("2")}, version=1),
        ]),
        State(),
    )  # fmt: skip
    assert [row[-1] for row in ch.dataset_versions] == [source, None]


def test_the_re_run_link_is_lineage_and_cannot_be_redacted() -> None:
    assert refused_redactions(["reproduces", "reproduces.run", "diff", "source.uri"]) == [
        "reproduces",
        "reproduces.run",
    ]

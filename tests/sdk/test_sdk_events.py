"""What the SDK emits: every event kind validates against the contract; run semantics."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import studbook
from studbook._client import Client
from studbook._events import rfc3339, uuid7
from studbook._transport import MemoryTransport
from studbook_server.domain.contract import validate_event

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def memory(install: Callable[..., Client]) -> MemoryTransport:
    transport = MemoryTransport()
    install(transport)
    return transport


def assert_valid(events: list[dict[str, Any]]) -> None:
    for event in events:
        assert validate_event(event) == [], (event["type"], validate_event(event))
        assert UUID.match(event["event_id"]), event["event_id"]
        assert TIME.match(event["occurred_at"]), event["occurred_at"]
        assert event["producer"]["name"] == "studbook-sdk"


def test_uuid7_layout_and_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for text in ids:
        assert UUID.match(text)
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after


def test_rfc3339_has_microseconds_and_z() -> None:
    ns = 1_772_366_400_123_456_789  # 2026-03-01T12:00:00.123456789Z
    assert rfc3339(ns) == "2026-03-01T12:00:00.123456Z"
    assert rfc3339(ns + 1_000_000_000) == "2026-03-01T12:00:01.123456Z"
    assert datetime.fromisoformat(rfc3339(time.time_ns())).tzinfo == UTC


def test_every_event_kind_validates_against_the_contract(
    memory: MemoryTransport, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.csv").write_text("user,churned\n1,0\n")
    raw = studbook.dataset_version("churn-raw", uri="s3://d/raw/", digest="sha256:" + "a" * 64)
    ds = studbook.dataset_version(
        "churn-events",
        path=data,
        parents=[raw, ("churn-raw", raw.version)],
        row_count=1,
        schema=[{"name": "user", "type": "int64"}],
    )
    with studbook.start_run(
        "xgb-baseline",
        params={"lr": 0.1, "depth": 6, "opt": "adam", "amp": True, "none": None, "dims": [1, 2]},
        tags={"team": "growth"},
        experiment="xgb",
    ) as run:
        run.use(ds, role="train")
        run.use("churn-raw@" + raw.version, role="validation")
        run.log_metric("loss", 0.3, step=1)
        run.log_metric("loss", 0.2)
        run.log_metrics({"loss": 0.1, "acc": 0.9}, step=2)
        run.log_params({"nan": math.nan, "inf": math.inf})
        run.set_tags({"team": None, "stage": "dev"})
        run.log_output("s3://bucket/model.pkl", name="model.pkl")
        run.log_output(data / "part-0.csv")
        features = studbook.dataset_version("features", path=data, produced_by=run)
        run.log_output(features.uri, dataset_version=features)
        mv = run.register_model(
            "churn-clf",
            artifact_uri="s3://bucket/model.pkl",
            framework="xgboost",
            signature={"inputs": [{"name": "x", "shape": [-1, 3]}]},
            digest="sha256:" + "b" * 64,
            description="baseline",
        )
    with studbook.start_run("child", parent=run):
        pass
    studbook.set_alias("churn-clf", version=1, alias="production")
    studbook.remove_alias(mv, "production")
    studbook.approve("churn-clf", 1, "ok", evidence=[run.id, "https://r/1"])
    studbook.reject("churn-clf", 1, comment="regressed")
    studbook.deploy("churn-clf", 1, "prod", target="k8s/churn")
    studbook.undeploy("churn-clf", 1, "prod")
    studbook.annotate(run, "loss spikes at step 2", labels={"kind": "incident"})
    studbook.annotate(ds, "dedup'd")
    studbook.annotate(mv, "fast")
    studbook.annotate("project:churn", "kick-off")
    studbook.flush()

    events = memory.events
    assert_valid(events)
    kinds = Counter(e["type"] for e in events)
    emitted = {
        "dataset.version.created", "run.started", "run.params.logged", "run.metrics.logged",
        "run.tags.set", "run.input.used", "run.output.produced", "run.finished",
        "model.version.registered", "model.alias.set", "model.alias.removed",
        "model.version.approved", "model.version.rejected", "model.version.deployed",
        "model.version.undeployed", "annotation.added",
    }  # fmt: skip
    assert set(kinds) == emitted
    assert len({e["event_id"] for e in events}) == len(events)

    started = next(e for e in events if e["type"] == "run.started")
    assert started["schema_version"] == 3
    assert started["subject"] == f"run:{run.id}"
    env = started["payload"]["environment"]
    assert env["python_version"].count(".") == 2
    assert env["packages_digest"].startswith("sha256:")
    assert any(p.startswith("orjson==") for p in env["packages"])
    assert env["packages"] == sorted(env["packages"], key=str.casefold)
    assert started["payload"]["experiment"] == "xgb"
    params = [e["payload"]["params"] for e in events if e["type"] == "run.params.logged"]
    assert params[0]["dims"] == "[1,2]"
    assert params[1] == {"nan": "nan", "inf": "inf"}
    registered = next(e for e in events if e["type"] == "model.version.registered")
    assert registered["payload"]["run"] == run.id
    assert registered["subject"] == "model:churn-clf"
    assert mv.event_id == registered["event_id"]
    version = next(e for e in events if e["subject"] == "dataset:churn-events")
    assert version["payload"]["version"] == ds.version == ds.digest[7:19]
    assert version["payload"]["uri"] == data.resolve().as_uri()
    assert version["schema_version"] == 2
    assert version["payload"]["source"]["uri"] == data.resolve().as_uri()
    produced = next(e for e in events if e["subject"] == "dataset:features")
    assert produced["payload"]["produced_by_run"] == run.id
    finished = [e for e in events if e["type"] == "run.finished"]
    assert [f["payload"] for f in finished] == [{"status": "completed"}] * 2
    child = [e for e in events if e["type"] == "run.started"][1]
    assert child["payload"]["parent_run"] == run.id


def test_metric_points_are_batched_up_to_1000_per_event(memory: MemoryTransport) -> None:
    with studbook.start_run("many") as run:
        for step in range(2500):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
    studbook.flush()  # the run's end is handed over; flush waits for its delivery
    metrics = [e for e in memory.events if e["type"] == "run.metrics.logged"]
    assert_valid(metrics)
    assert [len(e["payload"]["metrics"]) for e in metrics] == [1000, 1000, 500]
    points = [p for e in metrics for p in e["payload"]["metrics"]]
    assert [p["step"] for p in points] == list(range(2500))
    assert all(TIME.match(p["timestamp"]) for p in points)
    # run.finished comes after every metric of the run.
    types = [e["type"] for e in memory.events]
    assert types.index("run.finished") > max(i for i, t in enumerate(types) if t.endswith("logged"))


def test_points_are_sent_by_time_without_a_flush(memory: MemoryTransport) -> None:
    run = studbook.start_run("slow")
    run.log_metric("loss", 1.0, step=0)
    deadline = time.monotonic() + 5
    while not any(e["type"] == "run.metrics.logged" for e in memory.events):
        assert time.monotonic() < deadline, "the metric point was never sent"
        time.sleep(0.01)
    run.finish()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_raises_at_once_naming_the_key(
    memory: MemoryTransport, bad: float
) -> None:
    with studbook.start_run("nan") as run:
        with pytest.raises(ValueError, match=r"'val/loss'.*finite"):
            run.log_metric("val/loss", bad, step=1)
        with pytest.raises(ValueError, match=r"'acc'.*finite"):
            run.log_metrics({"loss": 0.1, "acc": bad})
    assert not [e for e in memory.events if e["type"] == "run.metrics.logged"]


def test_metric_argument_checks(memory: MemoryTransport) -> None:
    with studbook.start_run("checks") as run:
        with pytest.raises(TypeError, match="'loss'"):
            run.log_metric("loss", "0.3")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="step must be >= 0"):
            run.log_metric("loss", 0.3, step=-1)
        with pytest.raises(TypeError, match="step must be an int"):
            run.log_metric("loss", 0.3, step=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="metric key"):
            run.log_metric("", 0.3)
        run.log_metric("int-value", 3)  # ints (and numpy/torch scalars) become floats
    studbook.flush()
    points = [
        p
        for e in memory.events
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]
    assert points[0]["value"] == 3.0
    assert "step" not in points[0]


def test_names_are_checked_in_the_callers_thread(memory: MemoryTransport) -> None:
    with pytest.raises(ValueError, match="run name"):
        studbook.start_run("")
    with pytest.raises(ValueError, match="experiment"):
        studbook.start_run("spaces are fine in a run name", experiment="not here")
    with pytest.raises(ValueError, match="alias"):
        studbook.set_alias("churn-clf", version=1, alias="Production")
    with pytest.raises(ValueError, match="version must be >= 1"):
        studbook.deploy("churn-clf", 0, "prod")
    with pytest.raises(ValueError, match="subject"):
        studbook.annotate("churn", "no kind")
    with pytest.raises(ValueError, match="path to hash, or a digest"):
        studbook.dataset_version("d", uri="s3://x")
    with studbook.start_run("ok") as run, pytest.raises(ValueError, match="role"):
        run.use(("d", "v1"), role="training")


def test_exception_in_block_finishes_failed_and_reraises(memory: MemoryTransport) -> None:
    class CUDAOutOfMemoryError(RuntimeError):
        pass

    def train(run: studbook.Run) -> None:
        with run:
            run.log_metric("loss", 0.5, step=0)
            raise CUDAOutOfMemoryError("CUDA out of memory.")

    run = studbook.start_run("oom")
    with pytest.raises(CUDAOutOfMemoryError, match="out of memory"):
        train(run)
    studbook.flush()
    finished = [e for e in memory.events if e["type"] == "run.finished"]
    assert_valid(finished)
    assert finished[0]["payload"] == {
        "status": "failed",
        "error": {"type": "CUDAOutOfMemoryError", "message": "CUDA out of memory."},
    }
    assert any(e["type"] == "run.metrics.logged" for e in memory.events)
    assert run.finished
    with pytest.raises(studbook.StudbookError, match="has finished"):
        run.log_metric("loss", 0.1)


def test_keyboard_interrupt_marks_the_run_killed(memory: MemoryTransport) -> None:
    with pytest.raises(KeyboardInterrupt), studbook.start_run("interrupted"):
        raise KeyboardInterrupt
    studbook.flush()
    finished = [e for e in memory.events if e["type"] == "run.finished"]
    assert finished[0]["payload"]["status"] == "killed"
    assert_valid(finished)


def test_params_and_tags_are_split_into_events_of_1000(memory: MemoryTransport) -> None:
    with studbook.start_run("wide") as run:
        run.log_params({f"p{i}": i for i in range(2001)})
        run.set_tags({f"t{i}": str(i) for i in range(1001)})
    studbook.flush()
    params = [e for e in memory.events if e["type"] == "run.params.logged"]
    tags = [e for e in memory.events if e["type"] == "run.tags.set"]
    assert [len(e["payload"]["params"]) for e in params] == [1000, 1000, 1]
    assert [len(e["payload"]["tags"]) for e in tags] == [1000, 1]
    assert_valid(params + tags)


def test_init_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDBOOK_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("STUDBOOK_PROJECT", "churn")
    monkeypatch.setenv("STUDBOOK_ACTOR", "ci-bot")
    monkeypatch.setenv("STUDBOOK_TOKEN", "secret")
    from studbook._config import Config

    config = Config.resolve()
    assert (config.url, config.project, config.actor, config.token) == (
        "http://127.0.0.1:9", "churn", "ci-bot", "secret",
    )  # fmt: skip
    monkeypatch.delenv("STUDBOOK_ACTOR")
    assert "@" in Config.resolve().actor


def test_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(studbook.ConfigError, match="STUDBOOK_PROJECT"):
        studbook.init(url="http://127.0.0.1:9")
    with pytest.raises(studbook.ConfigError, match="project"):
        studbook.init(project="Churn Models")
    with pytest.raises(studbook.ConfigError, match="scheme"):
        studbook.init(url="ftp://x", project="churn")
    with pytest.raises(studbook.ConfigError, match=r"studbook\.init"):
        studbook.start_run("no-config")


def test_backdate_shifts_event_times_and_restores_the_clock(memory: MemoryTransport) -> None:
    from datetime import UTC, datetime, timedelta

    when = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    with studbook.backdate(when), studbook.start_run("past") as run:
        run.log_metric("loss", 0.5, step=1)
    with studbook.start_run("present"):
        pass
    studbook.flush()
    times = {
        (e["payload"].get("name"), e["type"]): datetime.fromisoformat(e["occurred_at"])
        for e in memory.events
    }
    past = times[("past", "run.started")]
    assert when <= past < when + timedelta(seconds=30)
    points = [
        p
        for e in memory.events
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]
    assert when <= datetime.fromisoformat(points[0]["timestamp"]) < when + timedelta(seconds=30)
    assert times[("present", "run.started")] > datetime.now(UTC) - timedelta(minutes=5)
    with pytest.raises(ValueError, match="timezone"), studbook.backdate(datetime(2026, 3, 1)):
        pass


def test_a_run_can_be_given_its_own_id(memory: MemoryTransport) -> None:
    with studbook.start_run("named", run_id="job-42") as run:
        assert run.id == "job-42"
    studbook.flush()
    assert {e["subject"] for e in memory.events} == {"run:job-42"}
    with pytest.raises(ValueError, match="run_id"):
        studbook.start_run("bad", run_id="has spaces")

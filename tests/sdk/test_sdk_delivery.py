"""No loss: batching, the spool, re-sending, refusals, back-pressure and fork safety.

Against a stub of the ingest gateway (see conftest.Gateway): 202, 500, 422, 401, 403, or not
listening at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

import studbook
from conftest import Gateway
from studbook import _api
from studbook._client import Client
from studbook._spool import destination_key
from studbook._transport import MemoryTransport, Outcome, Sent


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.ndjson")) if spool_dir.exists() else []


def emit_notes(count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        studbook.annotate("project:churn", f"note {i}")


def notes(events: Sequence[dict[str, Any]]) -> list[int]:
    return [int(e["payload"]["text"].split()[1]) for e in events if e["type"] == "annotation.added"]


def test_batches_are_posted_as_json_arrays_with_the_token(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url, token="s3cret", linger_s=5.0)
    emit_notes(3)
    studbook.flush()
    assert notes(gateway.accepted) == [0, 1, 2]
    assert len(gateway.requests) == 1  # one batch
    headers = gateway.headers[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    assert studbook.last_consistency_token() == "ct-3"


def test_no_authorization_header_without_a_token(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url)
    emit_notes(1)
    studbook.flush()
    assert "Authorization" not in gateway.headers[0]


def test_gateway_down_spools_then_resends_everything_in_order_exactly_once(
    down_gateway: Gateway,
    install: Callable[..., Client],
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[tuple[str, bytes]] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, Path(path).read_bytes() if os.path.isfile(path) else b""))

    monkeypatch.setattr(os, "fsync", spy_fsync)
    # Slow retries: the gateway stays down for the first part of the test.
    client = install(url=down_gateway.url, retry_initial_s=0.3, retry_max_s=0.3)
    run = studbook.start_run("offline")
    for step in range(1500):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    emit_notes(20)
    studbook.flush()  # returns once everything is spooled

    files = spool_files(spool_dir)
    assert len(files) == 1
    name = files[0].name
    assert name.startswith(destination_key(down_gateway.url))
    assert f"-{os.getpid()}." in name
    lines = [orjson.loads(line) for line in files[0].read_bytes().splitlines()]
    assert notes(lines) == list(range(20))
    assert (
        sum(len(e["payload"]["metrics"]) for e in lines if e["type"] == "run.metrics.logged")
        == 1500
    )
    # Each batch was fsync'd once written: the last sync saw the whole file.
    assert synced
    assert synced[-1] == (str(files[0]), files[0].read_bytes())

    emit_notes(5, start=20)  # while spooling, new events queue up behind the spooled ones
    studbook.flush()
    down_gateway.start()
    run.log_metric("loss", 0.0, step=1500)
    run.finish()
    studbook.flush()  # finish hands the run's end over; flush waits for its delivery
    wait_until(lambda: not spool_files(spool_dir), what="the spool to be re-sent")

    accepted = down_gateway.accepted
    ids = [e["event_id"] for e in accepted]
    assert all(n == 1 for n in Counter(ids).values()), "an event was accepted twice"
    assert notes(accepted) == list(range(25))
    steps = [
        p["step"]
        for e in accepted
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]
    assert steps == list(range(1501))
    types = [e["type"] for e in accepted]
    assert types[0] == "run.started"
    assert types[-1] == "run.finished"
    assert client.dispatcher().stats["resent"] == len(accepted)


def test_5xx_is_transient(
    gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    gateway.mode = "fail"
    install(url=gateway.url, retry_initial_s=0.3, retry_max_s=0.3)
    emit_notes(10)
    studbook.flush()
    assert gateway.requests
    assert not gateway.accepted
    assert len(spool_files(spool_dir)) == 1
    gateway.mode = "accept"
    wait_until(lambda: not spool_files(spool_dir), what="the spool to be re-sent")
    assert notes(gateway.accepted) == list(range(10))


def test_422_raises_event_rejected_at_the_next_call_and_keeps_the_good_events(
    gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    gateway.reject = lambda e: "must not say bad" if e["payload"].get("text") == "bad" else None
    client = install(url=gateway.url, linger_s=5.0)  # sent at flush only
    studbook.annotate("project:churn", "note 0")
    studbook.annotate("project:churn", "bad")
    studbook.annotate("project:churn", "note 2")
    with pytest.raises(studbook.EventRejected) as caught:
        studbook.flush()
    err = caught.value
    assert err.status == 422
    assert err.errors == [{"index": 1, "path": "/payload/text", "message": "must not say bad"}]
    assert err.event_types[1] == "annotation.added"
    assert "index 1" in str(err)
    assert "/payload/text" in str(err)
    assert notes(gateway.accepted) == [0, 2]  # the good ones were sent again on their own
    assert not spool_files(spool_dir)  # a refused batch is not spooled
    studbook.flush()  # reported once

    # Raised at the next SDK call when the caller does not flush.
    studbook.annotate("project:churn", "bad")
    client.dispatcher().flush(None)  # sent, without raising
    with pytest.raises(studbook.EventRejected):
        studbook.annotate("project:churn", "note 3")


def log_steps(run: studbook.Run, start: int, stop: int) -> None:
    for step in range(start, stop):
        run.log_metric("loss", 1.0 / (step + 1), step=step)


def metric_steps(events: Sequence[dict[str, Any]]) -> list[int]:
    return [
        p["step"]
        for e in events
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]


def spooled(spool_dir: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line) for f in spool_files(spool_dir) for line in f.read_bytes().splitlines()
    ]


def sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "studbook" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_spools_warns_once_and_a_new_token_sends_everything_in_order(
    gateway: Gateway,
    install: Callable[..., Client],
    spool_dir: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    gateway.tokens = {"old", "new"}
    client = install(url=gateway.url, token="old", retry_initial_s=0.02, retry_max_s=0.02)
    run = studbook.start_run("long job")
    log_steps(run, 0, 300)
    studbook.flush()
    assert metric_steps(gateway.accepted) == list(range(300))

    # Mid-run, the token is revoked (401) or loses its write scope (403).
    if status == 401:
        gateway.tokens = {"new"}
    else:
        gateway.read_only = {"old"}

    def go_on() -> None:
        log_steps(run, 300, 3000)
        emit_notes(5)
        studbook.flush()  # returns: everything is spooled

    with pytest.warns(UserWarning, match=f"refused the token \\(HTTP {status}") as warned:
        go_on()
    assert len(warned) == 1
    assert "studbook.init" in str(warned[0].message)
    assert warned[0].filename == __file__  # attributed to the caller's line, not the SDK's

    # Retries go on, with the refused token, quietly: a second warning would fail this test.
    refused_before = len(gateway.requests)
    wait_until(lambda: len(gateway.requests) >= refused_before + 3, what="retries")
    log_steps(run, 3000, 3500)
    studbook.flush()
    logged = sdk_warnings(caplog)
    assert len(logged) == 1
    assert "refused the token" in logged[0]
    assert metric_steps(gateway.accepted) == list(range(300))  # nothing stored meanwhile...
    held = spooled(spool_dir)
    assert metric_steps(held) == list(range(300, 3500))  # ...and nothing dropped
    assert notes(held) == list(range(5))

    client.set_token("new")
    log_steps(run, 3500, 4000)
    run.finish()  # would raise EventRejected if anything had been refused for good
    wait_until(lambda: not spool_files(spool_dir), what="the spool to be re-sent")
    studbook.flush()

    accepted = gateway.accepted
    assert all(n == 1 for n in Counter(e["event_id"] for e in accepted).values())
    assert metric_steps(accepted) == list(range(4000))
    assert notes(accepted) == list(range(5))
    assert [e["type"] for e in accepted][-1] == "run.finished"
    assert len(sdk_warnings(caplog)) == 1


def test_init_with_a_new_token_keeps_the_client_its_open_run_and_its_spool(
    gateway: Gateway, spool_dir: Path
) -> None:
    gateway.tokens = {"new"}
    studbook.init(url=gateway.url, project="churn", token="old")
    client = _api.client()

    def start() -> studbook.Run:
        run = studbook.start_run("r")
        run.log_metric("loss", 0.5, step=0)
        studbook.flush()
        return run

    with pytest.warns(UserWarning, match="refused the token"):
        run = start()
    assert len(spool_files(spool_dir)) == 1
    assert not gateway.accepted

    studbook.init(url=gateway.url, project="churn", token="new")
    assert _api.client() is client
    run.log_metric("loss", 0.25, step=1)
    run.finish()
    studbook.flush()  # finish hands the run's end over; flush waits for its delivery
    wait_until(lambda: not spool_files(spool_dir), what="the spool to be re-sent")
    assert [e["type"] for e in gateway.accepted] == [
        "run.started", "run.metrics.logged", "run.metrics.logged", "run.finished",
    ]  # fmt: skip
    assert metric_steps(gateway.accepted) == [0, 1]
    refused, sent = gateway.headers[0], gateway.headers[-1]
    assert (refused["Authorization"], sent["Authorization"]) == ("Bearer old", "Bearer new")

    # Other settings than the token still replace the client.
    studbook.init(url=gateway.url, project="other", token="new")
    assert _api.client() is not client


def test_events_refused_for_the_token_are_sent_by_the_next_process_with_a_valid_one(
    gateway: Gateway, spool_dir: Path
) -> None:
    gateway.tokens = {"good"}
    script = textwrap.dedent(
        f"""
        import studbook
        studbook.init(
            url={gateway.url!r}, project="churn", token="revoked", spool_dir={str(spool_dir)!r}
        )
        for i in range(30):
            studbook.annotate("project:churn", f"note {{i}}")
        studbook.flush()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(b"UserWarning: studbook: the gateway refused the token") == 1
    assert b"EventRejected" not in done.stderr
    left = spool_files(spool_dir)
    assert len(left) == 1
    assert notes(spooled(spool_dir)) == list(range(30))
    assert not gateway.accepted

    studbook.init(url=gateway.url, project="churn", token="good")
    wait_until(lambda: not left[0].exists(), what="the spool of the ended process")
    assert notes(gateway.accepted) == list(range(30))


def test_a_403_naming_its_events_raises_event_rejected_and_holds_nothing_back(
    gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    gateway.forbid = lambda e: (
        "token `ci` lacks the `approve` scope" if e["type"] == "model.version.approved" else None
    )
    install(url=gateway.url, token="ci", linger_s=5.0)  # one batch, sent at flush
    emit_notes(2)
    studbook.approve("churn-clf", 1)
    emit_notes(2, start=2)
    with pytest.raises(studbook.EventRejected, match="approve") as caught:
        studbook.flush()  # and no warning: the token itself was accepted
    assert caught.value.status == 403
    assert caught.value.event_types == [
        "annotation.added", "annotation.added", "model.version.approved",
        "annotation.added", "annotation.added",
    ]  # fmt: skip
    assert caught.value.errors[0]["index"] == 2
    assert notes(gateway.accepted) == [0, 1, 2, 3]  # the others were sent on their own
    assert not spool_files(spool_dir)
    emit_notes(1, start=4)  # delivery goes on
    studbook.flush()
    assert notes(gateway.accepted) == [0, 1, 2, 3, 4]


def test_run_exit_raises_a_refusal_already_answered_and_flush_one_answered_later(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    gateway.reject = lambda e: "no" if e["type"] == "run.tags.set" else None
    client = install(url=gateway.url)
    with pytest.raises(studbook.EventRejected) as caught, studbook.start_run("r", tags={"a": "b"}):
        client.dispatcher().flush(None)  # the refusal is answered before the run ends
    refused = caught.value
    assert [refused.event_types[e["index"]] for e in refused.errors] == ["run.tags.set"]
    studbook.flush()
    assert [e["type"] for e in gateway.accepted][-1] == "run.finished"

    # Refused after the run ended: not raised by the exit, which does not wait for the answer,
    # but by the next call that reports refusals.
    install(url=gateway.url, linger_s=5.0)  # nothing leaves before the flush
    with studbook.start_run("s", tags={"a": "b"}):
        pass
    with pytest.raises(studbook.EventRejected) as caught:
        studbook.flush()
    refused = caught.value
    assert [refused.event_types[e["index"]] for e in refused.errors] == ["run.tags.set"]
    assert [e["type"] for e in gateway.accepted][-1] == "run.finished"


def test_a_dead_process_spool_is_resent_by_the_next_init(
    down_gateway: Gateway, spool_dir: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, studbook
        studbook.init(url={down_gateway.url!r}, project="churn", spool_dir={str(spool_dir)!r})
        for i in range(30):
            studbook.annotate("project:churn", f"note {{i}}")
        studbook.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    orphans = spool_files(spool_dir)
    assert len(orphans) == 1

    # A spool file whose owner is alive (holds the lock) is left alone.
    alive = (
        spool_dir / f"{destination_key(down_gateway.url)}-ffffffffffffffffffffffffffffffff-1.ndjson"
    )
    alive.write_bytes(orjson.dumps({"event_id": "x"}) + b"\n")
    holder = os.open(alive, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        down_gateway.start()
        studbook.init(url=down_gateway.url, project="churn")
        emit_notes(1, start=30)
        wait_until(lambda: not orphans[0].exists(), what="the orphan to be re-sent")
        studbook.flush()
        assert notes(down_gateway.accepted) == list(range(31))  # the orphan's first
        assert alive.exists()
    finally:
        os.close(holder)


def test_a_torn_last_line_of_a_dead_process_is_skipped(gateway: Gateway, spool_dir: Path) -> None:
    good = [
        {"event_id": f"0190a000-0000-7000-8000-00000000000{i}", "type": "annotation.added",
         "schema_version": 1, "occurred_at": "2026-03-01T12:00:00.000000Z", "actor": "a",
         "project": "churn", "subject": "project:churn", "payload": {"text": f"note {i}"}}
        for i in range(2)
    ]  # fmt: skip
    spool_dir.mkdir(parents=True)
    orphan = spool_dir / f"{destination_key(gateway.url)}-0-1.ndjson"
    orphan.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in good) + b'{"event_id": "tor')
    studbook.init(url=gateway.url, project="churn")
    wait_until(lambda: not orphan.exists(), what="the orphan to be re-sent")
    assert notes(gateway.accepted) == [0, 1]


def test_an_orphan_our_token_may_not_write_is_left_for_another_process(
    gateway: Gateway, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = {
        "event_id": "0190a000-0000-7000-8000-000000000001", "type": "annotation.added",
        "schema_version": 1, "occurred_at": "2026-03-01T12:00:00.000000Z", "actor": "bob",
        "project": "other", "subject": "project:other", "payload": {"text": "theirs"},
    }  # fmt: skip
    gateway.forbidden_project = "other"
    spool_dir.mkdir(parents=True)
    orphan = spool_dir / f"{destination_key(gateway.url)}-0-1.ndjson"
    orphan.write_bytes(orjson.dumps(foreign) + b"\n")
    studbook.init(url=gateway.url, project="churn")
    emit_notes(3)  # neither raises nor warns: our own events go through
    wait_until(lambda: len(gateway.accepted) == 3, what="our events")
    studbook.flush()
    assert notes(gateway.accepted) == [0, 1, 2]
    assert any(
        str(orphan) in r.getMessage() and "leaving" in r.getMessage() for r in caplog.records
    )
    assert orphan.exists()  # kept, and unlocked: another process may adopt it
    fd = os.open(orphan, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)

    # A new token (here: one the gateway lets write to that project) takes it up again.
    gateway.forbidden_project = None
    _api.client().set_token("admin")
    wait_until(lambda: not orphan.exists(), what="the orphan to be re-sent")
    assert [e["payload"]["text"] for e in gateway.accepted][-1] == "theirs"


def test_full_queue_blocks_the_caller_and_drops_nothing(install: Callable[..., Client]) -> None:
    gate = threading.Event()
    seen: list[int] = []

    def slow(events: list[dict[str, Any]]) -> Outcome:
        gate.wait()
        seen.extend(notes(events))
        return Sent("t")

    install(MemoryTransport(slow), queue_size=5, batch_events=2)
    producer = threading.Thread(target=emit_notes, args=(200,))
    producer.start()
    time.sleep(0.3)
    assert producer.is_alive(), "the caller should be blocked by the full queue"
    gate.set()
    producer.join(10)
    assert not producer.is_alive()
    studbook.flush()
    assert seen == list(range(200))


def test_metric_hand_over_applies_back_pressure_too(install: Callable[..., Client]) -> None:
    gate = threading.Event()

    def slow(events: list[dict[str, Any]]) -> Outcome:
        gate.wait()
        return Sent(None)

    transport = MemoryTransport(slow)
    install(transport, queue_size=2, batch_events=1)
    run = studbook.start_run("pressure")

    def log() -> None:
        for step in range(10_000):
            run.log_metric("loss", 0.5, step=step)

    worker = threading.Thread(target=log)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()
    gate.set()
    worker.join(10)
    run.finish()
    studbook.flush()
    steps = [
        p["step"]
        for e in transport.events
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]
    assert sorted(steps) == list(range(10_000))


def test_flush_timeout_raises_transport_error(install: Callable[..., Client]) -> None:
    gate = threading.Event()

    def stuck(events: list[dict[str, Any]]) -> Outcome:
        gate.wait()
        return Sent(None)

    install(MemoryTransport(stuck))
    emit_notes(1)
    with pytest.raises(studbook.TransportError, match="not done within"):
        studbook.flush(timeout=0.2)
    gate.set()
    studbook.flush()


def test_413_splits_the_batch(install: Callable[..., Client]) -> None:
    from studbook._transport import Refused

    def small_only(events: list[dict[str, Any]]) -> Outcome:
        return Refused(413, "too large") if len(events) > 3 else Sent(None)

    transport = MemoryTransport(small_only)
    install(transport)
    emit_notes(10)
    studbook.flush()
    assert notes(transport.events) == list(range(10))


def test_unfinished_runs_are_finished_at_interpreter_exit(
    gateway: Gateway, spool_dir: Path
) -> None:
    def run_script(body: str) -> subprocess.CompletedProcess[bytes]:
        script = textwrap.dedent(
            f"""
            import studbook
            studbook.init(url={gateway.url!r}, project="churn", spool_dir={str(spool_dir)!r})
            run = studbook.start_run("script")
            run.log_metric("loss", 0.5, step=7)
            """
        ) + textwrap.dedent(body)
        return subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)

    assert run_script("").returncode == 0
    assert run_script("raise ValueError('bad shape')").returncode == 1
    finished = [e["payload"] for e in gateway.accepted_of("run.finished")]
    assert finished == [
        {"status": "completed"},
        {"status": "failed", "error": {"type": "ValueError", "message": "bad shape"}},
    ]
    assert len(gateway.accepted_of("run.metrics.logged")) == 2


def test_forked_child_does_not_share_or_corrupt_the_parents_queue(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url, linger_s=5.0)  # keep the parent's points buffered across the fork
    run = studbook.start_run("parent")
    for step in range(100):
        run.log_metric("parent", 1.0, step=step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker, say
        code = 1
        try:
            for step in range(50):
                run.log_metric("child", 2.0, step=step)
            studbook.annotate(run, "from the child")
            studbook.flush(timeout=10)
            code = 0
        finally:
            os._exit(code)
    for step in range(100, 200):
        run.log_metric("parent", 1.0, step=step)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.finish()
    studbook.flush()

    accepted = gateway.accepted
    assert all(n == 1 for n in Counter(e["event_id"] for e in accepted).values())
    points = [
        (p["key"], p["step"])
        for e in accepted
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    ]
    assert sorted(s for k, s in points if k == "parent") == list(range(200))  # once each
    assert sorted(s for k, s in points if k == "child") == list(range(50))
    assert [e["payload"]["status"] for e in gateway.accepted_of("run.finished")] == ["completed"]
    assert len(gateway.accepted_of("annotation.added")) == 1
    assert {e["actor"] for e in accepted} == {"alice"}


def test_points_from_many_threads_arrive_once_each(install: Callable[..., Client]) -> None:
    transport = MemoryTransport()
    install(transport, linger_s=0.001)  # the background thread collects points constantly
    run = studbook.start_run("threads")

    def log(thread: int) -> None:
        for step in range(5000):
            run.log_metric(f"t{thread}", 1.0, step=step)

    threads = [threading.Thread(target=log, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.finish()
    studbook.flush()
    points = Counter(
        (p["key"], p["step"])
        for e in transport.events
        if e["type"] == "run.metrics.logged"
        for p in e["payload"]["metrics"]
    )
    assert len(points) == 4 * 5000
    assert set(points.values()) == {1}


def test_unwritable_spool_dir_keeps_events_in_memory(
    down_gateway: Gateway, install: Callable[..., Client], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    install(url=down_gateway.url, spool_dir=blocker / "spool", retry_initial_s=0.2, retry_max_s=0.2)
    emit_notes(10)
    studbook.flush()  # cannot spool to disk: kept in memory, in order
    down_gateway.start()
    emit_notes(5, start=10)
    wait_until(lambda: len(down_gateway.accepted) == 15, what="the events kept in memory")
    assert notes(down_gateway.accepted) == list(range(15))


def test_shutdown_tries_the_spool_once_more_before_the_process_ends(
    down_gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    install(url=down_gateway.url, retry_initial_s=60, retry_max_s=60)  # no retry in time
    emit_notes(5)
    studbook.flush()
    assert len(spool_files(spool_dir)) == 1
    down_gateway.start()
    studbook.shutdown()  # as at interpreter exit
    assert notes(down_gateway.accepted) == list(range(5))
    assert not spool_files(spool_dir)

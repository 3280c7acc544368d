"""Finishing a run does not wait for the network; flush, atexit and forked children do.

Against a stub of the ingest gateway (conftest.Gateway) and the in-memory transport.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import studbook
from conftest import Gateway
from studbook._client import Client
from studbook._transport import MemoryTransport, Outcome, Refused, Sent


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_finish_returns_while_the_destination_has_not_answered(
    install: Callable[..., Client],
) -> None:
    answer = threading.Event()
    sending = threading.Event()

    def held(events: list[dict[str, Any]]) -> Outcome:
        sending.set()
        answer.wait(10)  # a gateway that does not answer (until the test lets it)
        return Sent("held")

    transport = MemoryTransport(held)
    install(transport)
    for i in range(3):
        with studbook.start_run(f"trial {i}") as run:
            run.log_metric("loss", 0.5, step=1)
    # Every run ended while the destination had answered nothing.
    assert not answer.is_set()
    assert transport.events == []
    answer.set()
    studbook.flush()
    events = transport.events
    assert types_of(events).count("run.finished") == 3
    assert types_of(events).count("run.metrics.logged") == 3
    assert studbook.last_consistency_token() == "held"
    assert sending.is_set()


def test_finish_hands_over_the_points_and_run_finished_in_order(
    install: Callable[..., Client],
) -> None:
    transport = MemoryTransport()
    install(transport)
    runs = []
    for i in range(2):
        run = studbook.start_run(f"trial {i}")
        for step in range(1500):
            run.log_metric("loss", 1.0, step=step)
        run.finish()
        runs.append(run)
    studbook.flush()
    for run in runs:
        mine = [e for e in transport.events if e["subject"] == run.subject]
        assert types_of(mine)[0] == "run.started"
        assert types_of(mine)[-1] == "run.finished"
        steps = [p["step"] for e in mine if e["type"] == "run.metrics.logged"
                 for p in e["payload"]["metrics"]]  # fmt: skip
        assert steps == list(range(1500))


def test_a_refusal_answered_before_finish_is_raised_by_it(
    install: Callable[..., Client],
) -> None:
    def refuse_params(events: list[dict[str, Any]]) -> Outcome:
        if any(e["type"] == "run.params.logged" for e in events):
            errors = [
                {"index": i, "path": "/payload", "message": "no"}
                for i, e in enumerate(events)
                if e["type"] == "run.params.logged"
            ]
            return Refused(422, "invalid", errors)
        return Sent(None)

    transport = MemoryTransport(refuse_params)
    client = install(transport)
    run = studbook.start_run("r", params={"lr": 0.1})
    client.dispatcher().flush(None)  # answered, not yet reported
    with pytest.raises(studbook.EventRejected) as caught:
        run.finish()
    refused = caught.value
    assert [refused.event_types[e["index"]] for e in refused.errors] == ["run.params.logged"]
    assert run.finished
    studbook.flush()  # reported once
    assert types_of(transport.events)[-1] == "run.finished"


def test_a_refusal_of_run_finished_is_raised_at_the_next_call(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    gateway.reject = lambda e: "no" if e["type"] == "run.finished" else None
    client = install(url=gateway.url)
    studbook.start_run("r").finish()  # returns: the answer is not waited for
    client.dispatcher().flush(None)
    with pytest.raises(studbook.EventRejected) as caught:
        studbook.start_run("next")
    refused = caught.value
    assert [refused.event_types[e["index"]] for e in refused.errors] == ["run.finished"]


def run_script(gateway: Gateway, spool_dir: Path, body: str) -> subprocess.CompletedProcess[bytes]:
    script = textwrap.dedent(
        f"""
        import os, sys, studbook
        studbook.init(url={gateway.url!r}, project="churn", spool_dir={str(spool_dir)!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)


def test_runs_finished_just_before_the_interpreter_exits_are_delivered(
    gateway: Gateway, spool_dir: Path
) -> None:
    done = run_script(
        gateway,
        spool_dir,
        """
        for i in range(5):
            with studbook.start_run(f"trial {i}") as run:
                for step in range(300):
                    run.log_metric("loss", 0.5, step=step)
        sys.exit(3)
        """,
    )
    assert done.returncode == 3, done.stderr
    finished = gateway.accepted_of("run.finished")
    assert [e["payload"] for e in finished] == [{"status": "completed"}] * 5
    points = [p for e in gateway.accepted_of("run.metrics.logged") for p in e["payload"]["metrics"]]
    assert len(points) == 5 * 300


def test_a_finished_run_goes_to_the_spool_when_the_gateway_is_down(
    down_gateway: Gateway, spool_dir: Path
) -> None:
    done = run_script(
        down_gateway,
        spool_dir,
        """
        with studbook.start_run("offline") as run:
            run.log_metric("loss", 0.5, step=1)
        """,
    )
    assert done.returncode == 0, done.stderr
    down_gateway.start()
    done = run_script(down_gateway, spool_dir, "studbook.shutdown(timeout=30)")
    assert done.returncode == 0, done.stderr
    assert [e["payload"] for e in down_gateway.accepted_of("run.finished")] == [
        {"status": "completed"}
    ]
    assert len(down_gateway.accepted_of("run.metrics.logged")) == 1


def test_a_forked_child_waits_for_delivery_at_finish(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url, linger_s=5.0)  # without a flush nothing would leave in time
    studbook.annotate("project:churn", "parent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # a multiprocessing worker ends so: os._exit, no atexit
        code = 1
        try:
            with studbook.start_run("in the child") as run:
                run.log_metric("loss", 0.5, step=1)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = [e for e in gateway.accepted if e["type"].startswith("run.")]
    assert types_of(child) == ["run.started", "run.metrics.logged", "run.finished"]
    studbook.flush()
    assert types_of(gateway.accepted).count("annotation.added") == 1

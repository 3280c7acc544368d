"""Registering a model version: one round trip that returns the number the gateway allocated.

Against the stub gateway (conftest.Gateway), which numbers registrations on acceptance as the
ingest gateway does, and the in-memory transport (no numbers: as with Kafka).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_sdk_delivery import spool_files, wait_until

import studbook
from conftest import Gateway
from studbook._client import Client
from studbook._transport import HttpTransport, MemoryTransport, Outcome, Refused, Sent


def test_register_model_returns_the_version_number(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url, linger_s=5.0)  # nothing would leave before 5 s but for registering
    with studbook.start_run("a") as run:
        first = run.register_model("churn-clf", "s3://m/1")
        second = run.register_model("churn-clf", "s3://m/2", framework="xgboost")
        other = run.register_model("fraud-clf", "s3://f/1")
    later = studbook.register_model("churn-clf", "s3://m/3", run=run)
    assert (first.version, second.version, other.version, later.version) == (1, 2, 1, 3)
    assert first.event_id != second.event_id
    assert gateway.numbers[later.event_id] == 3
    assert (later.model, later.run, later.artifact_uri) == ("churn-clf", run.id, "s3://m/3")
    studbook.set_alias("churn-clf", version=later.version, alias="production")
    studbook.flush()
    alias = gateway.accepted_of("model.alias.set")[0]
    assert alias["payload"] == {"alias": "production", "version": 3}


def test_registering_sends_every_earlier_event_first_in_one_round_trip(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url, linger_s=5.0)
    run = studbook.start_run("trained", params={"lr": 0.1})
    for step in range(10):
        run.log_metric("loss", 1.0, step=step)
    studbook.annotate("project:churn", "before")
    requests_before = len(gateway.requests)
    mv = run.register_model("churn-clf", "s3://m/1")
    # Returned after the gateway accepted it, behind everything emitted before it.
    assert mv.version == 1
    assert len(gateway.requests) == requests_before + 1
    types = [e["type"] for e in gateway.accepted]
    assert types[-1] == "model.version.registered"
    assert {"run.started", "run.params.logged", "run.metrics.logged", "annotation.added"} <= set(
        types[:-1]
    )
    run.finish()


def test_a_resent_registration_keeps_its_number(
    gateway: Gateway, install: Callable[..., Client]
) -> None:
    install(url=gateway.url)
    mv = studbook.register_model("churn-clf", "s3://m/1")
    assert mv.version == 1
    # A re-sent registration (say, after a lost answer) is answered with the number it got.
    event = gateway.accepted_of("model.version.registered")[0]
    transport = HttpTransport(gateway.url, None)
    try:
        outcome = transport.send([orjson.dumps(event)])
    finally:
        transport.close()
    assert isinstance(outcome, Sent)
    assert outcome.model_versions == ((mv.event_id, 1),)
    assert studbook.register_model("churn-clf", "s3://m/2").version == 2


def test_without_a_number_from_the_destination_the_version_is_none(
    install: Callable[..., Client],
) -> None:
    transport = MemoryTransport()  # acknowledges without numbering, as Kafka does
    install(transport)
    mv = studbook.register_model("churn-clf", "s3://m/1")
    assert mv.version is None
    assert [e["type"] for e in transport.events] == ["model.version.registered"]


def test_with_the_gateway_down_the_registration_is_spooled_and_has_no_number(
    down_gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    install(url=down_gateway.url)
    mv = studbook.register_model("churn-clf", "s3://m/1")
    assert mv.version is None
    assert len(spool_files(spool_dir)) == 1
    down_gateway.start()
    wait_until(lambda: not spool_files(spool_dir), what="the spool to be re-sent")
    assert down_gateway.numbers == {mv.event_id: 1}  # numbered when it got there


def test_a_refused_registration_raises_at_once(
    install: Callable[..., Client],
) -> None:
    def refuse(events: list[dict[str, Any]]) -> Outcome:
        errors = [
            {"index": i, "path": "/payload/artifact_uri", "message": "unknown scheme"}
            for i, e in enumerate(events)
            if e["type"] == "model.version.registered"
        ]
        return Refused(422, "invalid", errors) if errors else Sent(None)

    install(MemoryTransport(refuse))
    with pytest.raises(studbook.EventRejected) as caught:
        studbook.register_model("churn-clf", "s3://m/1")
    assert caught.value.errors[0]["path"] == "/payload/artifact_uri"
    studbook.flush()  # reported once

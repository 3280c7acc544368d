"""The SDK's side of OpenLineage in: datasets named by their uri, and reads by uri."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import studbook
from studbook._client import Client
from studbook._transport import MemoryTransport
from studbook_server.domain.contract import validate_event

DIGEST = "sha256:" + "c4" * 32


@pytest.fixture
def memory(install: Callable[..., Client]) -> MemoryTransport:
    transport = MemoryTransport()
    install(transport)
    return transport


def test_a_dataset_version_without_a_name_is_of_the_dataset_its_uri_names(
    memory: MemoryTransport,
) -> None:
    ds = studbook.dataset_version(uri="s3://lake/features/churn/", digest=DIGEST)
    assert ds.dataset == "s3/lake/features/churn" == studbook.dataset_name(ds.uri)
    studbook.flush()
    (event,) = memory.events
    assert event["subject"] == "dataset:s3/lake/features/churn"
    assert event["payload"]["uri"] == "s3://lake/features/churn/", "the uri is kept as given"
    assert validate_event(event) == []
    with pytest.raises(ValueError, match="needs a name, or a uri"):
        studbook.dataset_version(digest=DIGEST)


def test_a_run_reads_a_dataset_by_uri(memory: MemoryTransport) -> None:
    with studbook.start_run("eval") as run:
        run.use(uri="postgres://db:5432/analytics.public.events", role="evaluation")
        with pytest.raises(TypeError, match="not both"):
            run.use(("features", "v1"), uri="s3://lake/x")
        with pytest.raises(TypeError, match="needs a dataset version or a uri"):
            run.use()
        with pytest.raises(ValueError, match="role must be one of"):
            run.use(uri="s3://lake/x", role="training")
    studbook.flush()
    reads = [e for e in memory.events if e["type"] == "dataset.read"]
    assert [(e["subject"], e["payload"]) for e in reads] == [
        (
            "dataset:postgres/db_5432/analytics.public.events",
            {
                "run": run.id,
                "uri": "postgres://db:5432/analytics.public.events",
                "role": "evaluation",
            },
        )
    ]
    assert validate_event(reads[0]) == []
    with pytest.raises(studbook.StudbookError, match="has finished"):
        run.use(uri="s3://lake/x")

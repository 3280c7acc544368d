"""docs/events.md is generated from schema/events/; it must not drift from the schemas."""

from __future__ import annotations

from pathlib import Path

from studbook_server.domain.contract import EVENT_TYPES
from studbook_server.domain.eventdocs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_event_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/events.md is stale: run `python -m studbook_server.domain.eventdocs > docs/events.md`"
    )


def test_every_event_type_has_a_section() -> None:
    text = render()
    for event_type in EVENT_TYPES:
        assert f"## `{event_type}` (" in text

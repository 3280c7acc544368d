"""The checked-in SDL is the schema the code serves."""

from __future__ import annotations

from studbook_server.domain.contract import schema_dir
from studbook_server.graphql import export_sdl

REGENERATE = "python -m studbook_server.graphql > schema/graphql/schema.graphql"


def test_checked_in_sdl_matches_the_code() -> None:
    path = schema_dir() / "graphql" / "schema.graphql"
    checked_in = path.read_text() if path.exists() else ""
    assert export_sdl() == checked_in, (
        f"{path} is out of date with the code; regenerate it with "
        f"`.venv/bin/{REGENERATE}` and commit the result"
    )

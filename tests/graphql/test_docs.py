"""The cookbook in docs/graphql.md stays valid against the schema."""

from __future__ import annotations

import re
from pathlib import Path

from graphql import parse, validate
from studbook_server.graphql import schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "graphql.md"


def test_every_cookbook_block_validates() -> None:
    blocks = re.findall(r"```graphql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 10
    gql = schema()._schema
    for block in blocks:
        errors = validate(gql, parse(block))
        assert not errors, f"{block}\n{errors}"

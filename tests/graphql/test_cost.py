"""Bounded cost per request: fragment fan-outs, nested page sizes, huge strings and bodies are
refused before any work, and an ordinary query next to them is answered."""

from __future__ import annotations

import time

from graphql import parse
from studbook_server.graphql import schema
from studbook_server.graphql._cost import MAX_COST, MAX_STRING, query_cost
from tests.graphql.conftest import Api


def _fan_out(levels: int = 10, width: int = 10) -> str:
    """Fragment f0 spreads f1 `width` times, f1 spreads f2 ...: width^levels fields to merge."""
    parts = ["query { projects { nodes { ...f0 } } }"]
    for level in range(levels):
        spreads = " ".join(f"...f{level + 1}" for _ in range(width))
        parts.append(f"fragment f{level} on Project {{ name {spreads} }}")
    parts.append(f"fragment f{levels} on Project {{ name }}")
    return "\n".join(parts)


def test_the_cost_counts_page_sizes_and_fragment_expansion() -> None:
    gql = schema()._schema
    assert query_cost(gql, parse("{ projects { nodes { name } } }")) == 1 + 50 * (1 + 1)
    nested = '{ searchRuns(project: "p", first: 500) { nodes { runId params { key } } } }'
    assert query_cost(gql, parse(nested)) == 1 + 500 * (1 + (1 + 1 + 10 * 1))
    assert query_cost(gql, parse(_fan_out(3, 10))) > 1000
    started = time.process_time()
    assert query_cost(gql, parse(_fan_out(10, 10))) > MAX_COST  # counted, not expanded
    assert time.process_time() - started < 1.0


def test_expensive_documents_are_refused_before_any_work(api: Api) -> None:
    query = _fan_out()
    assert len(query) < 2000
    error = api.errors(query, token="reader")[0]
    assert "query too expensive" in error["message"]
    assert str(MAX_COST) in error["message"]
    deep_pages = "{ projects(first: 500) { nodes { runs(first: 500) { nodes { runId } } } } }"
    assert "query too expensive" in api.errors(deep_pages, token="reader")[0]["message"]
    long = "x" * (MAX_STRING + 1)
    error = api.errors(f'{{ project(name: "{long}") {{ name }} }}', token="reader")[0]
    assert f"longer than the {MAX_STRING} allowed" in error["message"]
    r = api.post("query($n: String!) { project(name: $n) { name } }", {"n": long}).json()
    assert f"longer than the {MAX_STRING} allowed" in r["errors"][0]["message"]
    # An ordinary query is answered as before.
    assert api.query("{ projects { nodes { name } } }", token="reader")["projects"]["nodes"]

"""The web UI's routes without a browser: the pages and their headers, the bundle's files, the
one-time sign-in codes, and GraphiQL served from the package instead of a CDN."""

from __future__ import annotations

import re
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.testclient import TestClient

from studbook_server.graphql import graphql_routes
from studbook_server.ui import STATIC, SignInCodes, ui_routes
from tests.support import settings_for


def _client(codes: SignInCodes | None = None) -> TestClient:
    # The pages read no database; strawberry makes a request context anyway: real settings and
    # no pool.
    deps = SimpleNamespace(settings=settings_for("postgresql://unused/x", "", "t", "g"), pool=None)
    return TestClient(Starlette(routes=[*graphql_routes(lambda: deps), *ui_routes(codes)]))  # type: ignore[arg-type, return-value]


def test_codes_work_once_and_expire() -> None:
    now = [1000.0]
    codes = SignInCodes(ttl_s=60, clock=lambda: now[0])
    first, second = codes.issue("sbk_a"), codes.issue("sbk_b")
    assert first != second
    assert len(first) >= 40
    assert codes.redeem(first) == "sbk_a"
    assert codes.redeem(first) is None  # once
    now[0] += 61
    assert codes.redeem(second) is None  # expired
    assert codes.redeem("x" * 43) is None  # never issued
    for _ in range(40):  # old codes make room for new ones
        codes.issue("sbk_c")
    assert len(codes._codes) <= 16


def test_sign_in_swaps_a_code_for_the_token_once() -> None:
    codes = SignInCodes()
    code = codes.issue("sbk_secret")
    with _client(codes) as client:
        r = client.post("/ui/signin", json={"code": code})
        assert r.status_code == 200
        assert r.json() == {"token": "sbk_secret"}
        assert r.headers["cache-control"] == "no-store"
        again = client.post("/ui/signin", json={"code": code})
        assert again.status_code == 400
        assert "used already or has expired" in again.json()["error"]
        assert client.post("/ui/signin", content=b"not json").status_code == 400
        assert client.post("/ui/signin", json={"code": 1}).status_code == 400
    with _client(None) as client:  # `api` role: no links, sign in with a token
        assert client.post("/ui/signin", json={"code": code}).status_code == 400


def test_the_app_and_its_assets_come_from_the_package() -> None:
    with _client() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text)
        assert assets, page.text
        for path in assets:
            r = client.get(path)
            assert r.status_code == 200, path
            assert "immutable" in r.headers["cache-control"]
        assert client.get("/assets/nothing-here.js").status_code == 404


def test_graphiql_is_the_local_page_with_no_cdn() -> None:
    with _client() as client:
        r = client.get("/graphql", headers={"accept": "text/html"})
        assert r.status_code == 200
        assert r.text == (STATIC / "graphiql.html").read_text()
        assert "unpkg" not in r.text
        assert "jsdelivr" not in r.text
        assert not re.findall(r'(?:src|href)="(?!/assets/|data:)', r.text)
        for path in re.findall(r'(?:src|href)="(/assets/[^"]+)"', r.text):
            assert client.get(path).status_code == 200, path


def test_no_page_or_stylesheet_loads_anything_from_elsewhere() -> None:
    for f in [*STATIC.glob("*.html"), *STATIC.glob("assets/*.css")]:
        text = f.read_text()
        assert not re.findall(r'(?:src|href)="(?:https?:)?//', text), f
        assert not re.findall(r"url\((['\"]?)(?:https?:)?//", text), f
        assert "@import" not in text or "@import url(" not in text, f


def test_the_ui_s_largest_documents_fit_the_api_s_cost_limit() -> None:
    """The heaviest documents the pages send (web/src/lib/api.ts: metric histories, 20 series a
    document and 20,000 points in all; the runs table's biggest page) pass the cost limit."""
    from graphql import parse
    from studbook_server.graphql import schema
    from studbook_server.graphql._cost import MAX_COST, query_cost

    gql = schema()._schema
    for series in (1, 2, 7, 20):
        first = max(100, min(5000, 20_000 // series))
        fields = " ".join(
            f"r{i}: run(id: $id{i}) {{ metricHistory(key: $key, first: {first}, after: $a{i}) "
            "{ nodes { step value at position } pageInfo { hasNextPage endCursor } } }"
            for i in range(series)
        )
        decl = ", ".join(f"$id{i}: ID!, $a{i}: String" for i in range(series))
        doc = parse(f"query ($key: String!, {decl}) {{ {fields} }}")
        assert query_cost(gql, doc, {}) < MAX_COST, series
    runs = parse(
        "query ($p: String!, $k: [String!]) { searchRuns(project: $p, first: 500) { totalCount "
        "pageInfo { hasNextPage endCursor } nodes { id runId name status actor startedAt "
        "finishedAt params { key value } metrics(keys: $k) { key value min max } "
        "tags { key value } } } }"
    )
    assert query_cost(gql, runs, {}) < MAX_COST

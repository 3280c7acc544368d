"""A test app serving the GraphQL routes against a real database, built like `http.py` builds apps.

The app's lifespan makes the pool (every connection logs its statements, so tests can count
them), the API's deps with a `StorePublisher` (embedded mode: mutations append to the event store)
and nothing else: tests project explicitly with `catch_up`, so they decide what is visible when.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.testclient import TestClient

from studbook_server import auth
from studbook_server.adapters import postgres, readmodels
from studbook_server.adapters.postgres import Incoming
from studbook_server.adapters.publish import StorePublisher
from studbook_server.domain.contract import event_from_dict
from studbook_server.domain.projection import StoredPrincipal
from studbook_server.graphql import ApiDeps, graphql_routes
from tests.support import migrated, scenario, settings_for

Factory = Callable[..., Coroutine[Any, Any, str]]


@dataclass
class StatementLog:
    """Statements run by the app's pool while `counting` is on (connection resets excluded)."""

    counting: bool = False
    statements: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def count(self) -> Iterator[list[str]]:
        self.statements.clear()
        self.counting = True
        try:
            yield self.statements
        finally:
            self.counting = False


def _driver_bookkeeping(con: asyncpg.Connection, query: str) -> bool:
    """asyncpg's own statements: the pool's reset on release, and its one-off type introspection
    (with JIT switched off around it) the first time a connection meets a type."""
    return query == con.get_reset_query() or "typeinfo_tree" in query or "set_config('jit'" in query


def _logging_connection(log: StatementLog) -> type[asyncpg.Connection]:
    class LoggingConnection(asyncpg.Connection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_query_logger(self._log)

        def _log(self, record: Any) -> None:
            if log.counting and not _driver_bookkeeping(self, record.query):
                log.statements.append(record.query)

    return LoggingConnection


def make_app(
    url: str,
    *,
    auth_disabled: bool = False,
    read_only: bool = False,
    consistency_timeout_s: float = 5.0,
    log: StatementLog | None = None,
) -> Starlette:
    settings = settings_for(
        url, "", "unused", "unused", kafka_bootstrap=None, auth_disabled=auth_disabled
    )
    running: dict[str, ApiDeps] = {}
    log = log or StatementLog()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # All connections made up front, so none is opened (and logs its set-up) mid-request.
        pool = await asyncpg.create_pool(
            url,
            min_size=4,
            max_size=4,
            init=postgres._init_connection,
            server_settings=postgres._server_settings(),
            connection_class=_logging_connection(log),
        )
        running["deps"] = ApiDeps(settings, pool, None if read_only else StorePublisher(pool))
        try:
            yield
        finally:
            await pool.close()

    def current() -> ApiDeps:
        return running["deps"]

    return Starlette(
        routes=graphql_routes(current, consistency_timeout_s=consistency_timeout_s),
        lifespan=lifespan,
    )


class Api:
    """A TestClient speaking GraphQL: `api.query(text, variables, token=...)` -> JSON body."""

    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = "reader",
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> Any:
        h = dict(headers or {})
        if token is not None:
            h["authorization"] = f"Bearer {self.tokens.get(token, token)}"
        body: dict[str, Any] = {"query": query, "variables": variables or {}}
        if extensions is not None:
            body["extensions"] = extensions
        return self.client.post("/graphql", json=body, headers=h)

    def query(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
        """The `data` of a query that must succeed."""
        r = self.post(query, variables, **kw)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def errors(self, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> list[Any]:
        body = self.post(query, variables, **kw).json()
        assert body.get("errors"), body
        return list(body["errors"])


async def make_tokens(url: str) -> dict[str, str]:
    con = await postgres.connect(url)
    try:
        made = {
            "reader": await auth.create_token(con, "reader", ["read"], ["*"]),
            "churn-reader": await auth.create_token(con, "churn-reader", ["read"], ["churn"]),
            "fraud-reader": await auth.create_token(con, "fraud-reader", ["read"], ["fraud"]),
            "writer": await auth.create_token(con, "writer", ["read", "write"], ["churn"]),
            "write-only": await auth.create_token(con, "write-only", ["write"], ["churn"]),
            "reviewer": await auth.create_token(con, "reviewer", ["read", "approve"], ["churn"]),
            "admin": await auth.create_token(con, "admin", ["admin"], ["*"]),
            "revoked": await auth.create_token(con, "revoked", ["admin"], ["*"]),
        }
        assert await auth.revoke_token(con, made["revoked"][0])
    finally:
        await con.close()
    return {k: v[1] for k, v in made.items()}


async def append_and_project(url: str, docs: list[dict[str, Any]]) -> int:
    """Append events to the store and project them; return the last position. Each event is
    recorded as sent by a token named after its actor (as if each person had their own)."""
    con = await postgres.connect(url)
    try:
        async with con.transaction():
            stored = await postgres.append(
                con,
                [
                    Incoming(
                        d,
                        event_from_dict(d, i),
                        principal=StoredPrincipal(f"tok-{d['actor']}", d["actor"]),
                    )
                    for i, d in enumerate(docs)
                ],
            )
        await readmodels.catch_up(con)
        assert not await con.fetchval("SELECT count(*) FROM public.dead_letters"), await con.fetch(
            "SELECT reason FROM public.dead_letters"
        )
        return stored[-1].position if stored else 0
    finally:
        await con.close()


async def project(url: str) -> int:
    con = await postgres.connect(url)
    try:
        return await readmodels.catch_up(con)
    finally:
        await con.close()


@dataclass
class Scenario:
    url: str
    tokens: dict[str, str]
    events: list[dict[str, Any]]


@pytest_asyncio.fixture(scope="session")
async def scenario_db(database_factory: Factory) -> Scenario:
    """`tests.support.scenario()` plus a second project, appended and projected once."""
    url = await database_factory()
    await migrated(url)
    from tests.support import at, ev

    events = scenario()
    # Another project, to prove a token for one never sees the other.
    events += [
        ev("run.started", "run:fraud-1", {"name": "secret"}, project="fraud", when=at(1)),
        ev(
            "run.params.logged", "run:fraud-1", {"params": {"lr": 0.3}}, project="fraud", when=at(1)
        ),
    ]
    await append_and_project(url, events)
    return Scenario(url, await make_tokens(url), events)


@pytest.fixture
def api(scenario_db: Scenario) -> Iterator[Api]:
    with TestClient(make_app(scenario_db.url)) as client:
        yield Api(client, scenario_db.tokens)

"""The GraphQL read path: lineage, search, comparison, audit and time travel over the read models.

Mount it with :func:`graphql_routes` (served at `/graphql`, GraphiQL in a browser, subscriptions
over graphql-transport-ws on the same path). :func:`export_sdl` prints the schema; the checked-in
copy is `schema/graphql/schema.graphql` (`python -m studbook_server.graphql > schema/graphql/schema.graphql`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import orjson
import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from studbook_server.graphql._context import ApiDeps, Context
from studbook_server.graphql._errors import (
    ApiError,
    BadInput,
    Forbidden,
    NotCaughtUp,
    NotFound,
    ReadOnly,
    Unauthenticated,
    Unavailable,
)
from studbook_server.graphql._schema import build_schema

__all__ = [
    "ApiDeps",
    "ApiError",
    "BadInput",
    "Forbidden",
    "NotCaughtUp",
    "NotFound",
    "ReadOnly",
    "Unauthenticated",
    "Unavailable",
    "export_sdl",
    "graphql_routes",
    "schema",
]

DEFAULT_CONSISTENCY_TIMEOUT_S = 5.0


@functools.cache
def schema() -> strawberry.Schema:
    """The schema (built once, on first use)."""
    return build_schema()


def export_sdl() -> str:
    """The schema in SDL, as checked in at `schema/graphql/schema.graphql`."""
    return schema().as_str() + "\n"


class _App(GraphQL[Context, None]):
    def __init__(self, current: Callable[[], ApiDeps], consistency_timeout_s: float) -> None:
        super().__init__(schema(), graphql_ide="graphiql")
        self._current = current
        self._timeout = consistency_timeout_s

    def encode_json(self, data: object) -> str:
        # Text, not bytes: graphql-transport-ws sends what this returns, and needs text frames.
        return orjson.dumps(data).decode()

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        return Context(self._current(), request, response, self._timeout)

    async def render_graphql_ide(self, request: Request) -> Response:
        # strawberry's own page loads GraphiQL from a CDN; this one is in the package's bundle.
        from studbook_server.ui import graphiql_page

        return graphiql_page()


def graphql_routes(
    current: Callable[[], ApiDeps],
    *,
    path: str = "/graphql",
    consistency_timeout_s: float = DEFAULT_CONSISTENCY_TIMEOUT_S,
) -> list[BaseRoute]:
    """The API's routes; ``current`` returns the deps made in the app's lifespan.

    ``consistency_timeout_s``: how long a query carrying a consistency token waits for the
    projection before answering `NOT_CAUGHT_UP`.
    """
    app = _App(current, consistency_timeout_s)
    return [
        Route(path, app, methods=["GET", "POST"]),
        WebSocketRoute(path, app),
    ]

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
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
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
        Route(path, _BodyLimit(app, current), methods=["GET", "POST"]),
        WebSocketRoute(path, app),
    ]


class _BodyLimit:
    """Refuse a request body over `STUDBOOK_GRAPHQL_MAX_BODY_BYTES` (413) before it is read
    whole: a query is text, and no query needs megabytes."""

    def __init__(self, app: ASGIApp, current: Callable[[], ApiDeps]) -> None:
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.current().settings.graphql_max_body_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        too_large = JSONResponse(
            {"errors": [{"message": f"request body larger than {limit} bytes"}]}, status_code=413
        )
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

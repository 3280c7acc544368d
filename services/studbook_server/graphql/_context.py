"""What every resolver gets: the dependencies, the caller, and the request's DataLoaders.

Authentication and the read-your-writes wait run once per request, on first use, so a request
that reads nothing (`{ __typename }`, GraphiQL's page) pays for neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.adapters.publish import Publisher
from studbook_server.config import Settings
from studbook_server.consistency import BadToken, decode, wait_until
from studbook_server.graphql._errors import (
    BadInput,
    Forbidden,
    NotCaughtUp,
    Unauthenticated,
    Unavailable,
)
from studbook_server.graphql._loaders import Loaders

CONSISTENCY_HEADER = "x-studbook-consistency"
CONSISTENCY_EXTENSION = "consistencyToken"


@dataclass
class ApiDeps:
    """What the API needs, made in the app's lifespan."""

    settings: Settings
    pool: postgres.Pool
    # None: a read-only deployment; mutations answer with a clear error.
    publisher: Publisher | None


class Context:
    """Per request (or per WebSocket connection, for subscriptions)."""

    def __init__(
        self,
        deps: ApiDeps,
        request: Request | WebSocket,
        response: Response | WebSocket,
        consistency_timeout_s: float,
    ) -> None:
        self.deps = deps
        self.pool = deps.pool
        self.request = request
        self.response = response
        self.consistency_timeout_s = consistency_timeout_s
        # graphql-transport-ws `connection_init` payload (strawberry sets it).
        self.connection_params: dict[str, Any] | None = None
        # The request's `extensions` object, set by the schema extension before execution.
        self.operation_extensions: dict[str, Any] | None = None
        self.loaders = Loaders(deps.pool)
        self._principal: asyncio.Future[auth.Principal] | None = None
        self._consistent: asyncio.Future[None] | None = None

    # --------------------------------------------------------------------------- caller

    def _authorization(self) -> str | None:
        header = self.request.headers.get("authorization")
        if header is None and self.connection_params:
            value = self.connection_params.get("authorization") or self.connection_params.get(
                "Authorization"
            )
            header = value if isinstance(value, str) else None
        return header

    async def _authenticate(self) -> auth.Principal:
        if self.deps.settings.auth_disabled:
            return auth.ANONYMOUS_ADMIN
        try:
            principal = await auth.authenticate(self.pool, self._authorization())
        except auth.AuthUnavailable as exc:
            if isinstance(self.response, Response):
                self.response.status_code = 503
                self.response.headers["Retry-After"] = "5"
            raise Unavailable(str(exc)) from exc
        if principal is None:
            if isinstance(self.response, Response):
                self.response.status_code = 401
            raise Unauthenticated(
                "missing or invalid bearer token: send `Authorization: Bearer sbk_...` "
                "(create one with `studbook-server token create`)"
            )
        return principal

    def principal(self) -> Awaitable[auth.Principal]:
        if self._principal is None:
            self._principal = asyncio.ensure_future(self._authenticate())
        return self._principal

    async def reader(self, project: str | None = None) -> auth.Principal:
        """The caller, allowed to read ``project`` (if given), once the projection caught up."""
        principal = await self.principal()
        if not principal.has_scope("read"):
            raise Forbidden(f"token `{principal.name}` lacks the `read` scope")
        if project is not None and not principal.may_access(project):
            raise Forbidden(f"token `{principal.name}` may not read project `{project}`")
        await self.consistent()
        return principal

    async def writer(self, project: str, event_type: str | None = None) -> auth.Principal:
        """The caller, if it may send ``event_type`` (any write when None) to ``project``."""
        principal = await self.principal()
        if event_type is not None and event_type in auth.GOVERNANCE_TYPES:
            if not principal.has_scope("approve"):
                raise Forbidden(
                    f"token `{principal.name}` lacks the `approve` scope needed to send "
                    f"`{event_type}`"
                )
        elif not principal.has_scope("write"):
            raise Forbidden(f"token `{principal.name}` lacks the `write` scope")
        if not principal.may_access(project):
            raise Forbidden(f"token `{principal.name}` may not write to project `{project}`")
        return principal

    @staticmethod
    def visible(principal: auth.Principal) -> list[str] | None:
        """The projects a caller may see, or None for all of them."""
        return None if "*" in principal.projects else sorted(principal.projects)

    # ---------------------------------------------------------------------- consistency

    def _token_text(self) -> str | None:
        text = self.request.headers.get(CONSISTENCY_HEADER)
        if text is None and self.operation_extensions:
            value = self.operation_extensions.get(CONSISTENCY_EXTENSION)
            text = value if isinstance(value, str) else None
        return text

    async def _wait(self) -> None:
        text = self._token_text()
        if not text:
            return
        try:
            token = decode(text)
        except BadToken as exc:
            raise BadInput(
                f"{exc}: send the `consistencyToken` a mutation or the gateway returned"
            ) from exc
        settings = self.deps.settings
        if not await wait_until(
            self.pool, token, settings.consumer_group, self.consistency_timeout_s
        ):
            raise NotCaughtUp(
                f"the projection has not caught up with consistency token `{text}` within "
                f"{self.consistency_timeout_s:g}s: retry later, or query without the token "
                "to read what has been projected so far"
            )

    def consistent(self) -> Awaitable[None]:
        if self._consistent is None:
            self._consistent = asyncio.ensure_future(self._wait())
        return self._consistent


Info = strawberry.Info[Context, None]

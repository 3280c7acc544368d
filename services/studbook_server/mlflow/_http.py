"""Request parsing and the per-request context every MLflow handler gets.

The mlflow client sends GET requests as query parameters (repeated names for lists, both
`run_id` and `run_uuid`), POST/PATCH/DELETE as JSON bodies with snake_case names. :class:`Params`
reads both the same way. :class:`Ctx` carries the project chosen by the URL, the caller, the
API's query pool, and :meth:`Ctx.submit`: the one write path plus the read-your-writes wait.
Responses are protobuf JSON: ids are JSON strings, int64 may be numbers.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from studbook_server import auth
from studbook_server.adapters.postgres import Pool
from studbook_server.consistency import wait_until
from studbook_server.graphql import ApiDeps
from studbook_server.mlflow._errors import MlflowError, invalid, unavailable
from studbook_server.writepath import Accepted, Refused, Writer

# After a write, the answer waits at most this long for the projector to reach it, so the
# client's next read sees its write; then it answers anyway (docs/mlflow.md, read-your-writes).
READ_YOUR_WRITES_TIMEOUT_S = 5.0

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass
class Params:
    """The request message: JSON body fields, then query parameters (lists keep repeats)."""

    body: dict[str, Any]
    query: dict[str, list[str]]

    @classmethod
    async def read(cls, request: Request, limit: int) -> Params:
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        if request.method == "PUT":
            # An artifact upload: raw bytes of any size, streamed by its handler, never read here.
            return cls({}, query)
        raw = await request.body()
        if len(raw) > limit:
            raise MlflowError("REQUEST_LIMIT_EXCEEDED", f"request body exceeds {limit} bytes", 413)
        body: dict[str, Any] = {}
        if raw.strip():
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise invalid(f"the request body is not valid JSON: {exc}") from exc
            if not isinstance(parsed, dict):
                raise invalid("the request body must be a JSON object")
            body = parsed
        return cls(body, query)

    def raw(self, name: str) -> Any:
        if name in self.body and self.body[name] is not None:
            return self.body[name]
        values = self.query.get(name)
        if values:
            return values[0]
        return None

    def has(self, name: str) -> bool:
        return self.raw(name) is not None

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise invalid(f"Missing value for required parameter '{name}'")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise invalid(f"parameter '{name}' must be a string; got {type(value).__name__}")
        return str(value)

    def req(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def run_id(self) -> str:
        """`run_id`, else the older `run_uuid` the client also sends."""
        value = self.text("run_id") or self.text("run_uuid")
        if value is None:
            raise invalid("Missing value for required parameter 'run_id'")
        return value

    def integer(
        self, name: str, *, default: int | None = None, required: bool = False
    ) -> int | None:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise invalid(f"Missing value for required parameter '{name}'")
            return default
        if isinstance(value, bool):
            raise invalid(f"parameter '{name}' must be an integer; got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise invalid(f"parameter '{name}' must be an integer; got {value!r}") from None

    def number(self, name: str, *, required: bool = False) -> float | None:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise invalid(f"Missing value for required parameter '{name}'")
            return None
        if isinstance(value, bool):
            raise invalid(f"parameter '{name}' must be a number; got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise invalid(f"parameter '{name}' must be a number; got {value!r}") from None

    def flag(self, name: str, *, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise invalid(f"parameter '{name}' must be true or false; got {value!r}")

    def items(self, name: str) -> builtins.list[Any]:
        """A repeated field: a JSON array, or every value of a repeated query parameter."""
        if name in self.body and self.body[name] is not None:
            value = self.body[name]
            if not isinstance(value, list):
                raise invalid(f"parameter '{name}' must be a list; got {type(value).__name__}")
            return value
        return builtins.list(self.query.get(name, []))

    def objects(self, name: str) -> builtins.list[dict[str, Any]]:
        """A repeated message field (JSON body only)."""
        found = self.items(name)
        for n, item in enumerate(found):
            if not isinstance(item, dict):
                raise invalid(f"'{name}[{n}]' must be an object")
        return found


@dataclass
class Ctx:
    """One MLflow request: the project (from the URL), the caller, the parsed message."""

    deps: ApiDeps
    request: Request
    project: str
    principal: auth.Principal
    params: Params
    path_params: dict[str, str] = field(default_factory=dict)

    @property
    def pool(self) -> Pool:
        """The API's query pool: reads come from the read models."""
        return self.deps.pool

    def need(self, scope: str) -> None:
        if not self.principal.has_scope(scope):
            raise MlflowError(
                "PERMISSION_DENIED",
                f"token `{self.principal.name}` lacks the `{scope}` scope",
                403,
            )

    @property
    def actor(self) -> str:
        return self.principal.name

    async def submit(self, docs: Sequence[dict[str, Any]], *, wait: bool = True) -> Accepted:
        """Hand ``docs`` to the one write path; then (``wait``) wait, bounded, for the
        projector to reach them, so the client's next read sees them."""
        self.need("write")
        if self.deps.publisher is None:
            raise unavailable("this API process is read-only: it cannot record events")
        writer = Writer(self.deps.settings, self.deps.pool, self.deps.publisher)
        outcome = await writer.submit(self.principal, list(docs))
        if isinstance(outcome, Refused):
            raise refused(outcome)
        if wait:
            await wait_until(
                self.deps.pool,
                outcome.token,
                self.deps.settings.consumer_group,
                READ_YOUR_WRITES_TIMEOUT_S,
            )
        return outcome


def refused(outcome: Refused) -> MlflowError:
    """The MLflow error for a refusal of the write path."""
    detail = outcome.message
    if outcome.violations:
        detail += ": " + "; ".join(f"{v.path}: {v.message}" for v in outcome.violations[:10])
    if outcome.status == 403:
        return MlflowError("PERMISSION_DENIED", detail, 403)
    if outcome.status == 503:
        return unavailable(detail)
    if outcome.status == 409:
        return MlflowError("RESOURCE_ALREADY_EXISTS", detail, 400)
    if outcome.status == 413:
        return MlflowError("REQUEST_LIMIT_EXCEEDED", detail, 400)
    return invalid(detail)


Handler = Callable[[Ctx], Awaitable[dict[str, Any] | Response]]


@dataclass(frozen=True)
class Endpoint:
    """One MLflow route: ``method`` and ``path`` (`/api/2.0/mlflow/runs/get`), its handler."""

    method: str
    path: str
    handler: Handler
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = []
        for piece in re.split(r"(\{[a-z_]+(?::path)?\})", self.path):
            if piece.startswith("{"):
                name, _, kind = piece[1:-1].partition(":")
                parts.append(f"(?P<{name}>.*)" if kind == "path" else f"(?P<{name}>[^/]+)")
            else:
                parts.append(re.escape(piece))
        object.__setattr__(self, "pattern", re.compile("".join(parts) + "$"))

"""`POST /api/v1/lineage`: the route, from request to the one write path.

Marquez's path and behaviour, so an OpenLineage integration needs only its URL and a token: one
event per request (JSON, or gzip with `Content-Encoding: gzip`), a bearer token with the `write`
scope, 201 when the events it maps to are stored (or were already: re-sending is safe), 400 with
the fields at fault when the event is not valid OpenLineage or cannot be recorded (the client
does not retry), 503 when the transport is down (the client retries).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from studbook_server import auth
from studbook_server.domain.contract import Violation
from studbook_server.graphql import ApiDeps
from studbook_server.openlineage import _spec
from studbook_server.openlineage._mapping import Mapped, MappingError, map_event, resolve_project
from studbook_server.writepath import Refused, Writer

PATH = "/api/v1/lineage"
# Bodies larger than this are parsed, checked and mapped in a worker thread.
OFF_LOOP_BYTES = 64 * 1024
# How long a client should wait before retrying a 503.
RETRY_AFTER_S = 5


class _TooLarge(Exception):
    pass


class _UnknownEncoding(Exception):
    pass


class _BadGzip(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed; at most ``limit`` bytes both as sent and as decompressed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise _UnknownEncoding(encoding)
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    chunks: list[bytes] = []
    sent = size = 0
    async for chunk in request.stream():
        sent += len(chunk)
        if sent > limit:
            raise _TooLarge
        if inflate is not None:
            try:
                # Never more than the limit allows: a small bomb cannot inflate past it.
                chunk = inflate.decompress(chunk, limit - size + 1)
            except zlib.error as exc:
                raise _BadGzip(str(exc)) from exc
            if inflate.unconsumed_tail:
                raise _TooLarge
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    if inflate is not None:
        if not inflate.eof:
            raise _BadGzip("the stream is truncated")
        chunks.append(inflate.flush())
        if size + len(chunks[-1]) > limit:
            raise _TooLarge
    return b"".join(chunks)


def _problems(status: int, message: str, violations: Sequence[Violation] = ()) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if violations:
        body["errors"] = [{"path": v.path, "message": v.message} for v in violations]
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _requested_project(request: Request, principal: auth.Principal) -> str | None:
    """The project the request names (`?project=`), else the token's only project."""
    named = request.query_params.get("project")
    if named:
        return named
    projects = principal.projects
    if len(projects) == 1 and "*" not in projects:
        return next(iter(projects))
    return None


def _prepare(body: bytes, principal: auth.Principal, requested: str | None) -> Mapped | Response:
    """The Studbook events for a request body, or the answer that refuses it (CPU only)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _problems(400, f"the body is not valid JSON: {exc}")
    violations = _spec.violations(event)
    if violations:
        return _problems(400, "not a valid OpenLineage event", violations)
    kind = _spec.kind_of(event)
    try:
        project = resolve_project(event, kind, requested)
        if not principal.may_access(project):
            where = "the request" if kind == "DatasetEvent" else "its job namespace"
            return _problems(
                403,
                f"token `{principal.name}` may not write to project `{project}`, which {where} "
                "names: set the namespace to a project the token may write to, or use a token "
                "for this project",
            )
        return map_event(event, kind, project)
    except MappingError as exc:
        return _problems(exc.status, "the event cannot be recorded", exc.violations)


async def post_lineage(deps: ApiDeps, request: Request) -> Response:
    settings = deps.settings
    if settings.auth_disabled:
        principal: auth.Principal | None = auth.ANONYMOUS_ADMIN
    else:
        try:
            principal = await auth.authenticate(deps.pool, request.headers.get("authorization"))
        except auth.AuthUnavailable as exc:
            return _problems(503, str(exc))
    if principal is None:
        return _problems(
            401,
            "missing or invalid bearer token: give the OpenLineage transport an api key "
            "(`auth: {type: api_key, apiKey: sbk_...}`), sent as `Authorization: Bearer sbk_...`",
        )
    if not principal.has_scope("write"):
        return _problems(403, f"token `{principal.name}` lacks the `write` scope")
    if deps.publisher is None:
        return _problems(503, "this API process is read-only: it cannot record events")
    try:
        body = await _read_body(request, settings.max_body_bytes)
    except _TooLarge:
        return _problems(
            413,
            f"request body exceeds {settings.max_body_bytes} bytes (decompressed): send smaller "
            "events (STUDBOOK_MAX_BODY_BYTES sets the limit)",
        )
    except _UnknownEncoding as exc:
        return _problems(
            415, f"unsupported Content-Encoding `{exc}`: send JSON, plain or gzip-compressed"
        )
    except _BadGzip as exc:
        return _problems(400, f"the body is not valid gzip: {exc}")
    requested = _requested_project(request, principal)
    # A large event takes a while to parse, check and map: off the event loop, then.
    if len(body) > OFF_LOOP_BYTES:
        prepared = await asyncio.to_thread(_prepare, body, principal, requested)
    else:
        prepared = _prepare(body, principal, requested)
    if isinstance(prepared, Response):
        return prepared
    outcome = await Writer(settings, deps.pool, deps.publisher).submit(principal, prepared.docs)
    if isinstance(outcome, Refused):
        if outcome.status == 422:
            # The event is valid OpenLineage, but what it maps to is not a valid Studbook event:
            # the paths point into those events (`index` is their place in the mapping).
            return _problems(
                400,
                "the event maps to Studbook events that are not valid: " + outcome.message,
                [
                    Violation(v.index, f"(event {v.index}){v.path}", v.message)
                    for v in outcome.violations
                ],
            )
        return _problems(outcome.status, outcome.message, outcome.violations)
    return JSONResponse(
        {"accepted": outcome.event_ids, "consistency_token": outcome.token.encode()},
        status_code=201,
    )


def routes(current: Callable[[], ApiDeps]) -> list[Route]:
    """`POST /api/v1/lineage`; ``current`` returns the API's dependencies made in the lifespan."""

    async def endpoint(request: Request) -> Response:
        return await post_lineage(current(), request)

    return [Route(PATH, endpoint, methods=["POST"])]

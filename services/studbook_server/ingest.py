"""The ingest gateway: `POST /v1/events` and the consistency check `GET /v1/consistency`.

A request carries one event (a JSON object), a JSON array of events, or NDJSON
(`Content-Type: application/x-ndjson`). Every event is validated before any is published: one
invalid event rejects the whole request with 422 and the list of problems, so a client never has to
work out which half of a batch went through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from studbook_server import auth
from studbook_server.adapters.postgres import Pool
from studbook_server.adapters.publish import (
    Publisher,
)
from studbook_server.config import Settings
from studbook_server.consistency import BadToken, caught_up, decode
from studbook_server.domain.contract import Violation
from studbook_server.writepath import OFFLOAD_BYTES, Refused, Writer


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "studbook_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=registry,
        )  # fmt: skip
        self.accepted = Counter(
            "studbook_events_accepted", "Events accepted by the gateway", registry=registry
        )
        self.rejected = Counter(
            "studbook_events_rejected", "Events refused as invalid (422)", registry=registry
        )
        self.refused = Counter(
            "studbook_events_refused", "Events of requests refused for other reasons, by status "
            "(403 scope, 409 conflicting event id, 413 too large, 503 unavailable)", ["status"],
            registry=registry,
        )  # fmt: skip
        self.publish_seconds = Histogram(
            "studbook_publish_seconds", "Time to publish an accepted request's events",
            registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )  # fmt: skip


@dataclass(slots=True)
class Gateway:
    settings: Settings
    pool: Pool
    publisher: Publisher
    metrics: GatewayMetrics


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, content_type: str) -> list[Any] | Violation:
    if "ndjson" in content_type or "jsonlines" in content_type:
        docs: list[Any] = []
        for index, line in enumerate(ln for ln in body.splitlines() if ln.strip()):
            try:
                docs.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                return Violation(index, "", f"line {index + 1} is not valid JSON: {exc}")
        return docs
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Violation(0, "", f"the body is not valid JSON: {exc}")
    if isinstance(doc, list):
        return doc
    return [doc]


# How long a client should wait before retrying a 503 (the SDK backs off on its own anyway).
RETRY_AFTER_S = 5


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _principal(gw: Gateway, request: Request) -> auth.Principal | None:
    if gw.settings.auth_disabled:
        return auth.ANONYMOUS_ADMIN
    return await auth.authenticate(gw.pool, request.headers.get("authorization"))


def routes(current: Callable[[], Gateway]) -> list[Route]:
    """The gateway's routes; ``current`` returns the gateway built in the app's lifespan."""

    async def post_events(request: Request) -> Response:
        gw = current()
        try:
            response = await _post_events(gw, request)
        except auth.AuthUnavailable as exc:
            response = _error(503, str(exc))
        gw.metrics.requests.labels("/v1/events", str(response.status_code)).inc()
        return response

    async def get_consistency(request: Request) -> Response:
        gw = current()
        try:
            principal = await _principal(gw, request)
        except auth.AuthUnavailable as exc:
            return _error(503, str(exc))
        if principal is None:
            return _error(
                401, "missing or invalid bearer token: send `Authorization: Bearer sbk_...`"
            )
        # Any valid token may ask: the answer reveals only how far the projection has got.
        text = request.query_params.get("token", "")
        try:
            token = decode(text)
        except BadToken as exc:
            return _error(400, str(exc))
        done = await caught_up(gw.pool, token, gw.settings.consumer_group)
        return JSONResponse({"token": text, "caught_up": done})

    return [
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/consistency", get_consistency, methods=["GET"]),
    ]


async def _post_events(gw: Gateway, request: Request) -> Response:
    principal = await _principal(gw, request)
    if principal is None:
        return _error(401, "missing or invalid bearer token: send `Authorization: Bearer sbk_...`")
    if not (principal.has_scope("write") or principal.has_scope("approve")):
        return _error(403, f"token `{principal.name}` lacks the `write` scope")
    try:
        body = await _read_body(request, gw.settings.max_body_bytes)
    except _TooLarge:
        return _error(
            413,
            f"request body exceeds {gw.settings.max_body_bytes} bytes: send smaller batches "
            "(STUDBOOK_MAX_BODY_BYTES sets the limit)",
        )
    content_type = request.headers.get("content-type", "")
    if len(body) > OFFLOAD_BYTES:  # parsing megabytes would hold every other request
        parsed = await asyncio.to_thread(_parse, body, content_type)
    else:
        parsed = _parse(body, content_type)
    if isinstance(parsed, Violation):
        return _invalid(gw, Refused(422, "invalid", [parsed]), 1)
    started = time.perf_counter()
    outcome = await Writer(gw.settings, gw.pool, gw.publisher).submit(principal, parsed, raw=body)
    if isinstance(outcome, Refused):
        if outcome.status == 422 and outcome.violations:
            return _invalid(gw, outcome, len(parsed))
        gw.metrics.refused.labels(str(outcome.status)).inc(len(parsed))
        headers = {"Retry-After": str(RETRY_AFTER_S)} if outcome.status == 503 else None
        return JSONResponse(outcome.body(), status_code=outcome.status, headers=headers)
    gw.metrics.publish_seconds.observe(time.perf_counter() - started)
    gw.metrics.accepted.inc(len(outcome.event_ids))
    answer: dict[str, Any] = {
        "accepted": outcome.event_ids,
        "consistency_token": outcome.token.encode(),
    }
    if outcome.numbers:
        answer["model_versions"] = model_versions(parsed, outcome.numbers)
    return JSONResponse(answer, status_code=202)


def model_versions(docs: list[Any], numbers: dict[str, int]) -> list[dict[str, Any]]:
    """The version numbers the server gave the request's `model.version.registered` events."""
    out, seen = [], set()
    for doc in docs:
        event_id = doc.get("event_id")
        numbered = doc.get("type") == "model.version.registered" and event_id in numbers
        if numbered and event_id not in seen:
            seen.add(event_id)
            model = str(doc.get("subject", "")).partition(":")[2]
            out.append({"event_id": event_id, "model": model, "version": numbers[event_id]})
    return out


def _invalid(gw: Gateway, refused: Refused, events: int) -> JSONResponse:
    gw.metrics.rejected.inc(events)
    return JSONResponse(refused.body(), status_code=422)

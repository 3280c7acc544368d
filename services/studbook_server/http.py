"""The HTTP side: one Starlette app per role, composed here.

- `ingest`: the gateway (`/v1/events`, `/v1/consistency`), publishing to Kafka.
- `api`: the GraphQL API, OpenLineage in (`POST /api/v1/lineage`, studbook_server/openlineage)
  and MLflow's REST API (`/mlflow/<project>/api/...`, studbook_server/mlflow).
- `up`: everything in one process on the embedded default: the gateway appends to the event store,
  a background tailer projects it, and the API reads it (no Kafka).

Every role serves `/healthz` (process up), `/readyz` (dependencies reachable) and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from studbook_server import auth, ingest, mlflow, openlineage
from studbook_server.adapters import postgres
from studbook_server.adapters.publish import KafkaPublisher, Publisher, StorePublisher
from studbook_server.config import Settings, load_settings
from studbook_server.domain import attestation
from studbook_server.errors import ConfigError
from studbook_server.graphql import ApiDeps, graphql_routes
from studbook_server.projector import KafkaProjector, ProjectorMetrics, StoreTailer
from studbook_server.ui import SignInCodes, ui_routes

log = logging.getLogger(__name__)

ROLES = ("api", "ingest", "up")


@dataclass
class _Running:
    """What the lifespan starts; routes reach it through `current()`."""

    pool: postgres.Pool | None = None
    publisher: Publisher | None = None
    gateway: ingest.Gateway | None = None
    api: ApiDeps | None = None
    projector: StoreTailer | KafkaProjector | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "the projector stopped: %r (the read models are no longer updated)", task.exception()
        )


def build_app(role: str, settings: Settings, *, sign_in: SignInCodes | None = None) -> Starlette:
    """The HTTP app for ``role`` (see the module docstring); ``sign_in``: the one-time codes of
    the sign-in link `up` prints (the web UI's `POST /ui/signin`)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role == "ingest" and settings.embedded:
        raise ConfigError(
            "the `ingest` role publishes to Kafka: set STUDBOOK_KAFKA_BOOTSTRAP (or use `up`)"
        )
    registry = CollectorRegistry()
    metrics = ingest.GatewayMetrics(registry)
    projector_metrics = ProjectorMetrics(registry) if role == "up" else None
    running = _Running()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Writes (gateway, projector, token checks of the gateway) and queries get their own
        # pools, so a burst of expensive queries cannot starve ingest; queries have a
        # statement timeout.
        pool = await postgres.create_pool(settings.database_url)
        running.pool = pool
        query_pool = pool
        if role in ("api", "up"):
            query_pool = await postgres.create_pool(
                settings.database_url, statement_timeout_ms=settings.query_timeout_ms
            )
        projector: StoreTailer | KafkaProjector | None = None
        kafka: KafkaPublisher | None = None
        try:
            async with pool.acquire() as con:
                await postgres.migrate(con)
                signing_key = await postgres.server_key(con, attestation.KEY_NAME)
            # The API publishes too: its mutations are events like any other client's.
            if role in ("ingest", "up", "api"):
                if settings.embedded:
                    running.publisher = StorePublisher(pool)
                else:
                    assert settings.kafka_bootstrap is not None
                    kafka = KafkaPublisher(
                        settings.kafka_bootstrap, settings.events_topic, signing_key,
                        timeout_s=settings.publish_timeout_s,
                    )  # fmt: skip
                    await kafka.start()
                    running.publisher = kafka
                if role != "api":
                    running.gateway = ingest.Gateway(settings, pool, running.publisher, metrics)
            if role in ("api", "up"):
                running.api = ApiDeps(settings, query_pool, running.publisher)
            if role == "up":
                # Everything in one process: the projector too (tailing the store, or Kafka).
                projector = (
                    StoreTailer(settings, metrics=projector_metrics)
                    if settings.embedded
                    else KafkaProjector(settings, pool, metrics=projector_metrics)
                )
                running.projector = projector
                task = asyncio.create_task(projector.run(), name="studbook-projector")
                task.add_done_callback(_report_death)
                running.background.append(task)
            yield
        finally:
            if projector is not None:
                projector.stop()
            for result in await asyncio.gather(*running.background, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    log.error("the projector had failed: %r", result)
            if kafka is not None:
                await kafka.stop()
            if query_pool is not pool:
                await query_pool.close()
            await pool.close()

    def current_gateway() -> ingest.Gateway:
        assert running.gateway is not None, "the app's lifespan has not started"
        return running.gateway

    def current_api_deps() -> ApiDeps:
        assert running.api is not None, "the app's lifespan has not started"
        return running.api

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": role})

    async def readyz(request: Request) -> JSONResponse:
        """What a request needs now: PostgreSQL, a Kafka that takes records (when used) and,
        in `up`, a live projector (with how far behind it is). Anonymous callers get each
        check's state; a caller with a valid token also gets what is wrong, in operator terms."""
        checks: dict[str, str] = {}
        assert running.pool is not None
        try:
            await asyncio.wait_for(running.pool.fetchval("SELECT 1"), 3)
            checks["postgres"] = "ok"
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            checks["postgres"] = "PostgreSQL does not answer"
        if isinstance(running.publisher, KafkaPublisher):
            checks["kafka"] = await running.publisher.problem() or "ok"
        lag: int | None = None
        for task in running.background:
            # A dead projector means stale read models: not ready, and say why.
            if task.done():
                failure = task.exception() if not task.cancelled() else None
                checks["projector"] = f"stopped ({type(failure).__name__}): see the log"
        if running.projector is not None and "projector" not in checks:
            checks["projector"] = "ok"
            lag = running.projector.lag()
        ok = all(v == "ok" for v in checks.values())
        body: dict[str, object] = {"status": "ok" if ok else "unavailable"}
        detailed = settings.auth_disabled
        if not detailed and checks["postgres"] == "ok":
            with contextlib.suppress(auth.AuthUnavailable):
                header = request.headers.get("authorization")
                detailed = await auth.authenticate(running.pool, header) is not None
        if detailed:
            body["checks"] = checks
            if lag is not None:
                body["projector_lag"] = lag
        else:
            body["checks"] = {k: "ok" if v == "ok" else "unavailable" for k, v in checks.items()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
    if role in ("ingest", "up"):
        routes += ingest.routes(current_gateway)
    if role in ("api", "up"):
        routes += graphql_routes(current_api_deps)
        routes += openlineage.routes(current_api_deps)  # POST /api/v1/lineage (docs/openlineage.md)
        routes += mlflow.routes(current_api_deps)  # /mlflow/<project>/api/... (docs/mlflow.md)
        routes += ui_routes(sign_in)  # the web UI at `/` (studbook_server/ui)
    return Starlette(routes=routes, lifespan=lifespan)


def serve(role: str, *, host: str, port: int) -> int:
    return serve_app(role, load_settings(), host=host, port=port)


def serve_app(
    role: str, settings: Settings, *, host: str, port: int, sign_in: SignInCodes | None = None
) -> int:
    import uvicorn

    logging.basicConfig(level=settings.log_level)
    uvicorn.run(
        build_app(role, settings, sign_in=sign_in),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
    )
    return 0

"""HTTP services. The GraphQL API and the ingest gateway mount their routes here; until they do,
each serves its health endpoints so deployments can be wired and probed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from studbook_server.adapters import postgres
from studbook_server.config import Settings, load_settings
from studbook_server.projector import StoreTailer

log = logging.getLogger(__name__)


def build_app(role: str, settings: Settings) -> Starlette:
    """The HTTP app for ``role``: `api`, `ingest`, or `up` (everything in one process, which
    also migrates the database and projects the event store in the background)."""
    pool: list[postgres.Pool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool.append(await postgres.create_pool(settings.database_url))
        tailer: StoreTailer | None = None
        task: asyncio.Task[None] | None = None
        if role == "up":
            async with pool[0].acquire() as con:
                await postgres.migrate(con)
            tailer = StoreTailer(settings)
            task = asyncio.create_task(tailer.run())
        try:
            yield
        finally:
            if tailer is not None and task is not None:
                tailer.stop()
                await task
            await pool[0].close()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": role})

    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await pool[0].fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except (OSError, asyncpg.PostgresError) as exc:
            checks["postgres"] = f"unreachable: {exc}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(role: str, *, host: str, port: int) -> int:
    import uvicorn

    settings = load_settings()
    if role == "up":
        print(
            f"Studbook is up (embedded mode: the event store is the transport)\n"
            f"  health:    http://{host}:{port}/healthz\n"
            f"  readiness: http://{host}:{port}/readyz\n"
            f"  database:  {settings.database_url}",
            flush=True,
        )
    uvicorn.run(
        build_app(role, settings), host=host, port=port, log_level=settings.log_level.lower()
    )
    return 0

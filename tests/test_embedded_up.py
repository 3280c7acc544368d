"""`studbook-server up`: one process that migrates, serves health, and projects the event store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from studbook_server.domain.contract import event_from_dict
from studbook_server.http import build_app
from tests.support import ev, settings_for


async def test_up_migrates_serves_health_and_projects_appended_events(
    database_factory: Callable[[], Coroutine[Any, Any, str]],
) -> None:
    url = await database_factory()
    settings = settings_for(url, "", "unused", "unused", kafka_bootstrap=None)
    assert settings.embedded

    def serve_and_probe() -> tuple[int, dict[str, Any], int]:
        with TestClient(build_app("up", settings)) as client:
            health = client.get("/healthz").status_code
            ready = client.get("/readyz").json()

            async def append_and_wait() -> int:
                con = await postgres.connect(url)
                try:
                    e = ev("run.started", "run:embedded", {"name": "tailed"})
                    async with con.transaction():
                        await postgres.append(
                            con,
                            [postgres.Incoming(e, event_from_dict(orjson.loads(orjson.dumps(e))))],
                        )
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        if await con.fetchval(
                            "SELECT count(*) FROM runs WHERE run_id = 'embedded'"
                        ):
                            return 1
                        await asyncio.sleep(0.05)
                    return 0
                finally:
                    await con.close()

            projected = asyncio.run(append_and_wait())
        return health, ready, projected

    health, ready, projected = await asyncio.to_thread(serve_and_probe)
    assert health == 200
    assert ready == {"status": "ok", "checks": {"postgres": "ok"}}
    assert projected == 1, "the background tailer did not project an event appended to the store"

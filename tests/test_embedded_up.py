"""`studbook-server up`: one process that migrates, serves health, and projects the event store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from studbook_server.domain.contract import event_from_dict
from studbook_server.embedded import EXAMPLE_QUERIES
from studbook_server.embedded_pg import EmbeddedPostgres
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
    # Anonymous: each check's state, no details (the lag, what is wrong) for strangers.
    assert ready == {"status": "ok", "checks": {"postgres": "ok", "projector": "ok"}}
    assert projected == 1, "the background tailer did not project an event appended to the store"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Up:
    """`studbook-server up` as a real process on its own embedded PostgreSQL."""

    def __init__(self, data_dir: str, log: str, *, demo: bool = False) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.port, self.pg_port = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
        exe = Path(sys.executable).with_name("studbook-server")
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(exe), "up", "--port", str(self.port), "--pg-port", str(self.pg_port),
             "--data-dir", data_dir, *([] if demo else ["--no-demo"])],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.log_path = log

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def ready(self) -> str:
        import urllib.request

        for _ in range(300):
            assert self.proc.poll() is None, self.output()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            for line in self.output().splitlines():
                if line.strip().startswith("token:"):
                    return line.split()[1]
            raise AssertionError(f"no token printed:\n{self.output()}")
        raise AssertionError(f"`up` was not ready in 30 s:\n{self.output()}")

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def _post(port: int, token: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events", data=orjson.dumps(events), method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202
        body: dict[str, Any] = orjson.loads(r.read())
        return body


def _caught_up(port: int, token: str, consistency: str) -> bool:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/consistency?token={consistency}",
        headers={"authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        done: bool = orjson.loads(r.read())["caught_up"]
        return done


def test_up_keeps_its_data_and_token_across_restarts() -> None:
    import os
    import shutil
    import tempfile

    data_dir = tempfile.mkdtemp(prefix="studbook-up-test-")
    os.chmod(data_dir, 0o755)  # as root, PostgreSQL runs as an unprivileged user
    try:
        first = _Up(data_dir, os.path.join(data_dir, "first.log"))
        try:
            token = first.ready()
            sent = _post(first.port, token, [ev("run.started", "run:kept", {"name": "kept"})])
            for _ in range(100):
                if _caught_up(first.port, token, sent["consistency_token"]):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("never projected")
        finally:
            assert first.stop() == 0, first.output()
        # PostgreSQL was stopped with the service.
        assert not os.path.exists(os.path.join(data_dir, "postgres", "data", "postmaster.pid"))

        second = _Up(data_dir, os.path.join(data_dir, "second.log"))
        try:
            assert second.ready() == token
            assert _caught_up(second.port, token, sent["consistency_token"])
            again = _post(
                second.port, token, [ev("run.finished", "run:kept", {"status": "completed"})]
            )
            assert again["consistency_token"] == "s1.2"
        finally:
            assert second.stop() == 0, second.output()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_first_start_loads_the_demo_through_the_sdk() -> None:
    import os
    import shutil
    import tempfile

    data_dir = tempfile.mkdtemp(prefix="studbook-demo-test-")
    os.chmod(data_dir, 0o755)
    up = _Up(data_dir, os.path.join(data_dir, "up.log"), demo=True)
    try:
        up.ready()
        deadline = time.monotonic() + 120
        while "demo: loaded" not in up.output():
            assert "demo: failed" not in up.output(), up.output()
            assert time.monotonic() < deadline, up.output()
            time.sleep(0.2)

        async def facts() -> dict[str, Any]:
            pg = EmbeddedPostgres(Path(data_dir) / "postgres", up.pg_port)
            con = await postgres.connect(pg.url)
            try:
                for _ in range(100):  # the tailer projects shortly after the demo's last write
                    head = await postgres.head_position(con)
                    if await con.fetchval("SELECT position FROM checkpoint") == head:
                        break
                    await asyncio.sleep(0.05)
                history = await con.fetch(
                    """SELECT version FROM assignments WHERE model = 'churn-clf' AND kind = 'alias'
                       AND name = 'production' AND recorded_to IS NULL ORDER BY valid_from"""
                )
                return {
                    "runs": await con.fetchval("SELECT count(*) FROM runs"),
                    "failed": await con.fetchval(
                        "SELECT count(*) FROM runs WHERE status = 'failed'"
                    ),
                    "versions": await con.fetchval("SELECT count(*) FROM model_versions"),
                    "dataset_versions": await con.fetchval("SELECT count(*) FROM dataset_versions"),
                    "derived": await con.fetchval(
                        "SELECT count(*) FROM lineage_edges WHERE edge_type = 'derived'"
                    ),
                    "production": [r[0] for r in history],
                    "span_days": await con.fetchval(
                        "SELECT extract(day FROM max(occurred_at) - min(occurred_at)) FROM public.events"
                    ),
                    "dead": await con.fetchval("SELECT count(*) FROM public.dead_letters"),
                }
            finally:
                await con.close()

        got = asyncio.run(facts())
        # The example queries printed at start answer from the demo.
        printed = [
            line.strip() for line in up.output().splitlines() if line.strip().startswith("{ ")
        ]
        assert printed == list(EXAMPLE_QUERIES)
        answers = [_graphql(up.port, up.ready(), q) for q in EXAMPLE_QUERIES]
    finally:
        assert up.stop() == 0, up.output()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert got["runs"] >= 30
    assert got["failed"] == 1
    assert got["versions"] == 5
    assert got["dataset_versions"] == 6
    assert got["derived"] == 3
    # A promotion, a rollback, then a promotion nobody approved.
    assert got["production"] == [1, 2, 1, 3]
    assert got["span_days"] >= 30
    assert got["dead"] == 0
    assert answers[0]["modelVersionByAlias"]["number"] == 3
    assert answers[0]["modelVersionByAlias"]["approved"] is False
    assert {n["type"] for n in answers[1]["lineage"]["nodes"]} == {
        "MODEL_VERSION", "RUN", "DATASET_VERSION"
    }  # fmt: skip
    assert answers[2]["unapprovedPromotions"]


def _graphql(port: int, token: str, query: str) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=orjson.dumps({"query": query}), method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        body = orjson.loads(r.read())
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data

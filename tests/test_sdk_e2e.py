"""The SDK end to end: a real training script -> the real gateway (or Kafka) -> the projector ->
the read models. Every service is a real process; the gateway is killed mid-run in one test, and
the run's token is revoked mid-run in another."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import studbook
from studbook import _client
from studbook_server import auth
from studbook_server.adapters import postgres
from tests.conftest import Services
from tests.support import migrated

Factory = Callable[..., Coroutine[Any, Any, str]]
ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(sys.executable).with_name("studbook-server")
# A run's stored metric points (rm.metric_chunks holds them in arrays, per series).
POINTS_OF_RUN = """SELECT coalesce(sum(c.n), 0) FROM metric_series s
                   JOIN metric_chunks c ON c.series_id = s.id WHERE s.run_id = $1"""
DISTINCT_POINTS_OF_RUN = """SELECT count(DISTINCT (s.key, u.step)) FROM metric_series s
                            JOIN metric_chunks c ON c.series_id = s.id,
                            unnest(c.steps) AS u(step) WHERE s.run_id = $1"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Stack:
    """A Kafka deployment of Studbook as real processes: one gateway and one projector."""

    url: str
    topic: str
    env: dict[str, str]
    token: str
    logs: Path
    port: int = field(default_factory=_free_port)
    gateway: subprocess.Popen[bytes] | None = None
    projector: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start_gateway(self) -> None:
        self.starts += 1
        with open(self.logs / f"gateway-{self.starts}.log", "wb") as log:
            self.gateway = subprocess.Popen(
                [str(SERVER), "ingest", "--port", str(self.port)], env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.gateway.poll() is None, self.tail("gateway")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the gateway did not start:\n" + self.tail("gateway"))

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait()

    def start_projector(self) -> None:
        with open(self.logs / "projector.log", "wb") as log:
            self.projector = subprocess.Popen(
                [str(SERVER), "projector"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def tail(self, which: str) -> str:
        files = sorted(self.logs.glob(f"{which}*.log"))
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in files)

    def stop(self) -> None:
        for proc in (self.gateway, self.projector):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest_asyncio.fixture
async def stack(
    services: Services, database_factory: Factory, topic_factory: Factory, tmp_path: Path
) -> AsyncIterator[Stack]:
    url = await database_factory()
    await migrated(url)
    con = await postgres.connect(url)
    try:
        _, token = await auth.create_token(con, "training", ["write", "read"], ["churn"])
    finally:
        await con.close()
    topic = await topic_factory(partitions=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env |= {
        "STUDBOOK_DATABASE_URL": url,
        "STUDBOOK_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "STUDBOOK_EVENTS_TOPIC": topic,
        "STUDBOOK_CONSUMER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
        "STUDBOOK_LOG_LEVEL": "WARNING",
    }
    s = Stack(url=url, topic=topic, env=env, token=token, logs=tmp_path)
    s.start_gateway()
    s.start_projector()
    try:
        yield s
    finally:
        s.stop()


def _client_env(stack: Stack, target: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    return env | {
        "STUDBOOK_URL": target,
        "STUDBOOK_TOKEN": stack.token,
        "STUDBOOK_PROJECT": "churn",
        "STUDBOOK_EVENTS_TOPIC": stack.topic,
        "STUDBOOK_SPOOL_DIR": str(spool),
        "STUDBOOK_CACHE_DIR": str(tmp / "cache"),
    }


async def _wait_for(url: str, sql: str, expected: Any, *args: Any, limit_s: float = 60) -> None:
    con = await postgres.connect(url)
    try:
        deadline = time.monotonic() + limit_s
        got = None
        while time.monotonic() < deadline:
            got = await con.fetchval(sql, *args)
            if got == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{sql} gave {got!r}, expected {expected!r}")
    finally:
        await con.close()


async def _run_script(args: list[str], env: dict[str, str], limit_s: float = 120) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _check_training_run(url: str, result: dict[str, Any], epochs: int) -> None:
    run_id = result["run"]
    await _wait_for(url, "SELECT count(*) FROM model_versions WHERE run_id = $1", 1, run_id)
    await _wait_for(url, "SELECT status FROM runs WHERE run_id = $1", "completed", run_id)
    con = await postgres.connect(url)
    try:
        run = await con.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)
        assert run["name"] == "logreg"
        assert run["environment"]["python_version"].startswith(f"{sys.version_info.major}.")
        params = dict(
            await con.fetch("SELECT key, value FROM run_params WHERE run_id = $1", run_id)
        )
        assert params == {"lr": 0.05, "epochs": epochs}
        metrics = {
            r["key"]: r
            for r in await con.fetch("SELECT * FROM run_metrics WHERE run_id = $1", run_id)
        }
        assert set(metrics) == {"loss", "accuracy"}
        assert metrics["loss"]["points"] == epochs
        assert metrics["loss"]["step"] == epochs - 1
        # The model learned something: the loss went down.
        assert metrics["loss"]["value"] < metrics["loss"]["max_value"]
        dv = await con.fetchrow("SELECT * FROM dataset_versions WHERE dataset = 'customers'")
        assert (dv["version"], dv["digest"]) == (result["dataset_version"], result["digest"])
        mv = await con.fetchrow("SELECT * FROM model_versions WHERE run_id = $1", run_id)
        assert (mv["model"], mv["number"], mv["framework"]) == ("churn-clf", 1, "pure-python")
        edges = {
            (r["edge_type"], r["src"], r["dst"])
            for r in await con.fetch("SELECT edge_type, src, dst FROM lineage_edges")
        }
        assert edges == {
            ("input", f"dataset_version:customers@{dv['version']}", f"run:{run_id}"),
            ("trained", f"run:{run_id}", "model_version:churn-clf@1"),
        }
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
    finally:
        await con.close()


async def test_a_training_script_through_the_gateway(stack: Stack, tmp_path: Path) -> None:
    env = _client_env(stack, f"http://127.0.0.1:{stack.port}", tmp_path)
    result = await _run_script(
        ["docs/examples/train.py", "--data", str(tmp_path / "data"), "--epochs", "12"], env
    )
    await _check_training_run(stack.url, result, 12)


async def test_a_training_script_through_kafka(
    stack: Stack, services: Services, tmp_path: Path
) -> None:
    env = _client_env(stack, f"kafka://{services.kafka_bootstrap}", tmp_path)
    result = await _run_script(
        ["docs/examples/train.py", "--data", str(tmp_path / "data"), "--epochs", "8"], env
    )
    await _check_training_run(stack.url, result, 8)


# Logs STEPS x KEYS points over a few seconds, so the gateway can die and return meanwhile.
LONG_RUN = """
import json, sys, time
import studbook
studbook.init()
with studbook.start_run("long run") as run:
    for step in range({steps}):
        run.log_metrics({{f"m{{k}}": step * 0.1 + k for k in range({keys})}}, step=step)
        time.sleep({pause})
studbook.flush(timeout=120)
print(json.dumps({{"run": run.id}}))
"""


async def test_killing_the_gateway_mid_run_loses_and_duplicates_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    steps, keys = 80, 5
    env = _client_env(stack, f"http://127.0.0.1:{stack.port}", tmp_path)
    script = LONG_RUN.format(steps=steps, keys=keys, pause=0.05)
    client = asyncio.create_task(_run_script(["-c", script], env))
    await asyncio.sleep(1.2)
    assert not client.done(), "the run ended before the gateway could be killed"
    stack.kill_gateway()
    await asyncio.sleep(1.5)
    stack.start_gateway()
    result = await client
    run_id = result["run"]
    await _wait_for(stack.url, "SELECT status FROM runs WHERE run_id = $1", "completed", run_id)
    await _wait_for(stack.url, POINTS_OF_RUN, steps * keys, run_id)
    con = await postgres.connect(stack.url)
    try:
        distinct = await con.fetchval(DISTINCT_POINTS_OF_RUN, run_id)
        assert distinct == steps * keys
        # Stored exactly once: no event id twice, every event of the run present.
        assert await con.fetchval("SELECT count(*) = count(DISTINCT event_id) FROM public.events")
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
    finally:
        await con.close()
    left = [f for f in (tmp_path / "spool").rglob("*") if f.is_file() and f.stat().st_size > 0]
    assert left == [], f"the spool was not drained: {left}"


def _log_steps(run: studbook.Run, start: int, stop: int, keys: int) -> None:
    for step in range(start, stop):
        run.log_metrics({f"m{k}": step * 0.1 + k for k in range(keys)}, step=step)


def _spooled_points(spool: Path) -> int:
    lines = [line for f in spool.glob("*.ndjson") for line in f.read_bytes().splitlines()]
    return sum(
        len(e["payload"]["metrics"])
        for e in map(json.loads, lines)
        if e["type"] == "run.metrics.logged"
    )


async def test_a_token_revoked_mid_run_holds_events_until_a_new_token_loses_nothing(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = 4
    points = POINTS_OF_RUN
    spool = tmp_path / "spool"
    monkeypatch.setattr(_client, "_token_warned", False)  # this test plays one training process
    con = await postgres.connect(stack.url)
    old_id, old = await auth.create_token(con, "training", ["write"], ["churn"])
    where = {"url": f"http://127.0.0.1:{stack.port}", "project": "churn", "spool_dir": spool}
    studbook.init(token=old, actor="trainer@e2e", **where)
    try:
        run = studbook.start_run("token revoked mid-run")
        _log_steps(run, 0, 100, keys)
        studbook.flush()
        await _wait_for(stack.url, points, 100 * keys, run.id)

        assert await auth.revoke_token(con, old_id)  # e.g. rotated by an admin during training

        def keep_training() -> None:
            _log_steps(run, 100, 400, keys)
            studbook.annotate(run, "still training")
            studbook.flush()  # returns once everything is spooled

        with pytest.warns(UserWarning, match=r"refused the token \(HTTP 401") as warned:
            keep_training()
        assert len(warned) == 1
        _log_steps(run, 400, 500, keys)  # no second warning: warnings are errors here
        studbook.flush()
        refused = [
            r for r in caplog.records if r.name == "studbook" and r.levelno >= logging.WARNING
        ]
        assert len(refused) == 1
        assert "refused the token" in refused[0].getMessage()
        assert _spooled_points(spool) == 400 * keys  # every point since the revocation is kept
        assert await con.fetchval(points, run.id) == 100 * keys  # and none got in meanwhile

        _, new = await auth.create_token(con, "training (rotated)", ["write"], ["churn"])
        studbook.init(token=new, actor="trainer@e2e", **where)  # same settings, new token
        _log_steps(run, 500, 600, keys)
        run.finish()
        studbook.flush(timeout=60)

        await _wait_for(stack.url, "SELECT status FROM runs WHERE run_id = $1", "completed", run.id)
        await _wait_for(stack.url, points, 600 * keys, run.id)
        distinct = DISTINCT_POINTS_OF_RUN
        assert await con.fetchval(distinct, run.id) == 600 * keys
        per_key = await con.fetch("SELECT key, points FROM run_metrics WHERE run_id = $1", run.id)
        assert sorted((r["key"], r["points"]) for r in per_key) == [
            (f"m{k}", 600) for k in range(keys)
        ]
        notes = "SELECT count(*) FROM public.events WHERE type = 'annotation.added'"
        assert await con.fetchval(notes) == 1
        assert await con.fetchval("SELECT count(*) = count(DISTINCT event_id) FROM public.events")
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        assert list(spool.glob("*.ndjson")) == []
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    finally:
        studbook.shutdown(timeout=30)
        await con.close()


# A sweep that never flushes: each run's end is handed over, the interpreter's exit delivers.
# The best run's model is registered from the script, numbered by the server.
SWEEP = """
import json
import studbook
studbook.init()
versions = []
runs = []
for trial in range({trials}):
    with studbook.start_run(f"trial {{trial}}", params={{"lr": 0.01 * (trial + 1)}}) as run:
        for step in range({steps}):
            run.log_metric("loss", 1.0 / (step + trial + 1), step=step)
    runs.append(run.id)
    mv = studbook.register_model("sweep-clf", f"s3://models/{{run.id}}", run=run)
    versions.append(mv.version)
print(json.dumps({{"runs": runs, "versions": versions}}))
"""


async def _check_sweep(url: str, result: dict[str, Any], trials: int, steps: int) -> None:
    finished = "SELECT count(*) FROM runs WHERE status = 'completed' AND run_id = ANY($1::text[])"
    await _wait_for(url, finished, trials, result["runs"])
    points = (
        "SELECT coalesce(sum(c.n), 0) FROM metric_chunks c JOIN metric_series s ON s.id = c.series_id"
        " WHERE s.run_id = ANY($1::text[])"
    )
    await _wait_for(url, points, trials * steps, result["runs"])
    await _wait_for(url, "SELECT count(*) FROM model_versions WHERE model = 'sweep-clf'", trials)
    con = await postgres.connect(url)
    try:
        numbered = dict(
            await con.fetch("SELECT run_id, number FROM model_versions WHERE model = 'sweep-clf'")
        )
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
    finally:
        await con.close()
    assert sorted(numbered.values()) == list(range(1, trials + 1))
    if result["versions"] != [None] * trials:  # through the gateway: the numbers it stored
        assert result["versions"] == [numbered[run] for run in result["runs"]]


async def test_a_sweep_through_the_gateway_numbers_its_models_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    env = _client_env(stack, f"http://127.0.0.1:{stack.port}", tmp_path)
    result = await _run_script(["-c", SWEEP.format(trials=5, steps=300)], env)
    assert result["versions"] == [1, 2, 3, 4, 5]  # the numbers the registry stored
    await _check_sweep(stack.url, result, 5, 300)


async def test_a_sweep_through_kafka_has_no_version_numbers_at_once(
    stack: Stack, services: Services, tmp_path: Path
) -> None:
    env = _client_env(stack, f"kafka://{services.kafka_bootstrap}", tmp_path)
    result = await _run_script(["-c", SWEEP.format(trials=3, steps=300)], env)
    assert result["versions"] == [None, None, None]
    await _check_sweep(stack.url, result, 3, 300)

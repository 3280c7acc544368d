"""Operator commands find the embedded database of a running `studbook-server up` with no
settings, and say in one line what to do when there is none; all on real processes."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from studbook_server.config import load_settings
from studbook_server.locate import resolve_database_url
from tests.support import ev
from tests.test_embedded_up import _caught_up, _free_port, _graphql, _post, _Up

EXE = Path(sys.executable).with_name("studbook-server")
RUN_QUERY = '{ run(id: "churn/run:operator") { name status } }'


def _env(**settings: str) -> dict[str, str]:
    """This environment without any STUDBOOK_ setting (the stack's database URL included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    return env | settings


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _data_dir(prefix: str) -> str:
    folder = tempfile.mkdtemp(prefix=prefix)
    os.chmod(folder, 0o755)  # as root, PostgreSQL runs as an unprivileged user
    return folder


@dataclasses.dataclass(frozen=True)
class Running:
    up: _Up
    admin_token: str
    data_dir: str

    @property
    def env(self) -> dict[str, str]:
        return _env(STUDBOOK_DATA_DIR=self.data_dir)


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    data_dir = _data_dir("studbook-operator-")
    up = _Up(data_dir, os.path.join(data_dir, "up.log"))
    try:
        admin = up.ready()
        sent = _post(up.port, admin, [ev("run.started", "run:operator", {"name": "operator"})])
        for _ in range(100):
            if _caught_up(up.port, admin, sent["consistency_token"]):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"never projected:\n{up.output()}")
        yield Running(up, admin, data_dir)
    finally:
        assert up.stop() == 0, up.output()
        shutil.rmtree(data_dir, ignore_errors=True)


def _refused(port: int, token: str) -> int:
    try:
        _graphql(port, token, RUN_QUERY)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], command: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"studbook-server {command}: error: "), proc.stderr
    return lines[0]


def test_the_url_is_the_running_embedded_postgresql(running: Running) -> None:
    settings = dataclasses.replace(load_settings(), database_url="")
    url = resolve_database_url(settings, Path(running.data_dir))
    assert url.startswith("postgresql://postgres:")
    assert url.endswith(f"@127.0.0.1:{running.up.pg_port}/postgres")


def test_token_create_list_and_revoke_work_on_the_running_up(running: Running) -> None:
    made = _cli(
        "token", "create", "--name", "x", "--scopes", "read", "--projects", "*", env=running.env
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    found = re.search(r"created token (\S+) \(x\)", made.stderr)
    assert found, made.stderr
    token_id = found.group(1)
    # The new token is accepted by the running service.
    assert _graphql(running.up.port, token, RUN_QUERY)["run"] == {
        "name": "operator",
        "status": "RUNNING",
    }

    listed = _cli("token", "list", env=running.env)
    assert listed.returncode == 0, listed.stderr
    mine = [line.split() for line in listed.stdout.splitlines() if line.startswith(token_id)]
    assert mine == [[token_id, "x", "read", "*", "active"]], listed.stdout

    revoked = _cli("token", "revoke", token_id, env=running.env)
    assert revoked.returncode == 0, revoked.stderr
    assert _refused(running.up.port, token) == 401


def test_export_events_writes_the_store_of_the_running_up(running: Running) -> None:
    exported = _cli("export-events", env=running.env)
    assert exported.returncode == 0, exported.stderr
    events = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert [(e["type"], e["subject"]) for e in events] == [("run.started", "run:operator")]
    assert events[0]["position"] == 1
    assert "export-events: wrote 1 events" in exported.stderr


def test_rebuild_replays_the_store_of_the_running_up(running: Running) -> None:
    rebuilt = _cli("rebuild", env=running.env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuild: replayed 1 events" in rebuilt.stderr
    # The swapped-in read models answer the service's queries.
    answer = _graphql(running.up.port, running.admin_token, RUN_QUERY)
    assert answer["run"] == {"name": "operator", "status": "RUNNING"}


def test_verify_seal_and_status_work_on_the_running_up(running: Running, tmp_path: Path) -> None:
    checked = _cli("verify", env=running.env)
    assert checked.returncode == 0, checked.stderr
    assert "verify: ok, 1 events, chain intact" in checked.stdout
    key, log = tmp_path / "seal.pem", tmp_path / "seals.ndjson"
    assert _cli("seal", "--init-key", "--key", str(key), env=running.env).returncode == 0
    sealed = _cli("seal", "--key", str(key), "--log", str(log), env=running.env)
    assert sealed.returncode == 0, sealed.stderr
    assert "seal: position 1" in sealed.stdout
    status = _cli("status", "--json", env=running.env)
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["store"]["events"] == 1


async def test_a_database_url_comes_before_the_embedded_database(
    running: Running, database_factory: Callable[[], Coroutine[Any, Any, str]]
) -> None:
    url = await database_factory()
    env = running.env | {"STUDBOOK_DATABASE_URL": url}
    made = _cli("token", "create", "--name", "elsewhere", "--scopes", "read", env=env)
    assert made.returncode == 0, made.stderr
    # The token went to the database of the URL, which the running `up` does not use.
    assert _refused(running.up.port, made.stdout.strip()) == 401
    assert "elsewhere" in _cli("token", "list", env=env).stdout
    assert "elsewhere" not in _cli("token", "list", env=running.env).stdout


@pytest.mark.parametrize(
    "command",
    [
        ["token", "list"],
        ["export-events"],
        ["import-events", "IMPORT"],
        ["rebuild"],
        ["verify"],
        ["status"],
        ["migrate"],
    ],
    ids=lambda c: c[0],
)
def test_with_nothing_running_and_no_url_commands_say_what_to_do(
    command: list[str], tmp_path: Path
) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    export = tmp_path / "events.ndjson"
    export.write_bytes(orjson.dumps(ev("run.started", "run:r", {"name": "r"})) + b"\n")
    args = [str(export) if a == "IMPORT" else a for a in command]
    line = _assert_one_line_error(_cli(*args, env=_env(STUDBOOK_DATA_DIR=str(empty))), args[0])
    assert f"no embedded database in {empty}" in line
    for advice in ("scripts/run", "STUDBOOK_DATABASE_URL", "--data-dir"):
        assert advice in line


def test_a_data_folder_whose_server_stopped_says_so() -> None:
    data_dir = _data_dir("studbook-operator-stopped-")
    try:
        up = _Up(data_dir, os.path.join(data_dir, "up.log"))
        try:
            up.ready()
        finally:
            assert up.stop() == 0, up.output()
        proc = _cli("token", "list", env=_env(STUDBOOK_DATA_DIR=data_dir))
        line = _assert_one_line_error(proc, "token")
        assert f"the embedded PostgreSQL of {data_dir} is not running" in line
        assert "scripts/run" in line
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("command", [["token", "list"], ["export-events"], ["rebuild"]])
def test_an_unreachable_database_url_is_one_line(command: list[str]) -> None:
    port = _free_port()
    url = f"postgresql://postgres:not-shown@127.0.0.1:{port}/studbook"
    proc = _cli(*command, env=_env(STUDBOOK_DATABASE_URL=url))
    line = _assert_one_line_error(proc, command[0])
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/studbook" in line
    assert "not-shown" not in line

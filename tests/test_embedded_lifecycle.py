"""`studbook-server up` after a hard death, beside another `up`, and with its port taken; and the
port check that tells a closed connection in TIME-WAIT from a listening server. Real processes and
real PostgreSQL; the processes are the ones `tests/test_embedded_up.py` starts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from studbook_server.cli import build_parser
from studbook_server.embedded_pg import (
    EmbeddedPostgres,
    PortUse,
    pid_alive,
    port_taken,
    port_use,
    read_postmaster,
    wait_until_free,
)
from tests.support import ev
from tests.test_embedded_up import _caught_up, _free_port, _graphql, _post, _Up

EXE = Path(sys.executable).with_name("studbook-server")
DEFAULT_PG_PORT: int = build_parser().parse_args(["up"]).pg_port


def _env() -> dict[str, str]:
    """This environment without any STUDBOOK_ setting (the stack's database URL included)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}


def _up_once(*args: str) -> subprocess.CompletedProcess[str]:
    """An `up` expected to refuse to start: its exit and output."""
    return subprocess.run(
        [str(EXE), "up", "--no-demo", "--port", str(_free_port()), *args],
        env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def data_dir() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="studbook-lifecycle-")
    os.chmod(folder, 0o755)  # as root, PostgreSQL runs as an unprivileged user
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _server_processes(data: Path) -> list[int]:
    """Processes working in ``data``: a postmaster and all its children do."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == data.resolve():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _wait_caught_up(up: _Up, token: str, consistency: str) -> None:
    deadline = time.monotonic() + 10
    while not _caught_up(up.port, token, consistency):
        assert time.monotonic() < deadline, "the event was never projected"
        time.sleep(0.05)


def test_the_next_up_replaces_the_postgresql_a_killed_up_left_and_keeps_the_data(
    data_dir: str,
) -> None:
    data = Path(data_dir) / "postgres" / "data"
    first = _Up(data_dir, os.path.join(data_dir, "first.log"))
    try:
        token = first.ready()
        sent = _post(first.port, token, [ev("run.started", "run:survivor", {"name": "survivor"})])
        _wait_caught_up(first, token, sent["consistency_token"])
    finally:
        first.proc.kill()
        first.proc.wait(timeout=10)
        first.log.close()
    orphan = read_postmaster(data)
    assert orphan is not None, "the killed `up` took its PostgreSQL with it: nothing to test"
    assert orphan.port == first.pg_port
    assert orphan.pid in _server_processes(data)

    second = _Up(data_dir, os.path.join(data_dir, "second.log"))  # on another PostgreSQL port
    try:
        assert second.ready() == token
        assert (
            f"stopping the PostgreSQL (pid {orphan.pid}, port {first.pg_port}, ready) left running"
            in second.output()
        )
        assert not pid_alive(orphan.pid)
        replaced = read_postmaster(data)
        assert replaced is not None
        assert replaced.port == second.pg_port
        # The event sent before the kill is still there, and the new `up` serves reads and writes.
        assert _caught_up(second.port, token, sent["consistency_token"])
        run = _graphql(second.port, token, '{ run(id: "churn/run:survivor") { name } }')
        assert run == {"run": {"name": "survivor"}}
        again = _post(
            second.port, token, [ev("run.finished", "run:survivor", {"status": "completed"})]
        )
        assert again["consistency_token"] == "s1.2"

        # A second live `up` on the folder is refused; the running one is untouched.
        refused = _up_once("--data-dir", data_dir, "--pg-port", str(_free_port()))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"another `studbook-server up` (pid {second.proc.pid}) runs" in refused.stderr
        assert "--throwaway" in refused.stderr
        assert read_postmaster(data) == replaced
    finally:
        assert second.stop() == 0, second.output()
    assert read_postmaster(data) is None
    assert _server_processes(data) == []


def test_a_postmaster_pid_naming_a_live_process_that_is_no_server_is_stale(tmp_path: Path) -> None:
    # After a container restart the pid a dead server recorded may belong to anything; stopping
    # "the server" would signal that process.
    data = tmp_path / "data"
    data.mkdir()
    lines = [str(os.getpid()), str(data), "0", str(DEFAULT_PG_PORT), "/tmp", "127.0.0.1", "1 2"]
    (data / "postmaster.pid").write_text("\n".join([*lines, "ready", ""]))
    assert read_postmaster(data) is None
    assert EmbeddedPostgres(tmp_path, DEFAULT_PG_PORT).running() is None


def test_throwaway_takes_a_free_port_when_the_default_is_taken(tmp_path: Path) -> None:
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", DEFAULT_PG_PORT))
        blocker.listen()
    except OSError:
        pass  # something else listens there already: taken all the same
    assert port_use(DEFAULT_PG_PORT) is PortUse.LISTENER

    class Throwaway(_Up):
        def __init__(self, log: str) -> None:
            self.port, self.pg_port = _free_port(), 0
            self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self.log_path = log
            self.proc = subprocess.Popen(
                [str(EXE), "up", "--throwaway", "--no-demo", "--port", str(self.port)],
                stdout=self.log, stderr=subprocess.STDOUT, env=_env(),
            )  # fmt: skip

    up = Throwaway(str(tmp_path / "up.log"))
    try:
        token = up.ready()
        chosen = re.search(
            rf"port {DEFAULT_PG_PORT} is taken: the throwaway PostgreSQL uses port (\d+)",
            up.output(),
        )
        assert chosen, up.output()
        sent = _post(up.port, token, [ev("run.started", "run:throwaway", {"name": "t"})])
        _wait_caught_up(up, token, sent["consistency_token"])
    finally:
        assert up.stop() == 0, up.output()
        blocker.close()
    assert port_use(int(chosen[1])) is not PortUse.LISTENER


def test_up_on_a_taken_port_says_what_to_do(data_dir: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        refused = _up_once("--data-dir", data_dir, "--pg-port", str(port))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line, line
    assert f"port {port} on 127.0.0.1 is taken by a listening server" in line
    assert "another --pg-port (e.g. " in line
    assert "--throwaway" in line


def test_the_port_check_tells_a_connection_in_time_wait_from_a_listener() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        client_port = client.getsockname()[1]
        accepted, _ = server.accept()
        assert port_use(port) is PortUse.LISTENER
        assert wait_until_free(port) is PortUse.LISTENER  # at once: a server does not go away
        client.close()  # the side that closes first waits in TIME-WAIT
        assert accepted.recv(1) == b""
        accepted.close()
    # The client's port is held with no server behind it; a plain bind fails all the same.
    assert port_use(client_port) is PortUse.TIME_WAIT
    with socket.socket() as probe, pytest.raises(OSError, match="in use"):
        probe.bind(("127.0.0.1", client_port))
    notes: list[str] = []
    started = time.monotonic()
    assert wait_until_free(client_port, timeout=0.5, say=notes.append) is PortUse.TIME_WAIT
    assert time.monotonic() - started < 5
    assert len(notes) == 1
    assert (
        f"port {client_port} on 127.0.0.1 is held by a closed connection in TIME-WAIT" in notes[0]
    )
    message = port_taken(client_port, PortUse.TIME_WAIT, "wait a minute")
    assert "listening" not in message
    assert message.endswith(": wait a minute")
    # The server's side closed second: once its last ACK is in, nothing holds the port.
    deadline = time.monotonic() + 5
    while port_use(port) is not PortUse.FREE:
        assert time.monotonic() < deadline, port_use(port)
        time.sleep(0.01)

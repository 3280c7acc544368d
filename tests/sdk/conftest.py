"""Fixtures of the SDK's unit tests: an isolated environment, a stub gateway, fast clients.

No Kafka and no PostgreSQL: the stub gateway is `http.server` in a thread speaking the ingest
gateway's HTTP semantics (202 / 422 / 401 / 403 / 500, or not listening at all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import studbook
from studbook import _api, _client, _gitinfo
from studbook._config import Config
from studbook._transport import Transport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """A stand-in for the ingest gateway's `POST /v1/events`, started and stopped at will.

    ``mode``: ``"accept"`` (202), ``"fail"`` (500), ``"auth"`` (401). ``reject`` returns a
    message for an event that must be refused with 422 (the batch is refused, as the gateway
    does, with the index and path of each bad event). ``tokens`` (if set) are the bearer tokens
    it knows (others: 401), ``read_only`` the known ones without the write scope (403).
    ``forbid`` returns a message for an event the token may not send (403 naming the events).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "accept"
        self.reject: Callable[[dict[str, Any]], str | None] = lambda event: None
        self.forbid: Callable[[dict[str, Any]], str | None] = lambda event: None
        self.forbidden_project: str | None = None  # 403 for a batch with events of it
        self.tokens: set[str] | None = None
        self.read_only: set[str] = set()
        self.requests: list[list[dict[str, Any]]] = []
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        # Model version numbers, allocated on acceptance as the gateway does: by event id (a
        # re-sent registration keeps its number), counting per (project, model).
        self.numbers: dict[str, int] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                events = json.loads(body)
                with gateway.lock:
                    gateway.requests.append(events)
                    gateway.headers.append(dict(self.headers))
                    status, answer = gateway._answer(
                        self.path, events, self.headers.get("Authorization", "")
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def _answer(
        self, path: str, events: list[dict[str, Any]], authorization: str
    ) -> tuple[int, dict[str, Any]]:
        if path != "/v1/events":
            return 404, {"error": "not found"}
        if self.mode == "fail":
            return 500, {"error": "store unavailable"}
        token = authorization.removeprefix("Bearer ")
        if self.mode == "auth" or (self.tokens is not None and token not in self.tokens):
            return 401, {"error": "invalid token"}
        if token in self.read_only:
            return 403, {"error": "token lacks the `write` scope"}
        if any(e.get("project") == self.forbidden_project for e in events):
            return 403, {"error": f"token may not write to project {self.forbidden_project}"}
        errors = []
        for index, event in enumerate(events):
            message = self.reject(event)
            if message is not None:
                errors.append({"index": index, "path": "/payload/text", "message": message})
        if errors:
            return 422, {"errors": errors}
        forbidden = [
            {"index": index, "path": "/type", "message": message}
            for index, event in enumerate(events)
            if (message := self.forbid(event)) is not None
        ]
        if forbidden:
            return 403, {"error": forbidden[0]["message"], "errors": forbidden}
        self.accepted.extend(events)
        answer: dict[str, Any] = {
            "accepted": [e["event_id"] for e in events],
            "consistency_token": f"ct-{len(self.accepted)}",
        }
        numbered = []
        for event in events:
            if event["type"] != "model.version.registered":
                continue
            model = event["subject"].removeprefix("model:")
            if event["event_id"] not in self.numbers:
                key = (event["project"], model)
                self._counters[key] = self._counters.get(key, 0) + 1
                self.numbers[event["event_id"]] = self._counters[key]
            version = self.numbers[event["event_id"]]
            numbered.append({"event_id": event["event_id"], "model": model, "version": version})
        if numbered:
            answer["model_versions"] = numbered
        return 202, answer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
        self._server = None

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [e["event_id"] for e in self.accepted]

    def accepted_of(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.accepted if e["type"] == event_type]


@functools.cache
def _clean_snapshot() -> _gitinfo.Snapshot:
    """The test process's code as if its checkout had no uncommitted changes: whether the tree
    running the tests is dirty must not change which events a test sees (a run.diff.recorded)."""
    taken = _gitinfo.snapshot()
    return _gitinfo.Snapshot({k: v for k, v in taken.code.items() if k != "diff"}, taken.root, None)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No STUDBOOK_* settings from outside; cache and spool in the test's folder; the code
    captured as from a clean checkout."""
    for key in list(os.environ):
        if key.startswith("STUDBOOK_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(_gitinfo, "process_snapshot", _clean_snapshot)
    monkeypatch.setenv("STUDBOOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STUDBOOK_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setattr(_client, "_token_warned", False)  # each test is a process, so to speak
    yield tmp_path
    with contextlib.suppress(studbook.StudbookError):
        studbook.shutdown(timeout=10)
    for client in list(_client._clients):
        client.shutdown(timeout=10, raise_errors=False)


@pytest.fixture
def spool_dir(isolated: Path) -> Path:
    return isolated / "spool"


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def down_gateway() -> Iterator[Gateway]:
    """A gateway that is not listening yet: connections are refused until `start()`."""
    gw = Gateway()
    yield gw
    gw.stop()


FAST = {"linger_s": 0.02, "retry_initial_s": 0.05, "retry_max_s": 0.2}


def make_config(url: str = "http://127.0.0.1:9", **tweaks: Any) -> Config:
    config = Config.resolve(url=url, project="churn", actor="alice")
    return dataclasses.replace(config, **{**FAST, **tweaks})


@pytest.fixture
def install() -> Callable[..., _client.Client]:
    """Make the process's client: ``install(transport=None, url=..., **config tweaks)``."""

    def make(
        transport: Transport | None = None, url: str = "http://127.0.0.1:9", **tweaks: Any
    ) -> _client.Client:
        return _api._install(make_config(url, **tweaks), transport)

    return make

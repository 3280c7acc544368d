"""The HTTP transport's reading of the gateway's answers, and the dispatcher's reaction."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

import studbook
from conftest import Gateway, free_port
from studbook._client import Client
from studbook._transport import HttpTransport, Refused, Sent, Unauthorized, Unavailable


class Scripted:
    """A raw HTTP/1.1 server answering each connection with the next scripted reply
    (``None``: close the connection without answering)."""

    def __init__(self, replies: list[tuple[int, dict[str, object]] | None]) -> None:
        self.replies = list(replies)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.bodies: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.bodies.append(body)
                reply = self.replies.pop(0)
                if reply is None:
                    continue  # closed without an answer
                status, doc = reply
                payload = json.dumps(doc).encode()
                conn.sendall(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (status, len(payload), payload)
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(*replies: tuple[int, dict[str, object]] | None) -> Scripted:
        servers.append(Scripted(list(replies)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


EVENTS = [orjson.dumps({"event_id": "e1"}), orjson.dumps({"event_id": "e2"})]


def test_answers_are_read_as_outcomes(scripted: Callable[..., Scripted]) -> None:
    server = scripted(
        (202, {"accepted": ["e1", "e2"], "consistency_token": "tok-1"}),
        (422, {"errors": [{"index": 1, "path": "/payload/x", "message": "bad"}]}),
        (401, {"error": "invalid token"}),
        (403, {"error": "token `ci` lacks the `write` scope"}),
        (403, {"error": "no approve scope", "errors": [{"index": 0, "path": "/type"}]}),
        (413, {"error": "too large"}),
        (503, {"error": "busy"}),
        (429, {"error": "slow down"}),
    )
    transport = HttpTransport(server.url, "tok")
    try:
        assert transport.send(EVENTS) == Sent("tok-1")
        assert server.bodies[0] == b'[{"event_id":"e1"},{"event_id":"e2"}]'
        assert transport.send(EVENTS) == Refused(
            422, "1 violation(s)", [{"index": 1, "path": "/payload/x", "message": "bad"}]
        )
        # The token, not the data: a different outcome, so the events are kept, not dropped.
        assert transport.send(EVENTS) == Unauthorized(401, "invalid token")
        assert transport.send(EVENTS) == Unauthorized(403, "token `ci` lacks the `write` scope")
        # A 403 that names its events is about them: the token may not record these ones.
        assert transport.send(EVENTS) == Refused(
            403, "no approve scope", [{"index": 0, "path": "/type"}]
        )
        assert transport.send(EVENTS) == Refused(413, "too large")
        assert isinstance(transport.send(EVENTS), Unavailable)
        assert isinstance(transport.send(EVENTS), Unavailable)
    finally:
        transport.close()


def test_a_dropped_connection_is_tried_once_more(scripted: Callable[..., Scripted]) -> None:
    server = scripted(None, (202, {"accepted": ["e1", "e2"], "consistency_token": "t"}))
    transport = HttpTransport(server.url, None)
    try:
        assert transport.send(EVENTS) == Sent("t")
        assert len(server.bodies) == 2
    finally:
        transport.close()


def test_connection_refused_is_unavailable() -> None:
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}", None)
    try:
        assert isinstance(transport.send(EVENTS), Unavailable)
    finally:
        transport.close()


def test_no_gateway_at_the_url_spools_rather_than_drops(
    gateway: Gateway, install: Callable[..., Client], spool_dir: Path
) -> None:
    install(url=gateway.url + "/wrong-prefix", retry_initial_s=5, retry_max_s=5)
    studbook.annotate("project:churn", "kept")
    studbook.flush()  # HTTP 404: a setup problem, not bad data
    assert len(list(spool_dir.glob("*.ndjson"))) == 1
    assert not gateway.accepted

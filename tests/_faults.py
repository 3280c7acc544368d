"""Helpers of the fault suite (tests/test_faults.py): a private Kafka and PostgreSQL that faults
may stop, freeze and restart; the services as real `studbook-server` processes; an HTTP client on
a kept-alive connection; a sender that behaves like the SDK; and exact counts of what was stored.

The private stack is started with `scripts/stack.py` under its own folder and ports (below the
kernel's ephemeral range), so stopping its broker or restarting its PostgreSQL never touches the
shared stack the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from studbook_server import auth, integrity
from studbook_server.adapters import postgres
from studbook_server.embedded_pg import EmbeddedPostgres, PortUse, pid_alive, port_use, read_pid
from studbook_server.rebuild import rebuild
from tests.support import assert_same_read_models, dump_read_models, migrated

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(sys.executable).with_name("studbook-server")
STACK = ROOT / "scripts" / "stack.py"
# The opt-in soak: more kills, longer outages and a longer abuse loop.
SOAK = os.environ.get("STUDBOOK_SOAK") == "1"
# The figures of the last run, for docs/reliability.md (tests/artifacts/ is not committed).
FIGURES = ROOT / "tests" / "artifacts" / "faults.json"
# The shared stack's default ports: never chosen for a private one.
SHARED_PORTS = frozenset({19092, 19093, 15432, 15433})


def free_ports(count: int, *, low: int = 20000, high: int = 32000) -> list[int]:
    """``count`` distinct ports a server can listen on, below the ephemeral range (32768-)."""
    rng = random.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(low, high)
        if port not in chosen and port not in SHARED_PORTS and port_use(port) is PortUse.FREE:
            chosen.append(port)
    return chosen


def record(test: str, **figures: Any) -> None:
    """Keep a test's figures in FIGURES (merged with the other tests' of the same run)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        data = {}
    data[test] = {"soak": SOAK, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data[test] |= figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ------------------------------------------------------------------------- the private stack


@dataclass
class PrivateStack:
    """A Kafka broker and a PostgreSQL server of our own, started by `scripts/stack.py`."""

    folder: Path
    kafka_port: int
    controller_port: int
    pg_port: int
    starting: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # how long the first `scripts/stack.py up` took
    waited_s: float = 0.0  # how long the first test needing the stack waited for it

    @classmethod
    def begin(cls) -> PrivateStack:
        """Start `scripts/stack.py up` in the background; :meth:`ready` waits for it."""
        folder = Path(tempfile.mkdtemp(prefix="studbook-faults-", dir="/tmp"))
        folder.chmod(0o755)  # PostgreSQL's unprivileged user must reach its data below
        kafka, controller, pg = free_ports(3)
        stack = cls(folder, kafka, controller, pg)
        began = time.monotonic()
        stack.starting = proc = stack._popen("up")

        def stamp() -> None:
            proc.wait()
            stack.started_s = time.monotonic() - began

        threading.Thread(target=stamp, daemon=True).start()
        return stack

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_STACK_")}
        return env | {
            "STUDBOOK_STACK_DIR": str(self.folder / "stack"),
            "STUDBOOK_STACK_KAFKA_PORT": str(self.kafka_port),
            "STUDBOOK_STACK_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "STUDBOOK_STACK_PG_PORT": str(self.pg_port),
        }

    @property
    def log(self) -> Path:
        return self.folder / "stack.log"

    def _popen(self, *args: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, str(STACK), *args], env=self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _stack(self, *args: str, limit_s: float = 180) -> None:
        proc = self._popen(*args)
        try:
            code = proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        if code != 0:
            pytest.fail(
                f"`scripts/stack.py {' '.join(args)}` for the private stack failed (exit code "
                f"{code}); its output:\n{self.output()}",
                pytrace=False,
            )

    def output(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"

    def ready(self, limit_s: float = 240) -> None:
        """Wait for the background `up`; fail the test (never skip) if it did not work."""
        if self.starting is None:
            return
        proc, self.starting = self.starting, None
        waiting = time.monotonic()
        try:
            code = proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        self.waited_s = time.monotonic() - waiting
        if code != 0:
            pytest.fail(
                f"the private Kafka and PostgreSQL of the fault suite did not start (exit code "
                f"{code}; ports {self.kafka_port}, {self.controller_port}, {self.pg_port}); "
                f"`scripts/stack.py up` said:\n{self.output()}",
                pytrace=False,
            )

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.folder / "stack" / "postgres", self.pg_port)

    @property
    def admin_database_url(self) -> str:
        return self.postgres.url

    def kafka_pid(self) -> int:
        pid = read_pid(self.folder / "stack" / "kafka" / "kafka.pid")
        assert pid is not None, f"the private Kafka is not running\n{self.output()}"
        return pid

    def stop_kafka(self) -> None:
        """Stop the broker as an operator would (SIGTERM: a controlled shutdown)."""
        pid = self.kafka_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def start_kafka(self) -> None:
        """Start it again on its data (idempotent `up`; returns once it answers metadata)."""
        self._stack("up")

    def freeze_kafka(self) -> None:
        """SIGSTOP the broker's JVM: connections stay open, nothing answers."""
        os.kill(self.kafka_pid(), signal.SIGSTOP)

    def thaw_kafka(self) -> None:
        os.kill(self.kafka_pid(), signal.SIGCONT)

    def stop_postgres(self) -> None:
        """`pg_ctl stop -m fast`: every session is ended, open transactions roll back."""
        assert self.postgres.stop(), "the private PostgreSQL was not running"

    def start_postgres(self) -> None:
        self.postgres.start(say=lambda _: None)

    def down(self) -> None:
        if self.starting is not None:
            with contextlib.suppress(Exception):
                self.ready()
        pid = read_pid(self.folder / "stack" / "kafka" / "kafka.pid")
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a frozen broker cannot act on SIGTERM
        try:
            self._stack("down", "--purge", limit_s=90)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


async def new_database(admin_url: str) -> str:
    """A fresh database on the server of ``admin_url``, migrated."""
    name = f"studbook_faults_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')  # name made here, never from input
    finally:
        await con.close()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    await migrated(url)
    return url


async def new_topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"studbook-faults-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
        for _ in range(100):
            if name in await admin.list_topics():
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    return name


async def topic_records(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if partitions:
                break
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} has no partitions"
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def _where_in_topic(
    con: Any, bootstrap: str, topic: str, group: str | None, lost: set[str]
) -> str:
    """Where the lost events are in the topic (partition@offset), and the stored offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[str, list[str]] = {}
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert tps, f"topic {topic} has no partitions"
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for r in records:
                    event_id = orjson.loads(r.value).get("event_id") if r.value else None
                    if event_id in lost:
                        found.setdefault(event_id, []).append(f"{tp.partition}@{r.offset}")
                    if r.offset + 1 >= ends[tp]:
                        left.discard(tp)
    finally:
        await consumer.stop()
    offsets = await con.fetch(
        "SELECT partition, next_offset FROM public.consumer_offsets WHERE topic = $1"
        + (" AND group_id = $2" if group else "") + " ORDER BY partition",
        *([topic, group] if group else [topic]),
    )  # fmt: skip
    missing = sorted(lost - set(found))
    return (
        f"; in the topic: {dict(sorted(found.items()))}; never published: {missing[:5]}"
        f" ({len(missing)}); ends {[ends[tp] for tp in tps]}; stored offsets "
        f"{[(r['partition'], r['next_offset']) for r in offsets]}"
    )


async def token(url: str, scopes: Sequence[str] = ("read", "write", "approve")) -> str:
    con = await postgres.connect(url)
    try:
        _, secret = await auth.create_token(con, "faults", list(scopes), ["*"])
    finally:
        await con.close()
    return secret


# ---------------------------------------------------------------------------- the services


def service_env(
    database_url: str, bootstrap: str, topic: str, group: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    return (
        env
        | {
            "STUDBOOK_DATABASE_URL": database_url,
            "STUDBOOK_KAFKA_BOOTSTRAP": bootstrap,
            "STUDBOOK_EVENTS_TOPIC": topic,
            "STUDBOOK_CONSUMER_GROUP": group,
            "STUDBOOK_BATCH_MAX_RECORDS": "500",
            "STUDBOOK_BATCH_TIMEOUT_MS": "100",
            "STUDBOOK_LOG_LEVEL": "INFO",
        }
        | extra
    )


class Service:
    """One `studbook-server <role>` process (`ingest`, `api`, `projector`), restartable; each
    life logs to its own file under ``logs``. A projector serves its metrics on ``port``."""

    def __init__(self, role: str, env: dict[str, str], logs: Path, name: str = "") -> None:
        self.role = role
        self.name = name or role
        self.env = dict(env)
        self.logs = logs
        [self.port] = free_ports(1)
        if role == "projector":
            self.env["STUDBOOK_METRICS_PORT"] = str(self.port)
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.lives = 0

    def start(self, limit_s: float = 60) -> Service:
        """Start a new life and wait until it answers HTTP; fail the test if it does not."""
        self.close()
        self.lives += 1
        cmd = [str(SERVER), self.role]
        if self.role != "projector":
            cmd += ["--port", str(self.port)]
        self._out = (self.logs / f"{self.name}-{self.lives}.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        path = "/metrics" if self.role == "projector" else "/healthz"
        deadline = time.monotonic() + limit_s
        while True:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"`studbook-server {self.role}` ({self.name}) exited with code {code} while "
                    f"starting\n{self.tail()}",
                    pytrace=False,
                )
            if get_once(self.port, path, timeout=2).status == 200:
                return self
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`studbook-server {self.role}` ({self.name}) did not answer {path} on port "
                    f"{self.port} within {limit_s:g} s\n{self.tail()}",
                    pytrace=False,
                )
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait until the kernel has reaped it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, limit_s: float = 30) -> int | None:
        """SIGTERM; the exit code (None: still running after ``limit_s``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(limit_s)
        return self.proc.poll()

    def log_text(self, life: int | None = None) -> str:
        lives = [life] if life else range(1, self.lives + 1)
        parts = []
        for n in lives:
            with contextlib.suppress(OSError):
                parts.append((self.logs / f"{self.name}-{n}.log").read_text(errors="replace"))
        return "\n".join(parts)

    def tail(self, chars: int = 3000) -> str:
        code = self.proc.poll() if self.proc is not None else None
        return (
            f"--- {self.name} (life {self.lives}, exit code {code}) ---\n"
            + self.log_text(self.lives)[-chars:]
        )

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples it serves (name with labels -> value)."""
        answer = get_once(self.port, "/metrics", timeout=5)
        assert answer.status == 200, f"/metrics answered {answer.status}\n{self.tail()}"
        out: dict[str, float] = {}
        for line in answer.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def close(self) -> None:
        """Leave no process behind, whatever happened in the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None


class Closable(Protocol):
    def close(self) -> None: ...


@contextlib.contextmanager
def running(*things: Closable) -> Iterator[None]:
    """Close every service (killing what still runs) and client when the block ends."""
    try:
        yield
    finally:
        for thing in things:
            thing.close()


# ------------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (refused, reset, timed out): see ``error``
    body: bytes
    headers: dict[str, str]
    seconds: float
    error: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __str__(self) -> str:
        text = self.error or self.body[:300].decode(errors="replace")
        return f"HTTP {self.status} after {self.seconds:.3f}s: {text}"


# A kept-alive connection idle this long is not reused; one the server closed before answering
# is retried once on a new connection (requests here are idempotent: event ids, queries).
KEEP_ALIVE_S = 4.0
_STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)


class Http:
    """HTTP/1.1 on one kept-alive connection to a local service; reconnects after an error."""

    def __init__(self, port: int, token: str | None = None, timeout: float = 60.0) -> None:
        self.port, self.token, self.timeout = port, token, timeout
        self._con: http.client.HTTPConnection | None = None
        self._last = 0.0
        self.connections = 0  # opened so far

    def request(
        self, method: str, path: str, body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Answer:  # fmt: skip
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._con is not None and time.monotonic() - self._last > KEEP_ALIVE_S:
            self.close()  # the server has closed it (uvicorn keeps an idle connection 5 s)
        reused = self._con is not None
        started = time.monotonic()
        try:
            if self._con is None:
                self._con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.connections += 1
            self._con.request(method, path, body=body, headers=headers)
            response = self._con.getresponse()
            data = response.read()
            answer = Answer(
                response.status, data, {k.lower(): v for k, v in response.getheaders()},
                time.monotonic() - started,
            )  # fmt: skip
            if response.will_close:
                self.close()
            self._last = time.monotonic()
            return answer
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if reused and isinstance(exc, _STALE):
                return self.request(method, path, body, content_type)  # as HTTP clients do
            return Answer(0, b"", {}, time.monotonic() - started, f"{type(exc).__name__}: {exc}")

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post_events(self, events: Sequence[dict[str, Any]] | bytes, ndjson: bool = False) -> Answer:
        if isinstance(events, bytes):
            body = events
        elif ndjson:
            body = b"\n".join(orjson.dumps(e) for e in events)
        else:
            body = orjson.dumps(list(events))
        return self.request(
            "POST", "/v1/events", body, "application/x-ndjson" if ndjson else "application/json"
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Answer:
        body = orjson.dumps({"query": query, "variables": variables or {}})
        return self.request("POST", "/graphql", body)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def get_once(port: int, path: str, token: str | None = None, timeout: float = 10) -> Answer:
    """One GET on a connection of its own."""
    client = Http(port, token, timeout)
    try:
        return client.get(path)
    finally:
        client.close()


# ---------------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Delivery:
    """One answer the gateway gave the sender."""

    batch: int
    attempt: int
    sent_at: float  # time.monotonic()
    seconds: float
    status: int
    retry_after: str | None
    error: str

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.seconds


class Sender(threading.Thread):
    """Sends ``batches`` through the gateway one after the other, as the SDK does: a batch that
    is not acknowledged (503, or no answer at all) is sent again with the same event ids until it
    is (202), then the next one. Any other answer is a failure of the test."""

    def __init__(
        self, port: int, token: str, batches: Sequence[Sequence[dict[str, Any]]],
        pause_s: float = 0.02, retry_s: float = 0.25,
    ) -> None:  # fmt: skip
        super().__init__(name="fault-sender", daemon=True)
        self.http = Http(port, token)
        self.batches = [list(b) for b in batches]
        self.pause_s, self.retry_s = pause_s, retry_s
        self.acknowledged: list[str] = []
        self.done_batches = 0
        self.deliveries: list[Delivery] = []
        self.failure: str | None = None
        self.stopping = threading.Event()

    @property
    def sent(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def requests(self) -> int:
        return len(self.deliveries)

    def run(self) -> None:
        try:
            for n, batch in enumerate(self.batches):
                attempt = 0
                while not self.stopping.is_set():
                    attempt += 1
                    started = time.monotonic()
                    answer = self.http.post_events(batch)
                    self.deliveries.append(
                        Delivery(
                            n, attempt, started, answer.seconds, answer.status,
                            answer.headers.get("retry-after"), answer.error or (
                                "" if answer.status == 202 else answer.body[:200].decode()
                            ),
                        )
                    )  # fmt: skip
                    if answer.status == 202:
                        accepted = answer.json()["accepted"]
                        ids = list(dict.fromkeys(e["event_id"] for e in batch))
                        if accepted != ids:
                            self.failure = f"batch {n}: accepted {len(accepted)} of {len(ids)}"
                            return
                        self.acknowledged += accepted
                        self.done_batches += 1
                        break
                    if answer.status not in (0, 503):
                        self.failure = f"batch {n}, attempt {attempt}: {answer}"
                        return
                    time.sleep(self.retry_s)
                if self.stopping.is_set():
                    return
                time.sleep(self.pause_s)
        finally:
            self.http.close()

    def finish(self, limit_s: float) -> None:
        """Wait until every batch is acknowledged; fail with what happened otherwise."""
        self.join(limit_s)
        if self.is_alive():
            self.stopping.set()
            self.join(30)
        assert self.failure is None, self.failure
        assert self.done_batches == len(self.batches), (
            f"{self.done_batches} of {len(self.batches)} batches acknowledged within {limit_s}s; "
            f"last answers: {self.deliveries[-3:]}"
        )

    def wait_acknowledged(self, count: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.acknowledged) < count:
            assert self.failure is None, self.failure
            assert self.is_alive() or len(self.acknowledged) >= count, "the sender stopped"
            assert time.monotonic() < deadline, (
                f"{len(self.acknowledged)} of {count} events acknowledged within {limit_s}s; "
                f"last answers: {self.deliveries[-3:]}"
            )
            time.sleep(0.02)

    def answers_between(self, start: float, end: float) -> list[Delivery]:
        """Answers to requests sent in [start, end)."""
        return [d for d in self.deliveries if start <= d.sent_at < end]

    def first_after(self, moment: float, status: int) -> Delivery | None:
        return next(
            (d for d in self.deliveries if d.answered_at >= moment and d.status == status), None
        )

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(d.status for d in self.deliveries).items())}


def batches_of(events: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def poll_status(port: int, path: str, want: int, limit_s: float, token: str | None = None) -> float:
    """Seconds until ``path`` answers ``want`` (polled every 0.2 s on a fresh connection)."""
    started = time.monotonic()
    while True:
        answer = get_once(port, path, token, timeout=limit_s)
        if answer.status == want:
            return time.monotonic() - started
        assert time.monotonic() - started < limit_s, (
            f"{path} did not answer {want} within {limit_s}s; last: {answer}"
        )
        time.sleep(0.2)


# ---------------------------------------------------------------------------------- counting


@dataclass
class Counts:
    """What a fault test sent and what the store holds, for its assertions and the doc."""

    sent: int = 0  # distinct events the clients sent (or produced)
    acknowledged: int = 0  # of which acknowledged (202, or flushed to Kafka)
    records: int = 0  # records in the topic (re-deliveries included)
    stored: int = 0  # rows in public.events
    projected: int = 0  # the read models' checkpoint position
    lost: int = 0  # acknowledged (or expected) but not stored
    duplicated: int = 0  # stored more than once
    dead_lettered: int = 0
    metric_points_sent: int = 0
    metric_points_stored: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out |= out.pop("extra")
        return out


async def wait_projected(
    url: str, group: str, topic: str, records: int, watch: Sequence[Service], limit_s: float = 90
) -> None:
    """Until the stored offsets of ``group`` cover ``records``; fail at once (with its log) if a
    projector in ``watch`` dies meanwhile."""
    con = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + limit_s
        while True:
            done = await con.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM public.consumer_offsets"
                " WHERE group_id = $1 AND topic = $2",
                group, topic,
            )  # fmt: skip
            if done >= records:
                return
            for s in watch:
                assert s.alive, f"{s.name} died before projecting everything\n{s.tail()}"
            assert time.monotonic() < deadline, (
                f"{done} of {records} records projected within {limit_s}s\n"
                + "\n".join(s.tail() for s in watch)
            )
            await asyncio.sleep(0.1)
    finally:
        await con.close()


async def check_exact(
    url: str, *, ids: set[str], points: int, dead_letters: int, records: int | None = None,
    group: str | None = None, topic: str | None = None, runs: int | None = None,
    bootstrap: str | None = None,
) -> Counts:  # fmt: skip
    """Every event of ``ids`` stored exactly once and projected, ``points`` metric points each
    stored once, exactly ``dead_letters`` dead letters, the chain intact, and the read models
    equal to a rebuild. Returns the counts. With ``bootstrap`` and ``topic``, a lost event is
    looked up in the topic, so the failure says whether it was ever published."""
    con = await postgres.connect(url)
    try:
        n, distinct, low, high = await con.fetchrow(
            "SELECT count(*), count(DISTINCT event_id), min(position), max(position)"
            " FROM public.events"
        )
        stored = {r[0] for r in await con.fetch("SELECT event_id::text FROM public.events")}
        lost, unknown = ids - stored, stored - ids
        where = ""
        if lost and bootstrap and topic:
            where = await _where_in_topic(con, bootstrap, topic, group, lost)
        assert (len(lost), len(unknown)) == (0, 0), (
            f"{len(lost)} events lost (e.g. {sorted(lost)[:3]}), {len(unknown)} unknown stored"
            + where
        )
        assert n == distinct == len(ids), f"{n} rows, {distinct} distinct ids, {len(ids)} sent"
        assert (low or 1, high or 0) == (1, n), f"positions {low}..{high}, not 1..{n}"
        projected = await con.fetchval("SELECT position FROM checkpoint")
        assert projected == n, f"the read models are at position {projected} of {n}"
        p, p_distinct = await con.fetchrow(
            "SELECT count(*), count(DISTINCT (s.run_id, s.key, u.step)) FROM "
            "metric_series s JOIN metric_chunks c ON c.series_id = s.id, unnest(c.steps) AS u(step)"
        )
        assert (p, p_distinct) == (points, points), (
            f"{p} metric points ({p_distinct} distinct) stored, {points} sent"
        )
        summed = await con.fetchval("SELECT coalesce(sum(points), 0) FROM run_metrics")
        assert summed == points, f"run_metrics counts {summed} points, {points} sent"
        if runs is not None:
            assert await con.fetchval("SELECT count(*) FROM runs") == runs
        dead = await con.fetchval("SELECT count(*) FROM public.dead_letters")
        reasons = [r[0] for r in await con.fetch("SELECT reason FROM public.dead_letters")]
        assert dead == dead_letters, f"{dead} dead letters, {dead_letters} expected: {reasons}"
        if records is not None:
            consumed = await con.fetchval(
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM public.consumer_offsets"
                " WHERE group_id = $1 AND topic = $2",
                group, topic,
            )  # fmt: skip
            assert consumed == records, f"offsets cover {consumed} of {records} records"
        report = await integrity.verify(con)  # raises ChainBroken naming the first bad position
        assert report.checked == n
    finally:
        await con.close()
    live = await dump_read_models(url)
    assert await rebuild(url) == n
    assert_same_read_models(live, await dump_read_models(url))
    return Counts(
        sent=len(ids), stored=n, projected=projected, lost=len(lost), duplicated=n - distinct,
        dead_lettered=dead, metric_points_sent=points, metric_points_stored=p,
        records=records if records is not None else n + dead,
    )  # fmt: skip


def tcp_ports(pid: int) -> set[int]:
    """The local ports of a process's TCP sockets (from /proc: its fds and the kernel's table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def in_transaction(con: asyncpg.Connection, pid: int) -> bool:
    """Whether the process ``pid`` has a PostgreSQL session inside a transaction right now."""
    busy: int = await con.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE client_port = ANY($1::int[]) AND xact_start IS NOT NULL AND state <> 'idle'""",
        sorted(tcp_ports(pid)),
    )
    return busy > 0


# ------------------------------------------------------------------------------ GraphQL abuse

NORMAL_QUERY = (
    '{ searchRuns(project: "churn", first: 20) '
    "{ nodes { runId name status params { key value } metrics { key value } } } }"
)


def fan_out(levels: int = 10, width: int = 10) -> str:
    """Fragment f0 spreads f1 ``width`` times, f1 spreads f2 ...: width^levels fields (868 bytes
    took the API down for 9 minutes before query cost was bounded)."""
    parts = ["query { projects { nodes { ...f0 } } }"]
    for level in range(levels):
        spreads = " ".join(f"...f{level + 1}" for _ in range(width))
        parts.append(f"fragment f{level} on Project {{ name {spreads} }}")
    parts.append(f"fragment f{levels} on Project {{ name }}")
    return "\n".join(parts)


NESTED_FIRST = (
    "{ projects(first: 500) { nodes { runs(first: 500) "
    "{ nodes { runId params { key } metrics { key } } } } } }"
)
HUGE_STRING = 900_000  # characters: a string argument just under the 1 MiB /graphql body limit
BIG_BODY = 10 * 1024 * 1024


def abuse_bodies() -> dict[str, bytes]:
    """The worst requests of issue 10, by name: each must be refused before any real work."""
    long = "x" * HUGE_STRING
    return {
        "fragment_fan_out": orjson.dumps({"query": fan_out()}),
        "nested_first": orjson.dumps({"query": NESTED_FIRST}),
        "huge_string_literal": orjson.dumps({"query": f'{{ project(name: "{long}") {{ name }} }}'}),
        "huge_string_variable": orjson.dumps(
            {"query": "query($n: String!) { project(name: $n) { name } }", "variables": {"n": long}}
        ),
        "body_10mb": orjson.dumps({"query": f'{{ project(name: "{"y" * BIG_BODY}") {{ name }} }}'}),
    }


def abuse_main() -> None:
    """`python -c 'from tests._faults import abuse_main; abuse_main()' PORT TOKEN SECONDS
    WORKERS`: send the abusive requests in a loop from WORKERS threads, back to back, for
    SECONDS; print what they were answered, as JSON."""
    port, secret, seconds, workers = (
        int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]),
    )  # fmt: skip
    bodies = abuse_bodies()
    deadline = time.monotonic() + seconds
    results: dict[str, list[tuple[int, float, bool]]] = {name: [] for name in bodies}
    lock = threading.Lock()

    def loop(offset: int) -> None:
        names = list(bodies)
        client = Http(port, secret, timeout=60)
        i = offset
        while time.monotonic() < deadline:
            name = names[i % len(names)]
            i += 1
            answer = client.request("POST", "/graphql", bodies[name])
            refused = answer.status in (200, 400, 413) and b'"errors"' in answer.body
            if name == "body_10mb" and answer.status == 0:
                refused = True  # answered 413 and closed while the body was still being sent
            with lock:
                results[name].append((answer.status, answer.seconds, refused))
        client.close()

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(workers)]
    print("started", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = {
        name: {
            "requests": len(rows),
            "refused": sum(r for _, _, r in rows),
            "statuses": {str(k): v for k, v in Counter(s for s, _, _ in rows).items()},
            "p50_s": round(percentile([s for _, s, _ in rows], 0.5), 4) if rows else None,
            "max_s": round(max(s for _, s, _ in rows), 4) if rows else None,
        }
        for name, rows in results.items()
    }
    print(json.dumps(summary))

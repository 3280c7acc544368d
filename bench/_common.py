"""What the benchmarks that drive real services share: settings, the fresh PostgreSQL database
and Kafka topic each measurement gets, `studbook-server` subprocesses, /proc readers, cProfile
summaries and the command-line entry point.

Imported as `from _common import ...` by `projector_throughput.py` and `sdk_end_to_end.py`
(run as `.venv/bin/python bench/<script>.py`, which puts bench/ on sys.path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from studbook_server.adapters import postgres

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / ".venv" / "bin" / "studbook-server"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/postgres"

PARTITIONS = 4
PROJECT = "bench"
POLL_S = 0.02
CLK_TCK = os.sysconf("SC_CLK_TCK")

Record = tuple[bytes, bytes]  # (Kafka key, JSON value)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------ PostgreSQL


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@contextlib.asynccontextmanager
async def fresh_database(
    admin_url: str, prefix: str, *, migrate: bool = True
) -> AsyncIterator[str]:
    """A new database named `prefix` + a random suffix (migrated unless `migrate` is false),
    dropped on exit (also on failure)."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        try:
            # Inside the `try`: cancelled (SIGTERM) while PostgreSQL runs it, the database may
            # still have been made.
            await admin.execute(f'CREATE DATABASE "{name}"')  # name made above, never from input
            url = with_database(admin_url, name)
            if migrate:
                con = await postgres.connect(url)
                try:
                    await postgres.migrate(con)
                finally:
                    await con.close()
            yield url
        finally:
            await finish(admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.close()


async def finish(aw: Awaitable[Any]) -> Any:
    """Await `aw` to its end even if the caller is cancelled meanwhile (then re-raise): a
    cleanup statement cancelled half-way, such as a DROP DATABASE on SIGTERM, would leave its
    object behind."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def server_version(url: str) -> str:
    con = await asyncpg.connect(url)
    try:
        return str(await con.fetchval("SHOW server_version"))
    finally:
        await con.close()


async def machine_info(url: str) -> dict[str, Any]:
    """The "machine" entries every report starts with."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": await server_version(url),
        "code": code_under_test(),
    }


def loadavg_1m() -> float:
    """The 1-minute load average: the host is shared, and a high one means other work overlapped."""
    return round(os.getloadavg()[0], 2)


# What a child of this process imports (the services and the SDK client are children, and they
# inherit the environment): PYTHONPATH may point at another checkout, such as a worktree of a
# baseline commit run with this tree's bench/ and .venv.
_CODE_PROBE = """
import json, studbook, studbook_server
print(json.dumps({"studbook_server": studbook_server.__file__, "studbook": studbook.__file__}))
"""


def code_under_test() -> dict[str, Any]:
    """Where the services and the SDK that ran come from: their package folders, that tree's
    commit, and whether its `services`, `sdk` or `schema` had uncommitted changes."""
    probe = subprocess.run(
        [sys.executable, "-c", _CODE_PROBE], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if probe.returncode != 0:  # the run's figures are still worth printing
        return {"probe_failed": (probe.stderr.strip().splitlines() or ["?"])[-1]}
    files = json.loads(probe.stdout)
    tree = Path(files["studbook_server"]).resolve().parents[2]

    def git(*argv: str) -> str:
        out = subprocess.run(["git", "-C", str(tree), *argv], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        **{name: str(Path(f).parent) for name, f in files.items()},
        "commit": git("rev-parse", "--short=12", "HEAD") or None,
        "uncommitted_changes": bool(
            git("status", "--porcelain", "--", "services", "sdk", "schema")
        ),
    }


# The start gate: the projector's startup migrate() takes this lock, after its imports and
# pool, before it creates its consumer. Holding it parks the projector there, so the clock
# starts on a warm process and covers consumer start, group join and projection.


async def hold_start_gate(url: str) -> asyncpg.Connection:
    """A connection holding the start gate (close it, or `open_start_gate`, to let go)."""
    gate = await asyncpg.connect(url)
    await gate.execute("SELECT pg_advisory_lock($1)", postgres.STORE_LOCK + 1)
    return gate


async def open_start_gate(gate: asyncpg.Connection) -> None:
    await gate.execute("SELECT pg_advisory_unlock($1)", postgres.STORE_LOCK + 1)


async def gate_waiting(con: asyncpg.Connection) -> None:
    """Return once another session waits for an advisory lock in this database."""
    while True:
        waiting = await con.fetchval(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
        )
        if waiting:
            return
        await asyncio.sleep(POLL_S)


async def wait_total(
    con: asyncpg.Connection, total: int, sql: str, *args: Any
) -> tuple[float, float]:
    """Poll `sql` (one number) every POLL_S until it reaches `total`; return when it was first
    non-zero and when it got there (monotonic clock)."""
    first = 0.0
    while True:
        got = await con.fetchval(sql, *args)
        now = time.monotonic()
        if got and not first:
            first = now
        if got >= total:
            return first, now
        await asyncio.sleep(POLL_S)


# ----------------------------------------------------------------------------------- Kafka


async def create_topic(admin: AIOKafkaAdminClient, name: str) -> None:
    """Create `name` with PARTITIONS partitions and wait until the broker lists it."""
    await admin.create_topics(
        [NewTopic(name=name, num_partitions=PARTITIONS, replication_factor=1)]
    )
    for _ in range(200):
        if name in await admin.list_topics():
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"topic {name} did not appear")


@contextlib.asynccontextmanager
async def fresh_topic(bootstrap: str, prefix: str) -> AsyncIterator[str]:
    """A new topic named `prefix` + a random suffix, with PARTITIONS partitions, deleted on exit
    (also on failure)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        try:
            await create_topic(admin, name)
            yield name
        finally:
            with contextlib.suppress(Exception):
                await finish(admin.delete_topics([name]))
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> int:
    """Produce every record (idempotent, acks=all); return the topic's end offset sum."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=1 << 20,
        max_request_size=16 << 20,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    # (AIOKafkaAdminClient 0.14 has no list_offsets; a group-less consumer asks instead.)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    total = int(sum(ends.values()))
    if total != len(records):
        raise BenchError(f"topic {topic} holds {total} records, expected {len(records)}")
    return total


# ------------------------------------------------------------------------------ /proc readers


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB (empty if it is gone or unreadable)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (None if it is gone or unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each process of `pids` still there."""
    out = {}
    for pid in pids:
        cpu = proc_cpu_s(pid)
        if cpu is not None:
            out[pid] = cpu
    return out


def cpu_by_name(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds per named process (0 for one that is gone)."""
    return {k: proc_cpu_s(p) or 0.0 for k, p in pids.items()}


async def backend_cpu(con: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds of the studbook backends (the services' pools) of `database`, by pid."""
    rows = await con.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'studbook'",
        database,
    )
    return cpu_of([r["pid"] for r in rows])


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A backend that appeared meanwhile counts from 0: its whole life was in the window.
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


# -------------------------------------------------------------------------------- services


def service_env(
    url: str, bootstrap: str, topic: str, group: str, level: str, *, inherit: bool = False
) -> dict[str, str]:
    """The environment of a `studbook-server` subprocess: this one's, without its STUDBOOK_*
    variables unless `inherit` (then only the five set here are replaced)."""
    env = {k: v for k, v in os.environ.items() if inherit or not k.startswith("STUDBOOK_")}
    env.update(
        STUDBOOK_DATABASE_URL=url,
        STUDBOOK_KAFKA_BOOTSTRAP=bootstrap,
        STUDBOOK_EVENTS_TOPIC=topic,
        STUDBOOK_CONSUMER_GROUP=group,
        STUDBOOK_LOG_LEVEL=level,
    )
    return env


def profiled(argv: list[str], out: Path | None) -> list[str]:
    """`argv` (a Python console script or file) run under `python -m cProfile -o out`."""
    if out is None:
        return argv
    return [sys.executable, "-m", "cProfile", "-o", str(out), *argv]


class Service:
    """A subprocess whose stderr is drained (its tail kept) and watched for one pattern."""

    def __init__(
        self,
        name: str,
        proc: asyncio.subprocess.Process,
        ready: str | None,
        stop_signal: signal.Signals,
        tail: int,
    ) -> None:
        self.name = name
        self.proc = proc
        self.stop_signal = stop_signal
        self.tail: deque[str] = deque(maxlen=tail)
        self.ready = asyncio.Event()
        self.stats: dict[str, int] = {}
        self._pattern = re.compile(ready) if ready else None
        assert proc.stderr is not None
        self._pump = asyncio.create_task(self._drain(proc.stderr))

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        ready: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        tail: int = 60,
    ) -> Service:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        return cls(name, proc, ready, stop_signal, tail)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            if self._pattern is not None and self._pattern.search(text):
                self.ready.set()
            if " stopped: Stats(" in text:
                self.stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}

    def log_tail(self) -> str:
        return f"--- {self.name} (last lines) ---\n" + "\n".join(self.tail)

    async def stop(self, limit_s: float = 60) -> None:
        """The stop signal (it finishes its work; cProfile writes its file), SIGKILL if late."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                await asyncio.wait_for(self.proc.wait(), limit_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pump, 5)
        self._pump.cancel()

    async def kill(self) -> None:
        """SIGKILL at once if it still runs (the cleanup after a failure); stop draining."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._pump.cancel()


async def guarded(
    aw: Awaitable[Any], services: Sequence[Service], limit_s: float, what: str
) -> Any:
    """Await `aw`; fail at once (with the services' logs) if one of them exits, or when late."""
    task = asyncio.ensure_future(aw)
    exits = {asyncio.ensure_future(s.proc.wait()): s for s in services}
    try:
        done, _ = await asyncio.wait(
            {task, *exits}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for t in exits:
            t.cancel()
        if not task.done():  # late, a service died, or we are cancelled ourselves
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task in done:
        return task.result()
    logs = "\n".join(s.log_tail() for s in services)
    for t, s in exits.items():
        if t in done:
            raise BenchError(f"{s.name} exited ({s.proc.returncode}) before {what}:\n{logs}")
    raise BenchError(f"no {what} within {limit_s}s:\n{logs}")


# ------------------------------------------------------------------------------- profiling


def print_pstats(source: cProfile.Profile | str, top: int) -> tuple[dict[Any, Any], float, str]:
    """A profile's raw stats, its total time, and its `top` functions by tottime and by
    cumulative time as pstats prints them."""
    text = io.StringIO()
    ps = pstats.Stats(source, stream=text)
    ps.sort_stats("tottime").print_stats(top)
    ps.sort_stats("cumulative").print_stats(top)
    raw: dict[Any, Any] = ps.stats  # type: ignore[attr-defined]
    total: float = getattr(ps, "total_tt", 0.0)
    return raw, total, text.getvalue()


def top_functions(
    raw: dict[Any, Any], top: int, fn: Callable[[tuple[str, int, str]], str]
) -> dict[str, list[dict[str, Any]]]:
    """The "top_tottime" and "top_cumtime" entries of a report, from raw pstats stats."""
    by_tot = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    by_cum = sorted(raw.items(), key=lambda kv: -kv[1][3])[:top]
    return {
        "top_tottime": [
            {"fn": fn(k), "calls": v[1], "tottime_s": round(v[2], 3)} for k, v in by_tot
        ],
        "top_cumtime": [
            {"fn": fn(k), "calls": v[1], "cumtime_s": round(v[3], 3)} for k, v in by_cum
        ],
    }


# ---------------------------------------------------------------------------- command line


def add_profile_args(p: argparse.ArgumentParser) -> None:
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--profile", action="store_true", help="profile even if targets are met")
    prof.add_argument("--no-profile", action="store_true", help="never profile")
    p.add_argument("--profile-top", type=int, default=20, help="functions listed per profile")


def parse_with_tiny(
    p: argparse.ArgumentParser, tiny: dict[str, Any], argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv` with a `--tiny` flag that makes `tiny` the defaults (a workload of a few
    seconds, for tests/test_bench_smoke.py); options given explicitly still win."""
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny workload, to check that the benchmark runs (its rates mean nothing): "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in tiny.items()),
    )
    if p.parse_known_args(argv)[0].tiny:
        p.set_defaults(**tiny)
    return p.parse_args(argv)


def add_service_args(p: argparse.ArgumentParser, *, timeout: float, timeout_help: str) -> None:
    """--timeout, --bootstrap and --database-url (see `service_defaults`)."""
    p.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    p.add_argument("--bootstrap", default=os.environ.get("STUDBOOK_KAFKA_BOOTSTRAP"))
    p.add_argument(
        "--database-url",
        default=os.environ.get("STUDBOOK_DATABASE_URL"),
        help="admin URL: benchmark databases are created (and dropped) through it",
    )


def service_defaults(args: argparse.Namespace) -> None:
    """The stack's defaults for what neither the command line nor the environment set."""
    args.bootstrap = args.bootstrap or DEFAULT_BOOTSTRAP
    args.database_url = args.database_url or DEFAULT_DATABASE_URL


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """SIGTERM cancels the run, so the `finally` blocks stop processes and drop databases."""
    task = asyncio.ensure_future(coro)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def run_bench(
    measure: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
    *,
    cancel_on_sigterm: bool = False,
) -> int:
    """Run `measure(args)` and print its report as ONE JSON object on stdout; the exit code."""
    if not SERVER.exists():
        print(f"{SERVER} not found: install the project into .venv first", file=sys.stderr)
        return 2
    try:
        if cancel_on_sigterm:
            result = asyncio.run(_cancel_on_sigterm(measure(args)))
        else:
            result = asyncio.run(measure(args))
    except (BenchError, OSError, asyncpg.PostgresError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        if not cancel_on_sigterm:
            raise
        print("bench interrupted; cleaned up", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0

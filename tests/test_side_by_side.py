"""bench/side_by_side.py, the benchmark beside MLflow: a tiny run against the real services (the
pinned `mlflow server` from the cached virtualenv of bench/_mlflow_env.py, Studbook on Kafka and
embedded) has a number for every row and system and writes its Markdown report; and, without
services, the report's arithmetic (bench/_side_report.py) and the probe for Studbook's
MLflow-compatible surface. The client programs (bench/_side_clients.py) run in the tiny run.

The first run makes the MLflow virtualenv under ~/.cache/studbook (a few minutes, once); later
runs reuse it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from studbook_server.auth import PREFIX as TOKEN_PREFIX
from tests.conftest import Services

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import _side_report as report_md  # noqa: E402
from _mlflow_env import MlflowEnvError, ensure_venv, redact  # noqa: E402
from side_by_side import interpret_probe  # noqa: E402

TINY = [
    "--runs", "2", "--params", "2", "--metrics", "1", "--steps", "5", "--repeat", "1",
    "--searches", "3", "--register", "2", "--search-runs", "100", "--timeout", "240",
]  # fmt: skip
LIMIT_S = 480


# ------------------------------------------------------------------ the tiny run (services)


@pytest.fixture(scope="module")
def tiny_run(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    try:
        ensure_venv()
    except MlflowEnvError as exc:
        pytest.fail(
            f"cannot make the MLflow virtualenv (bench/_mlflow_env.py, under ~/.cache/studbook): "
            f"{exc}",
            pytrace=False,
        )
    docs = tmp_path_factory.mktemp("side-by-side") / "benchmarks.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env["STUDBOOK_DATABASE_URL"] = services.admin_database_url
    env["STUDBOOK_KAFKA_BOOTSTRAP"] = services.kafka_bootstrap
    argv = [sys.executable, "bench/side_by_side.py", *TINY, "--docs", str(docs)]
    started = time.monotonic()
    out = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT_S, check=False
    )
    print(f"\nside_by_side.py tiny run: {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert out.returncode == 0, f"side_by_side.py exited {out.returncode}:\n{out.stderr[-5000:]}"
    return {
        "report": json.loads(out.stdout),
        "stdout": out.stdout,
        "stderr": out.stderr,
        "docs": docs,
    }


def test_every_row_has_a_number_for_every_system(tiny_run: dict[str, Any]) -> None:
    rows = tiny_run["report"]["rows"]
    assert set(rows) == set(report_md.ROWS)
    for row, entry in rows.items():
        for system in report_md.SYSTEMS:
            value = entry[system]
            assert isinstance(value, int | float), f"{row}/{system} is {value!r}"
            if row == "lag_after_flush_s" and system == "mlflow":
                assert value == 0  # synchronous: queryable when log_batch returns
            else:
                assert value > 0, f"{row}/{system} is {value!r}"
        if row != "lag_after_flush_s":
            for system in report_md.STUDBOOK:
                ratio = entry["ratio_to_mlflow"][system]
                assert isinstance(ratio, float), f"{row}/{system} ratio {ratio!r}"
                assert ratio > 0, f"{row}/{system} ratio {ratio!r}"


def test_the_report_names_workload_machine_goals_and_samples(tiny_run: dict[str, Any]) -> None:
    report = tiny_run["report"]
    assert report["workload"]["points"] == 2 * 1 * 5
    assert report["repeat"] == 1
    assert report["medians"] is True
    for system in report_md.SYSTEMS:
        assert len(report["samples"][system]) == 1
    # The registry numbers versions 1, 2, ... on every system (the first one is not timed).
    for system in report_md.SYSTEMS:
        assert report["samples"][system][0]["numbers"] == [1, 2, 3]
    for flavor in report_md.STUDBOOK:
        assert set(report["goals_met"][flavor]) == {
            "ingest_50x_mlflow", "register_half_of_mlflow", "search_p95_20ms", "lag_200ms",
            "storage_40_bytes",
        }  # fmt: skip
        assert any("events" in t for t in report["samples"][flavor][0]["storage_bytes"])
    assert set(report["samples"]["mlflow"][0]["storage_bytes"]) == {"metrics", "latest_metrics"}
    machine = report["machine"]
    assert machine["cpus"]
    assert machine["memory_gib"] > 0
    assert machine["postgres"]
    assert machine["mlflow_version"] == machine["mlflow_pinned"]
    assert len(machine["loadavg_start_end"]) == 2
    compat = report["mlflow_client_on_studbook"]
    assert isinstance(compat["ran"], bool)
    if not compat["ran"]:
        assert compat["reason"]
    else:
        assert set(compat["summary"]["studbook_ms"]) <= set(report_md.STUDBOOK)


def test_the_markdown_is_written(tiny_run: dict[str, Any]) -> None:
    text = tiny_run["docs"].read_text()
    assert text.startswith("# Benchmarks: Studbook beside MLflow")
    for title in report_md.TITLES.values():
        assert title in text
    assert "bench/side_by_side.py" in text
    assert "--runs 2" in text
    compat = tiny_run["report"]["mlflow_client_on_studbook"]
    assert ("Not available" in text) is not compat["ran"]


def test_no_password_or_token_is_printed(services: Services, tiny_run: dict[str, Any]) -> None:
    password = urlsplit(services.admin_database_url).password
    texts = [tiny_run["stdout"], tiny_run["stderr"], tiny_run["docs"].read_text()]
    for text in texts:
        if password:
            assert password not in text
        assert not re.findall(rf"{TOKEN_PREFIX}[0-9a-f]+_[A-Za-z0-9_-]{{20,}}", text)


# ------------------------------------------------------------------------ pure logic (fast)


def _figures(
    ingest: float, register: float, search: float, lag: float, storage: float
) -> dict[str, float]:
    return {
        "ingest_points_per_s": ingest,
        "register_ms": register,
        "search_ms_median": search,
        "search_ms_p95": search * 1.5,
        "lag_after_flush_s": lag,
        "storage_bytes_per_point": storage,
    }


def test_summary_medians_same_run_ratios_and_goals() -> None:
    samples = {
        "mlflow": [_figures(1000, 20, 200, 0, 400), _figures(2000, 10, 100, 0, 400),
                   _figures(1500, 40, 300, 0, 400)],
        "studbook_kafka": [_figures(60000, 8, 10, 0.1, 30), _figures(80000, 6, 12, 0.15, 30),
                           _figures(50000, 30, 11, 0.3, 30)],
        "studbook_embedded": [_figures(10000, 30, 100, 0.05, 300)] * 3,
    }  # fmt: skip
    rows = report_md.summarize(samples)
    assert rows["ingest_points_per_s"]["mlflow"] == 1500
    assert rows["ingest_points_per_s"]["studbook_kafka"] == 60000
    # Ratios of the same repetition (60, 40, 33.3), then their median: not 60000 / 1500.
    assert rows["ingest_points_per_s"]["ratio_to_mlflow"]["studbook_kafka"] == 40.0
    assert rows["register_ms"]["ratio_to_mlflow"]["studbook_kafka"] == 0.6
    assert rows["lag_after_flush_s"]["max"]["studbook_kafka"] == 0.3
    assert "ratio_to_mlflow" not in rows["lag_after_flush_s"]
    met = report_md.goals_met(rows)
    assert met["studbook_kafka"] == {
        "ingest_50x_mlflow": False, "register_half_of_mlflow": False, "search_p95_20ms": True,
        "lag_200ms": False, "storage_40_bytes": True,
    }  # fmt: skip
    assert met["studbook_embedded"]["ingest_50x_mlflow"] is False
    table = report_md.table(rows, 100)
    assert "| ingest, points/s until queryable | 1,500 | 60,000 (40.0x) |" in table
    assert "search 100 runs" in table
    assert "0 (synchronous)" in table
    assert "missed" in report_md.goals_table(met)
    assert "**met**" in report_md.goals_table(met)


def test_compat_summary_per_call_medians_and_ratios() -> None:
    mlflow = [{"log_batch": [0.010, 0.020, 0.030], "search_runs": [0.2]},
              {"log_batch": [0.040], "search_runs": [0.1]}]  # fmt: skip
    studbook = {"studbook_kafka": [{"log_batch": [0.005], "search_runs": [0.1]},
                                   {"log_batch": [0.010], "search_runs": [0.1]}]}  # fmt: skip
    s = report_md.compat_summary(mlflow, studbook)
    assert s["mlflow_ms"]["log_batch"] == 30.0  # median of the repetitions' medians (20, 40)
    assert s["studbook_ms"]["studbook_kafka"]["log_batch"] == 7.5
    assert s["ratio_to_mlflow"]["studbook_kafka"]["log_batch"] == 0.25
    assert s["ratio_to_mlflow"]["studbook_kafka"]["search_runs"] == 0.75
    assert s["mlflow_ms"]["create_run"] is None
    text = report_md.compat_markdown({"ran": True, "summary": s, "failed": {}})
    assert "| `log_batch` | 30.0 ms | 7.5 ms (0.25x) |" in text
    assert report_md.compat_markdown({"ran": False, "reason": "no surface"}).startswith(
        "Not available: no surface"
    )


@pytest.mark.parametrize(
    ("status", "body", "available"),
    [
        (404, b"Not Found", False),  # starlette's own 404: no such route
        (404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "x"}', False),
        (404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no x"}', True),
        (200, b'{"experiment": {"experiment_id": "1", "name": "x"}}', True),
        (500, b'{"error_code": "INTERNAL_ERROR"}', False),
        (404, b'{"detail": "Not Found"}', False),  # JSON, but not MLflow's
        (200, b"[1, 2]", False),
    ],
)
def test_probe_for_the_mlflow_surface(status: int, body: bytes, available: bool) -> None:
    ok, why = interpret_probe(status, body)
    assert ok is available, why
    assert str(status) in why


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_render_from_a_saved_report_writes_the_same_markdown(
    tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(tiny_run["stdout"])
    out = tmp_path / "again.md"
    done = subprocess.run(
        [sys.executable, "bench/side_by_side.py", "--render-from", str(saved), "--docs", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text() == tiny_run["docs"].read_text()

"""bench/ui_render.py end to end on a tiny project: it builds the data, serves it, measures every
page in Chromium and prints the JSON it documents (the full run is in docs/ui.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Services

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ui_render.py"


def test_ui_benchmark_runs_on_a_tiny_project(services: Services) -> None:
    env = {**os.environ, "STUDBOOK_DATABASE_URL": services.admin_database_url}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tiny"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["bench"] == "ui_render"
    assert report["shown"] == {"lineage_nodes": report["sizes"]["lineage_nodes"], "runs_rows": 100}
    for key in ("runs_first_render", "runs_sort_metric", "runs_sort_param", "runs_sort_tag",
                "compare", "lineage_layout", "lineage_render"):  # fmt: skip
        assert report["ms"][key]["median"] > 0, key
    assert set(report["meets_targets"]) == set(report["targets_ms"])

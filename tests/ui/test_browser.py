"""The web UI in a real headless Chromium (Debian's, through Playwright) on `up --throwaway` with
the demo: sign in through the printed link, open every page, check what they show against the
GraphQL API, select and compare runs, move the lineage `asOf` slider and watch the alias move,
follow a running run live, export the audit trail. A screenshot of every page goes to
tests/artifacts/ui/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import expect

from tests.support import ev
from tests.ui.browser import ARTIFACTS, browser

PROJECT = "churn"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Demo:
    """`studbook-server up --throwaway` with the demo loaded, and its printed facts."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str = ""
    link: str = ""
    requests: list[str] = field(default_factory=list)  # every URL the browser asked for

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"{self.base}/graphql",
            data=orjson.dumps({"query": query, "variables": variables or {}}),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = orjson.loads(r.read())
        assert "errors" not in body, body
        return body["data"]

    def send(self, *events: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"{self.base}/v1/events",
            data=orjson.dumps(list(events)),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 202


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    folder = Path(tempfile.mkdtemp(prefix="studbook-ui-test-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    exe = Path(sys.executable).with_name("studbook-server")
    port = _free_port()
    log = folder / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "up", "--throwaway", "--port", str(port), "--pg-port", str(_free_port())],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    d = Demo(port, proc, log)
    try:
        deadline = time.monotonic() + 180
        while "demo: loaded" not in d.output():
            assert proc.poll() is None, d.output()
            assert "demo: failed" not in d.output(), d.output()
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.2)
        d.token = re.search(r"token:\s+(\S+)", d.output()).group(1)  # type: ignore[union-attr]
        d.link = re.search(r"web UI:\s+(\S+)", d.output()).group(1)  # type: ignore[union-attr]
        # The demo's last event (production -> churn-clf@3, 10-13) projected: the story is complete.
        q = '{ modelVersionByAlias(project: "churn", model: "churn-clf", alias: "production") { number } }'
        while (d.gql(q)["modelVersionByAlias"] or {}).get("number") != 3:
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.2)
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def page(demo: Demo) -> Iterator[Any]:
    """One signed-in tab (the token lives in its session storage), signed in through the link."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser(accept_downloads=True) as ctx:
        p = ctx.new_page()
        errors: list[str] = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        p.on("request", lambda r: demo.requests.append(r.url))
        p.goto(demo.link)
        p.wait_for_selector("[data-testid=runs-table][data-state=ready] tbody tr")
        yield p
        assert not errors, errors
        del errors[:]


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def ready_runs(page: Any) -> None:
    page.wait_for_selector("[data-testid=runs-table][data-state=ready] tbody tr")


def go(page: Any, demo: Demo, route: str) -> None:
    page.goto(f"{demo.base}/#/{PROJECT}/{route}")


# ------------------------------------------------------------------------------------ sign-in


def test_the_sign_in_link_signs_in_once_and_leaves_nothing_in_the_url(
    page: Any, demo: Demo
) -> None:
    assert "signin" not in page.url
    assert page.evaluate("sessionStorage.getItem('studbook.token')") == demo.token
    # The link works once: a fresh tab (its own session storage) is told so and asked for a token.
    other = page.context.new_page()
    try:
        other.goto(demo.link)
        other.wait_for_selector("[data-testid=signin-error]")
        assert "used already" in other.inner_text("[data-testid=signin-error]")
        assert "signin" not in other.url
        shot(other, "signin")
        # Signing in by pasting the token works too.
        other.fill("input[name=token]", demo.token)
        other.click("button[type=submit]")
        other.wait_for_selector("[data-testid=runs-table][data-state=ready] tbody tr")
    finally:
        other.close()


# --------------------------------------------------------------------------------------- runs


def test_runs_table_counts_sorts_and_filters_like_the_api(page: Any, demo: Demo) -> None:
    go(page, demo, "runs")
    ready_runs(page)
    total = demo.gql('{ searchRuns(project: "churn") { totalCount } }')["searchRuns"]["totalCount"]
    assert page.inner_text("[data-testid=run-count]") == f"1\u2013{total} of {total} runs"
    assert page.locator("[data-testid=runs-table] tbody tr").count() == total
    shot(page, "runs")

    # Sort by a metric column: the first row is the API's best run.
    page.click("button.sort[data-column=val_accuracy]")
    page.wait_for_url(re.compile(r"sort=m%3Aval_accuracy%3Alatest%3Adesc"))
    ready_runs(page)
    best = demo.gql(
        '{ searchRuns(project: "churn", orderBy: {metric: "val_accuracy", direction: DESC}, first: 1)'
        ' { nodes { runId metrics(keys: ["val_accuracy"]) { value } } } }'
    )["searchRuns"]["nodes"][0]
    first_row = page.locator("[data-testid=runs-table] tbody tr").first
    expect(first_row).to_have_attribute("data-run", best["runId"])
    # The cell shows the API's latest value (rows come from searchRunTable, keyed by metric).
    shown = float(first_row.locator("td[data-col=val_accuracy]").inner_text())
    assert abs(shown - best["metrics"][0]["value"]) < 1e-3, (shown, best)

    # Sort by a param (ascending after a second click).
    page.click("button.sort[data-column=lr]")
    page.wait_for_url(re.compile(r"sort=p%3Alr%3Adesc"))
    page.click("button.sort[data-column=lr]")
    page.wait_for_url(re.compile(r"sort=p%3Alr%3Aasc"))
    expect(page.locator("th.sorted button")).to_have_text("lr \u25b2")
    deadline = time.monotonic() + 10  # until the new page of rows has replaced the old one
    while True:
        ready_runs(page)
        lrs = [float(t) for t in page.locator("td[data-col=lr]").all_inner_texts() if t]
        if lrs == sorted(lrs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lrs == sorted(lrs)

    # Filter: the count is the API's for the same filter.
    page.fill("input[aria-label=filter]", "metric.val_accuracy > 0.92 and status = completed")
    page.click("form.filter button[type=submit]")
    page.wait_for_url(re.compile(r"q=metric\.val_accuracy"))
    n = demo.gql(
        '{ searchRuns(project: "churn", filter: {metrics: [{key: "val_accuracy", op: GT, value: 0.92}],'
        " status: [COMPLETED]}) { totalCount } }"
    )["searchRuns"]["totalCount"]
    assert 0 < n < total
    expect(page.locator("[data-testid=run-count]")).to_have_text(f"1\u2013{n} of {n} runs")
    page.fill("input[aria-label=filter]", "metric.val_accuracy > high")
    page.click("form.filter button[type=submit]")
    assert "not a number" in page.inner_text("[data-testid=filter-error]")


def test_run_page_shows_the_run_and_a_chart_per_metric(page: Any, demo: Demo) -> None:
    run = demo.gql(
        '{ run(id: "churn/run:logreg-v1-01") { actor status code metrics { key value } '
        "inputs { datasetVersion { digest } } } }"
    )["run"]
    go(page, demo, "run/logreg-v1-01")
    page.wait_for_selector(".chart canvas")
    assert page.inner_text("[data-testid=run-actor]") == run["actor"]
    assert page.inner_text("[data-testid=run-status]") == run["status"].lower()
    for m in run["metrics"]:
        shown = page.inner_text(f"[data-testid=metrics-table] tr[data-metric={m['key']}] td.last")
        assert float(shown) == pytest.approx(m["value"], rel=1e-3), m
        assert page.locator(f".chart[data-metric={m['key']}] canvas").count() == 1
    assert run["code"]["git_commit"] in page.inner_text("body")
    digest = run["inputs"][0]["datasetVersion"]["digest"]
    assert digest.removeprefix("sha256:")[:20] in page.inner_text("body")
    # Log scale and smoothing redraw the charts without errors.
    page.check("text=log scale")
    page.fill("input[aria-label=smoothing]", "0.6")
    page.wait_for_selector(".chart canvas")
    shot(page, "run")


def test_a_running_run_updates_live(page: Any, demo: Demo) -> None:
    subject = "run:live-1"
    now = datetime.now(UTC).isoformat()

    def point(step: int) -> dict[str, Any]:
        return ev("run.metrics.logged", subject,
                  {"metrics": [{"key": "live_loss", "value": 1.0 / (step + 1), "step": step}]},
                  when=now)  # fmt: skip

    demo.send(ev("run.started", subject, {"name": "live"}, when=now), point(0))
    q = '{ run(id: "churn/run:live-1") { metrics { key } } }'
    deadline = time.monotonic() + 10
    while not (demo.gql(q)["run"] or {}).get("metrics"):  # projected (the tailer is async)
        assert time.monotonic() < deadline, "the live run was never projected"
        time.sleep(0.05)
    go(page, demo, "run/live-1")
    page.wait_for_selector(".chart[data-metric=live_loss][data-points='1']")
    assert page.inner_text("[data-testid=run-status]") == "running"
    demo.send(*(point(s) for s in range(1, 5)))
    page.wait_for_selector(".chart[data-metric=live_loss][data-points='5']", timeout=10_000)
    demo.send(ev("run.finished", subject, {"status": "completed"}, when=now))
    expect(page.locator("[data-testid=run-status]")).to_have_text("completed", timeout=15_000)


# ------------------------------------------------------------------------------------ compare


def test_select_runs_and_compare_them(page: Any, demo: Demo) -> None:
    page.evaluate("sessionStorage.removeItem('studbook.selection.churn')")
    go(page, demo, "runs?sort=a%3ARUN_ID%3Aasc")
    ready_runs(page)
    picked = ["logreg-v1-01", "logreg-v1-02", "logreg-v2-03"]
    for run_id in picked:
        page.check(f"input[aria-label='select {run_id}']")
    assert page.inner_text("[data-testid=selected-count]") == "3 selected"
    page.click("[data-testid=compare-link]")
    page.wait_for_selector("[data-testid=compare-table]")
    headers = page.locator("[data-testid=compare-table] thead th a").all_inner_texts()
    assert headers == picked
    cmp = demo.gql(
        "query($ids: [ID!]!) { compareRuns(ids: $ids) { params { key differs } metrics { key last } } }",
        {"ids": [f"churn/run:{r}" for r in picked]},
    )["compareRuns"]
    for p in cmp["params"]:
        row = page.locator(f"[data-testid=compare-table] tr[data-param={p['key']}]")
        assert (row.locator("td.differs").count() > 0) == p["differs"], p
    loss = next(m for m in cmp["metrics"] if m["key"] == "loss")
    cells = page.locator("[data-testid=compare-table] tr[data-metric=loss] td").all_inner_texts()
    assert [float(c) for c in cells] == pytest.approx(loss["last"], rel=1e-3)
    # The curves of every run overlaid, and one line per run in the parallel coordinates.
    page.wait_for_selector(".chart[data-series='3'] canvas")
    assert page.locator("svg[aria-label^='parallel coordinates'] polyline").count() == 3
    shot(page, "compare")


def test_compare_model_versions_from_the_registry(page: Any, demo: Demo) -> None:
    go(page, demo, "registry?model=churn-clf")
    page.wait_for_selector("[data-testid=versions] tr[data-version='1']")
    page.check("input[aria-label='select version 1']")
    page.check("input[aria-label='select version 2']")
    page.click("[data-testid=compare-versions]")
    page.wait_for_selector("[data-testid=compare-models-table]")
    heads = page.locator("[data-testid=compare-models-table] thead th a").all_inner_texts()
    assert heads == ["churn-clf@1", "churn-clf@2"]
    assert "features@" in page.inner_text("[data-testid=compare-models-table]")
    shot(page, "compare-models")


# ----------------------------------------------------------------------------------- registry


def test_registry_flags_the_unapproved_promotions(page: Any, demo: Demo) -> None:
    flagged = demo.gql(
        '{ unapprovedPromotions(project: "churn") { alias modelVersion { modelName number } } }'
    )["unapprovedPromotions"]
    go(page, demo, "registry?model=churn-clf")
    page.wait_for_selector("[data-testid=unapproved-promotion]")
    items = page.locator("[data-testid=unapproved-promotion]").all_inner_texts()
    assert len(items) == len(flagged)
    for f, text in zip(flagged, items, strict=True):
        mv = f["modelVersion"]
        assert text.startswith(f"{f['alias']} → {mv['modelName']}@{mv['number']}"), text
    # On the timeline: production's last interval (v3, nobody approved it) is marked.
    page.wait_for_selector(".bar[data-alias=production][data-version='3'][data-unapproved=true]")
    assert page.locator(".bar[data-alias=production]").count() == 4  # 1, 2, 1, 3
    shot(page, "registry")


# ------------------------------------------------------------------------------------ lineage


def _epoch(iso: str) -> str:
    return str(int(datetime.fromisoformat(iso).timestamp()))


def test_lineage_counts_nodes_and_the_asof_slider_moves_the_alias(page: Any, demo: Demo) -> None:
    start = "churn/deployment:churn-clf/prod"
    go(page, demo, f"lineage?from={start}&dir=UPSTREAM&depth=10")
    page.wait_for_selector("[data-testid=lineage-graph] canvas")
    api = demo.gql(
        "query($f: ID!) { lineage(from: $f, direction: UPSTREAM, depth: 10) { totalNodes } }",
        {"f": start},
    )["lineage"]
    expect(page.locator("[data-testid=lineage-count]")).to_have_text(str(api["totalNodes"]))
    aliases = "[data-testid=aliases-at] li[data-alias=production]"

    def at(iso: str, version: int) -> None:
        page.fill("[data-testid=asof-slider]", _epoch(iso))
        page.wait_for_selector(f"{aliases}[data-node='churn/model_version:churn-clf@{version}']")
        n = demo.gql(
            "query($f: ID!, $t: DateTime) { lineage(from: $f, direction: UPSTREAM, depth: 10, asOf: $t)"
            " { totalNodes } }",
            {"f": start, "t": iso},
        )["lineage"]["totalNodes"]
        expect(page.locator("[data-testid=lineage-count]")).to_have_text(str(n))

    # prod ran v1 (production) on 09-20, v2 (production, promoted 09-28) on 09-30, v1 from 10-02.
    at("2026-09-20T12:00:00+00:00", 1)
    assert "2026-09-20 12:00" in page.inner_text("[data-testid=asof-text]")
    at("2026-09-30T12:00:00+00:00", 2)
    # Node details on click (here through the alias list).
    page.click(f"{aliases} button")
    page.wait_for_selector("[data-testid=node-detail]")
    assert "churn-clf@2" in page.inner_text("[data-testid=node-detail]")
    shot(page, "lineage")


def test_impact_of_a_dataset_version_highlights_the_aliased_model(page: Any, demo: Demo) -> None:
    dv = demo.gql(
        '{ dataset(id: "churn/dataset:customers") { versions(first: 10) { nodes { id number } } } }'
    )["dataset"]["versions"]["nodes"]
    first = next(v["id"] for v in dv if v["number"] == 1)
    go(page, demo, f"lineage?from={first}&dir=DOWNSTREAM&depth=10&asOf=2026-09-20T12:00:00Z"
                   "&impact=1&alias=production")  # fmt: skip
    page.wait_for_selector("[data-testid=impact] li.flag")
    impact = demo.gql(
        'query($d: ID!) { impact(datasetVersion: $d, alias: "production", asOf: "2026-09-20T12:00:00Z")'
        " { modelVersions { modelVersion { id } } } }",
        {"d": first},
    )["impact"]["modelVersions"]
    flagged = page.locator("[data-testid=impact] li.flag").all_inner_texts()
    assert [f.split()[0] for f in flagged] == [
        m["modelVersion"]["id"].split(":")[1] for m in impact
    ]
    shot(page, "lineage-impact")


# -------------------------------------------------------------------------------------- audit


def test_audit_trail_filters_and_exports_csv(page: Any, demo: Demo) -> None:
    go(page, demo, "audit?types=model.alias.set&from=2026-09-01&to=2026-11-01")
    page.wait_for_selector("[data-testid=audit-table] tbody tr")
    nodes = demo.gql(
        '{ auditTrail(filter: {project: "churn", types: ["model.alias.set"], '
        'from: "2026-09-01T00:00:00Z", to: "2026-11-01T00:00:00Z"}, first: 500) { nodes { position } } }'
    )["auditTrail"]["nodes"]
    rows = page.locator("[data-testid=audit-table] tbody tr")
    assert rows.count() == len(nodes)
    assert {r.get_attribute("data-type") for r in rows.all()} == {"model.alias.set"}
    with page.expect_download() as download:
        page.click("[data-testid=export-csv]")
    text = Path(download.value.path()).read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["position"]) for r in table] == [n["position"] for n in nodes]
    assert {r["type"] for r in table} == {"model.alias.set"}
    go(page, demo, "audit")
    page.wait_for_selector("[data-testid=audit-table] tbody tr")
    shot(page, "audit")


# ----------------------------------------------------------------------------------- GraphiQL


def test_graphiql_loads_locally_and_sends_the_token(page: Any, demo: Demo) -> None:
    page.goto(f"{demo.base}/graphql")

    # The editors are CodeMirror instances, made once their code has loaded: read their values,
    # not their (virtualised) DOM, and run the query once the query editor holds it.
    def editor(name: str) -> str:
        value: str = page.evaluate(
            f"document.querySelector('{name} .CodeMirror')?.CodeMirror?.getValue() ?? ''"
        )
        return value

    deadline = time.monotonic() + 20
    while "modelVersionByAlias" not in editor(".graphiql-query-editor"):
        assert time.monotonic() < deadline, "GraphiQL's query editor never loaded"
        time.sleep(0.1)
    page.click(".graphiql-execute-button")
    while '"number": 3' not in (result := editor(".result-window")):
        assert time.monotonic() < deadline, result
        time.sleep(0.1)
    shot(page, "graphiql")


# ------------------------------------------------------------------- what left the browser


def test_nothing_left_for_elsewhere_and_no_secret_in_a_url_or_log(page: Any, demo: Demo) -> None:
    assert demo.requests
    hosts = {re.match(r"^\w+://([^/]+)", u).group(1) for u in demo.requests if "://" in u}  # type: ignore[union-attr]
    assert hosts == {f"127.0.0.1:{demo.port}"}, hosts
    code = demo.link.split("#signin=")[1]
    for url in demo.requests:
        assert demo.token not in url, url
        assert code not in url, url
    served = [line for line in demo.output().splitlines() if '" 200' in line or '" 4' in line]
    assert served, "no access log lines"
    assert not [line for line in served if demo.token in line or code in line]

"""searchRuns: every filter, every ordering, keyset paging, against runs made from real events.

Each expectation is computed in Python from the same generated runs, so the SQL is checked
against an independent statement of what the filter means.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from tests.graphql.conftest import Api, append_and_project, make_app, make_tokens
from tests.support import at, digest, ev, migrated

Factory = Callable[..., Coroutine[Any, Any, str]]
P = "search"


@dataclass
class FakeRun:
    run_id: str
    started: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


def _runs() -> list[FakeRun]:
    rnd = random.Random(7)
    runs = []
    for i in range(40):
        r = FakeRun(
            run_id=f"r{i:02}",
            started=at(days=i % 13, hours=i),
            status=["completed", "failed", "killed", "running"][i % 4],
            params={
                "lr": rnd.choice([0.001, 0.01, 0.1]),
                "opt": rnd.choice(["adam", "sgd"]),
                "layers": i % 5,
            },
        )
        if i % 7 != 0:  # some runs never log accuracy
            r.metrics["acc"] = [round(rnd.random(), 3) for _ in range(rnd.randint(1, 4))]
        r.metrics["loss"] = [round(rnd.uniform(0.1, 2.0), 3) for _ in range(3)]
        if i % 3 == 0:
            r.tags["team"] = "growth" if i % 2 else "core"
        r.inputs.append("d@v1" if i % 2 else "d@v2")
        runs.append(r)
    return runs


def _events(runs: list[FakeRun]) -> list[dict[str, Any]]:
    out = [
        ev("dataset.version.created", "dataset:d", {"version": "v1", "uri": "s3://d/1", "digest": digest("1")}, project=P),
        ev("dataset.version.created", "dataset:d", {"version": "v2", "uri": "s3://d/2", "digest": digest("2")}, project=P),
    ]  # fmt: skip
    for r in runs:
        s = f"run:{r.run_id}"
        out.append(ev("run.started", s, {"name": f"name-{r.run_id}"}, when=r.started, project=P))
        out.append(ev("run.params.logged", s, {"params": r.params}, when=r.started, project=P))
        for key, values in r.metrics.items():
            points = [{"key": key, "value": v, "step": n} for n, v in enumerate(values)]
            out.append(ev("run.metrics.logged", s, {"metrics": points}, when=r.started, project=P))
        if r.tags:
            out.append(ev("run.tags.set", s, {"tags": r.tags}, when=r.started, project=P))
        for dv in r.inputs:
            d, v = dv.split("@")
            out.append(ev("run.input.used", s, {"dataset": d, "version": v, "role": "train"},
                          when=r.started, project=P))  # fmt: skip
        if r.status != "running":
            out.append(ev("run.finished", s, {"status": r.status}, when=r.started, project=P))
    return out


@dataclass
class Searcher:
    api: Api
    runs: list[FakeRun]

    def ids(self, filter: dict[str, Any] | None = None, order: dict[str, Any] | None = None,
            first: int = 500) -> list[str]:  # fmt: skip
        """Every matching run id, reading pages of `first`."""
        out: list[str] = []
        after = None
        while True:
            data = self.api.query(
                """query($f: RunFilter, $o: RunOrder, $first: Int, $after: String) {
                     searchRuns(project: "search", filter: $f, orderBy: $o, first: $first, after: $after) {
                       nodes { runId } pageInfo { hasNextPage endCursor } totalCount } }""",
                {"f": filter, "o": order, "first": first, "after": after},
            )["searchRuns"]
            out += [n["runId"] for n in data["nodes"]]
            if not data["pageInfo"]["hasNextPage"]:
                assert data["totalCount"] == len(out)
                return out
            after = data["pageInfo"]["endCursor"]


@pytest_asyncio.fixture(scope="module")
async def search_db(database_factory: Factory) -> tuple[str, dict[str, str], list[FakeRun]]:
    url = await database_factory()
    await migrated(url)
    runs = _runs()
    await append_and_project(url, _events(runs))
    return url, await make_tokens(url), runs


@pytest.fixture
def searcher(search_db: tuple[str, dict[str, str], list[FakeRun]]) -> Iterator[Searcher]:
    url, tokens, runs = search_db
    with TestClient(make_app(url)) as client:
        yield Searcher(Api(client, tokens), runs)


OPS = {
    "GT": lambda a, b: a > b, "GTE": lambda a, b: a >= b, "LT": lambda a, b: a < b,
    "LTE": lambda a, b: a <= b, "EQ": lambda a, b: a == b, "NEQ": lambda a, b: a != b,
}  # fmt: skip
AGG = {"LATEST": lambda v: v[-1], "MIN": min, "MAX": max}


def test_metric_filters_on_latest_min_and_max(searcher: Searcher) -> None:
    for agg, f in AGG.items():
        for op, cmp in OPS.items():
            flt = {"metrics": [{"key": "acc", "op": op, "value": 0.5, "agg": agg}]}
            expected = sorted(
                r.run_id
                for r in searcher.runs
                if "acc" in r.metrics and cmp(f(r.metrics["acc"]), 0.5)
            )
            assert sorted(searcher.ids(flt)) == expected, (agg, op)


def test_param_tag_status_time_and_dataset_filters(searcher: Searcher) -> None:
    runs = searcher.runs
    for op, cmp in OPS.items():
        got = searcher.ids({"params": [{"key": "lr", "op": op, "value": 0.01}]})
        assert sorted(got) == sorted(r.run_id for r in runs if cmp(r.params["lr"], 0.01)), op
    assert sorted(
        searcher.ids({"params": [{"key": "opt", "op": "EQ", "value": "adam"}]})
    ) == sorted(r.run_id for r in runs if r.params["opt"] == "adam")
    assert sorted(searcher.ids({"tags": [{"key": "team"}]})) == sorted(
        r.run_id for r in runs if r.tags
    )
    assert sorted(searcher.ids({"tags": [{"key": "team", "value": "core"}]})) == sorted(
        r.run_id for r in runs if r.tags.get("team") == "core"
    )
    assert sorted(searcher.ids({"status": ["FAILED", "KILLED"]})) == sorted(
        r.run_id for r in runs if r.status in ("failed", "killed")
    )
    window = {"startedAfter": at(3), "startedBefore": at(6)}
    assert sorted(searcher.ids(window)) == sorted(
        r.run_id for r in runs if at(3) <= r.started < at(6)
    )
    assert sorted(searcher.ids({"usedDatasetVersion": "search/dataset_version:d@v2"})) == sorted(
        r.run_id for r in runs if "d@v2" in r.inputs
    )
    combined = {
        "params": [{"key": "layers", "op": "GTE", "value": 2}],
        "metrics": [{"key": "loss", "op": "LT", "value": 1.5}],
        "status": ["COMPLETED", "FAILED"],
    }
    assert sorted(searcher.ids(combined)) == sorted(
        r.run_id for r in runs
        if r.params["layers"] >= 2 and r.metrics["loss"][-1] < 1.5 and r.status in ("completed", "failed")
    )  # fmt: skip


def test_ordering_by_metric_puts_runs_without_it_last_and_pages_cleanly(searcher: Searcher) -> None:
    runs = searcher.runs
    with_acc = [r for r in runs if "acc" in r.metrics]
    without = sorted((r.run_id for r in runs if "acc" not in r.metrics), reverse=True)
    desc = [
        r.run_id
        for r in sorted(with_acc, key=lambda r: (r.metrics["acc"][-1], r.run_id), reverse=True)
    ]
    for first in (500, 7, 1):
        assert searcher.ids(order={"metric": "acc"}, first=first) == desc + without
    asc = [r.run_id for r in sorted(with_acc, key=lambda r: (max(r.metrics["acc"]), r.run_id))]
    assert searcher.ids(
        order={"metric": "acc", "agg": "MAX", "direction": "ASC"}, first=6
    ) == asc + sorted(r.run_id for r in runs if "acc" not in r.metrics)
    # A filter on the ordering metric: a range of the same index scan, no runs without it.
    flt = {"metrics": [{"key": "acc", "op": "GTE", "value": 0.3}]}
    assert searcher.ids(flt, {"metric": "acc", "direction": "DESC"}, first=4) == [
        i for i in desc if next(r for r in runs if r.run_id == i).metrics["acc"][-1] >= 0.3
    ]


def test_ordering_by_attributes(searcher: Searcher) -> None:
    runs = searcher.runs
    by_start = [r.run_id for r in sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True)]
    assert searcher.ids(first=9) == by_start  # default: newest first
    assert (
        searcher.ids(order={"attribute": "STARTED_AT", "direction": "ASC"}, first=9)
        == by_start[::-1]
    )
    assert searcher.ids(order={"attribute": "RUN_ID", "direction": "ASC"}, first=9) == sorted(
        r.run_id for r in runs
    )
    assert searcher.ids(order={"attribute": "NAME"}, first=9) == sorted(
        (r.run_id for r in runs), reverse=True
    )
    finished = searcher.ids(order={"attribute": "FINISHED_AT", "direction": "DESC"}, first=9)
    running = [r.run_id for r in runs if r.status == "running"]
    assert sorted(finished[-len(running) :]) == sorted(running)  # no finish time: lowest


def test_bad_search_input_is_named(searcher: Searcher) -> None:
    api = searcher.api
    q = """query($o: RunOrder, $f: RunFilter) { searchRuns(project: "search", orderBy: $o, filter: $f) { nodes { runId } } }"""
    assert (
        "one of `metric` and `attribute`"
        in api.errors(q, {"o": {"metric": "acc", "attribute": "NAME"}})[0]["message"]
    )
    assert (
        "`value` must be a number"
        in api.errors(q, {"f": {"params": [{"key": "lr", "op": "EQ", "value": {"x": 1}}]}})[0][
            "message"
        ]
    )
    assert (
        "not a cursor"
        in api.errors(
            """{ searchRuns(project: "search", after: "garbage!") { nodes { runId } } }"""
        )[0]["message"]
    )
    error = api.errors(q, {"f": {"metrics": [{"key": "acc", "op": "LIKE", "value": 1}]}})[0]
    assert "LIKE" in error["message"]  # not an operator: refused by the schema itself


# ------------------------------------------------------------- a page with its runs' data

DATA = (
    "params { key value } metrics { key value step at min max count } tags { key value } "
    "paramMap metricMap tagMap"
)
PAGE = """query($f: RunFilter, $o: RunOrder, $first: Int, $after: String) {
  searchRuns(project: "search", filter: $f, orderBy: $o, first: $first, after: $after) {
    edges { cursor node { %s } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  } }"""

# Every ordering (each of its parts: runs with the key, then without) and filters that change
# which runs a page holds.
CASES: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [
    (None, None),
    (None, {"attribute": "STARTED_AT", "direction": "ASC"}),
    (None, {"attribute": "FINISHED_AT"}),
    (None, {"attribute": "NAME", "direction": "ASC"}),
    (None, {"attribute": "RUN_ID"}),
    (None, {"attribute": "STATUS", "direction": "ASC"}),
    (None, {"metric": "acc"}),
    (None, {"metric": "acc", "agg": "MIN", "direction": "ASC"}),
    ({"metrics": [{"key": "acc", "op": "GT", "value": 0.4}]}, {"metric": "acc"}),
    ({"status": ["COMPLETED", "FAILED"]}, {"metric": "loss", "agg": "MAX"}),
    (None, {"param": "lr", "direction": "ASC"}),
    ({"params": [{"key": "opt", "op": "EQ", "value": "adam"}]}, {"param": "layers"}),
    (None, {"tag": "team"}),
    ({"tags": [{"key": "team"}]}, {"tag": "team", "direction": "ASC"}),
    ({"usedDatasetVersion": "search/dataset_version:d@v1"}, {"attribute": "STARTED_AT"}),
    ({"startedAfter": at(3), "params": [{"key": "lr", "op": "LTE", "value": 0.01}]}, None),
]


def _pages(api: Api, fields: str, f: Any, o: Any, first: int) -> list[dict[str, Any]]:
    out = []
    after = None
    while True:
        page = api.query(PAGE % fields, {"f": f, "o": o, "first": first, "after": after})
        out.append(page["searchRuns"])
        if not page["searchRuns"]["pageInfo"]["hasNextPage"]:
            return out
        after = page["searchRuns"]["pageInfo"]["endCursor"]


def _loaded(api: Api, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's data as `run(id:)` gives it (the DataLoaders, one statement per kind)."""
    out = {}
    for run_id in run_ids:
        q = f"query($id: ID!) {{ run(id: $id) {{ runId {DATA} }} }}"
        out[run_id] = api.query(q, {"id": f"search/run:{run_id}"})["run"]
    return out


def test_a_page_with_its_runs_data_is_the_lean_page_with_each_runs_own_data(
    searcher: Searcher,
) -> None:
    """The page statement wrapped with the runs' JSON objects returns the same runs, in the
    same order, with the same cursors, as the lean statement; each run's params, metrics and
    tags (lists and maps) are what the DataLoaders give for it, and what was logged."""
    api = searcher.api
    loaded = _loaded(api, [r.run_id for r in searcher.runs])
    fake = {r.run_id: r for r in searcher.runs}
    for run_id, data in loaded.items():  # the loaders' maps say what was logged
        r = fake[run_id]
        assert data["paramMap"] == r.params
        assert data["tagMap"] == r.tags
        assert {k: (m["value"], m["min"], m["max"], m["count"]) for k, m in data["metricMap"].items()} == {
            k: (v[-1], min(v), max(v), len(v)) for k, v in r.metrics.items()
        }  # fmt: skip
        assert [p["key"] for p in data["params"]] == list(data["paramMap"]) == sorted(r.params)
    pages_checked = 0
    for f, o in CASES:
        for first in (7, 500):
            lean = _pages(api, "runId", f, o, first)
            full = _pages(api, f"runId {DATA}", f, o, first)
            assert [p["pageInfo"] for p in full] == [p["pageInfo"] for p in lean], (f, o, first)
            assert [[e["cursor"] for e in p["edges"]] for p in full] == [
                [e["cursor"] for e in p["edges"]] for p in lean
            ]
            nodes = [e["node"] for p in full for e in p["edges"]]
            assert [n["runId"] for n in nodes] == [
                e["node"]["runId"] for p in lean for e in p["edges"]
            ]
            assert nodes, (f, o)
            for n in nodes:
                assert n == loaded[n["runId"]], (f, o, n["runId"])
            pages_checked += len(full)
    assert pages_checked > 2 * len(CASES)


def test_maps_and_lists_say_the_same(searcher: Searcher) -> None:
    page = searcher.api.query(PAGE % f"runId {DATA}", {"first": 500})["searchRuns"]
    for e in page["edges"]:
        n = e["node"]
        assert n["paramMap"] == {p["key"]: p["value"] for p in n["params"]}
        assert n["tagMap"] == {t["key"]: t["value"] for t in n["tags"]}
        assert list(n["metricMap"]) == [m["key"] for m in n["metrics"]]
        for m in n["metrics"]:
            entry = n["metricMap"][m["key"]]
            assert datetime.fromisoformat(entry["at"]) == datetime.fromisoformat(m["at"])
            assert entry["at"].endswith("+00:00")
            assert {k: entry[k] for k in ("value", "step", "min", "max", "count")} == {
                k: m[k] for k in ("value", "step", "min", "max", "count")
            }


def test_metric_keys_and_runs_without_data(searcher: Searcher) -> None:
    q = """{ searchRuns(project: "search", first: 500) { nodes { runId
              metricMap(keys: ["acc"]) metrics(keys: ["acc"]) { key } tagMap tags { key } } } }"""
    nodes = searcher.api.query(q)["searchRuns"]["nodes"]
    fake = {r.run_id: r for r in searcher.runs}
    assert len(nodes) == len(fake)
    for n in nodes:
        r = fake[n["runId"]]
        assert (
            list(n["metricMap"])
            == [m["key"] for m in n["metrics"]]
            == (["acc"] if "acc" in r.metrics else [])
        )
        assert n["tagMap"] == r.tags
        assert (n["tags"] == []) == (not r.tags)
    assert any(not fake[n["runId"]].tags for n in nodes)

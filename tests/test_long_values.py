"""Every string at its schema maximum: projected without a dead letter, stored whole, searchable.

A btree entry holds at most 2704 bytes, and the schemas allow param values of 6000 characters
and tag values of 5000, up to 4 bytes each in UTF-8. schema/sql/0006_long_values.sql indexes a
hash of those values instead of the values; these tests hold the events to the schemas' limits,
with random 4-byte characters (as long in bytes as the limits allow, and incompressible, so
PostgreSQL cannot squeeze an entry under the limit either).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from studbook_server.domain.contract import EVENT_TYPES, validate_event
from studbook_server.graphql._search import (
    CompareOp,
    ParamFilter,
    RunFilter,
    TagFilter,
    _filters,
    _Sql,
)
from studbook_server.rebuild import rebuild
from tests.graphql.conftest import Api, append_and_project, make_app, make_tokens
from tests.support import at, digest, ev, migrated

Factory = Callable[..., Coroutine[Any, Any, str]]

_RND = random.Random(6000)


def wide(n: int) -> str:
    """``n`` random characters of 4 UTF-8 bytes each (outside the Basic Multilingual Plane)."""
    return "".join(chr(_RND.randrange(0x10000, 0x110000)) for _ in range(n))


def named(n: int, first: str = string.ascii_letters, rest: str = "") -> str:
    """``n`` random characters matching a name pattern: one of ``first``, then ``rest``."""
    rest = rest or first
    return _RND.choice(first) + "".join(_RND.choice(rest) for _ in range(n - 1))


ALNUM = string.ascii_letters + string.digits
# The patterns of the schemas, at their longest.
PROJECT = named(64, string.ascii_lowercase, string.ascii_lowercase + string.digits + "._-")
RUN = named(128, ALNUM, ALNUM + "._-")
PARENT_RUN = named(128, ALNUM, ALNUM + "._-")
DATASET = named(200, ALNUM, ALNUM + "._/-")
PARENT_DATASET = named(200, ALNUM, ALNUM + "._/-")
VERSION = named(128, ALNUM, ALNUM + "._-")
MODEL = named(200, ALNUM, ALNUM + "._/-")
EXPERIMENT = named(200, ALNUM, ALNUM + "._/-")
ALIAS = named(63, string.ascii_lowercase, string.ascii_lowercase + string.digits + "_-")
ENVIRONMENT = named(63, string.ascii_lowercase, string.ascii_lowercase + string.digits + "_-")
# Free text at its longest, in 4-byte characters.
PARAM_KEY, PARAM_VALUE = wide(250), wide(6000)
ASCII_PARAM_VALUE = named(6000, string.printable)  # 6000 bytes: too long for a btree entry too
TAG_KEY, TAG_VALUE = wide(250), wide(5000)
METRIC_KEY = wide(250)
RUN_NAME = wide(250)
ACTOR = wide(200)
URI = wide(2048)
DIFF = wide(65_536)  # 256 KiB of UTF-8: the largest diff a run.diff.recorded holds


def _max_events() -> list[dict[str, Any]]:
    """One event of every type, each string field at its schema's maximum length."""

    def e(type: str, subject: str, payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
        out = ev(type, subject, payload, project=PROJECT, actor=ACTOR, when=at(1), **kw)
        out["correlation_id"] = wide(200)
        out["causation_id"] = wide(200)
        out["producer"] = {"name": wide(200), "version": wide(200), "host": wide(255)}
        return out

    run, model = f"run:{RUN}", f"model:{MODEL}"
    d = f"dataset:{DATASET}"
    return [
        e("project.created", f"project:{PROJECT}", {"description": wide(10000)}),
        e("dataset.created", d, {"name": DATASET, "description": wide(10000), "uri": URI}),
        e("dataset.version.created", d, {
            "version": VERSION, "uri": wide(2048), "digest": digest("v"), "size_bytes": 2**63 - 1,
            "row_count": 2**63 - 1, "schema": {wide(250): wide(5000)},
            "parents": [{"dataset": PARENT_DATASET, "version": VERSION}],
            "produced_by_run": PARENT_RUN,
        }),
        e("run.started", run, {
            "name": RUN_NAME, "parent_run": PARENT_RUN, "experiment": EXPERIMENT,
            "code": {"git_repo": wide(2048), "git_commit": "a" * 64, "git_branch": wide(255),
                     "git_dirty": True, "entry_point": wide(1024)},
            "environment": {"python_version": wide(64), "packages_digest": digest("p"),
                            "packages": [wide(500) for _ in range(3)], "host": wide(255)},
        }),
        e("run.params.logged", run, {"params": {
            PARAM_KEY: PARAM_VALUE, "ascii": ASCII_PARAM_VALUE, "one": 1.0, "flag": True,
        }}),
        e("run.tags.set", run, {"tags": {TAG_KEY: TAG_VALUE}}),
        e("run.metrics.logged", run, {"metrics": [
            {"key": METRIC_KEY, "value": 0.5, "step": 2**63 - 1, "timestamp": at(1)},
        ]}),
        e("run.input.used", run, {"dataset": DATASET, "version": VERSION, "role": "evaluation"}),
        e("run.output.produced", run, {
            "uri": wide(2048), "digest": digest("o"), "name": named(200, ALNUM, ALNUM + "._/-"),
            "dataset": DATASET, "version": named(128, ALNUM, ALNUM + "._-"),
        }),
        e("run.finished", run, {
            "status": "failed", "error": {"type": wide(200), "message": wide(10000)},
        }),
        e("model.created", model, {"name": MODEL, "description": wide(10000)}),
        e("model.version.registered", model, {
            "run": RUN, "artifact_uri": wide(2048), "digest": digest("m"),
            "framework": wide(100), "signature": {wide(250): wide(5000)},
            "description": wide(10000),
        }),
        e("model.alias.set", model, {"alias": ALIAS, "version": 1}),
        e("model.version.approved", model, {
            "version": 1, "comment": wide(10000), "evidence": [wide(2048), wide(2048)],
        }),
        e("model.version.rejected", model, {
            "version": 1, "comment": wide(10000), "evidence": [wide(2048)],
        }),
        e("model.version.deployed", model, {
            "version": 1, "environment": ENVIRONMENT, "target": wide(500),
        }),
        e("model.version.undeployed", model, {"version": 1, "environment": ENVIRONMENT}),
        e("model.alias.removed", model, {"alias": ALIAS}),
        e("model.updated", model, {
            "description": wide(10000), "tags": {TAG_KEY: wide(8000)},
        }),
        e("model.version.updated", model, {
            "version": 1, "description": wide(10000), "tags": {TAG_KEY: wide(8000)},
            "stage": "Production",
        }),
        e("logged_model.created", "logged_model:" + RUN, {
            "name": wide(500), "experiment": wide(500), "run": RUN, "artifact_uri": wide(2048),
            "status": "LOGGED_MODEL_PENDING", "model_type": wide(500),
            "params": {TAG_KEY: wide(8000)}, "tags": {TAG_KEY: wide(8000)},
        }),
        e("logged_model.updated", "logged_model:" + RUN, {
            "status": "LOGGED_MODEL_READY", "tags": {TAG_KEY: wide(8000)},
        }),
        e("artifact.stored", run, {
            "path": wide(2048), "uri": wide(4096), "size_bytes": 2**63 - 1,
            "digest": "sha256:" + "f" * 64, "run": RUN,
        }),
        e("annotation.added", run, {
            "text": wide(10000), "labels": {wide(250): wide(1000) for _ in range(3)},
        }),
        e("subject.redacted", d, {"reason": wide(1000), "fields": [wide(500)]}),
        e("dataset.version.reported", d, {
            "version": named(128, ALNUM, ALNUM + "._-"), "uri": wide(2048),
            "produced_by_run": PARENT_RUN, "schema": {wide(250): wide(5000)},
            "row_count": 2**63 - 1, "size_bytes": 2**63 - 1,
        }),
        e("dataset.read", d, {"run": RUN, "uri": wide(2048), "version": VERSION, "role": "test"}),
        e("openlineage.event.reported", run, {
            "kind": "RunEvent", "event": {wide(250): wide(5000)},
        }),
        e("experiment.created", "experiment:" + named(128, ALNUM, ALNUM + "._-"), {
            "name": wide(500), "artifact_location": wide(2048), "tags": {TAG_KEY: TAG_VALUE},
        }),
        e("experiment.updated", "experiment:" + named(128, ALNUM, ALNUM + "._-"), {
            "name": wide(500), "lifecycle_stage": "deleted", "tags": {TAG_KEY: TAG_VALUE},
        }),
        e("run.lifecycle.set", run, {"lifecycle_stage": "deleted"}),
        e("run.diff.recorded", run, {
            "digest": "sha256:" + hashlib.sha256(DIFF.encode()).hexdigest(),
            "size_bytes": len(DIFF.encode()), "encoding": "utf-8", "diff": DIFF,
        }),
    ]  # fmt: skip


EVENTS = _max_events()


@dataclass
class Loaded:
    url: str
    tokens: dict[str, str]


@pytest_asyncio.fixture(scope="module")
async def loaded(database_factory: Factory) -> Loaded:
    """A fresh database with the maximal events appended and projected (none dead-lettered)."""
    url = await database_factory()
    await migrated(url)
    await append_and_project(url, EVENTS)
    return Loaded(url, await make_tokens(url))


@pytest.fixture
def api(loaded: Loaded) -> Iterator[Api]:
    with TestClient(make_app(loaded.url)) as client:
        yield Api(client, loaded.tokens)


def test_the_events_are_valid_and_at_the_limits_the_btree_indexes_could_not_hold() -> None:
    assert [v for e in EVENTS for v in validate_event(e)] == []
    assert sorted(e["type"] for e in EVENTS) == sorted(EVENT_TYPES)
    # What the schemas allow and 0004's indexes refused (a btree entry: at most 2704 bytes).
    assert (len(PARAM_VALUE), len(PARAM_VALUE.encode())) == (6000, 24000)
    assert (len(TAG_VALUE), len(TAG_VALUE.encode())) == (5000, 20000)
    assert (len(PARAM_KEY), len(PARAM_KEY.encode())) == (250, 1000)
    assert len(ASCII_PARAM_VALUE.encode()) == 6000
    # One more character is over the schema's limit.
    params = next(e for e in EVENTS if e["type"] == "run.params.logged")
    too_long = {**params, "payload": {"params": {PARAM_KEY: PARAM_VALUE + "x"}}}
    assert [v.path for v in validate_event(too_long)] == [f"/payload/params/{PARAM_KEY}"]


async def test_every_event_is_projected_and_every_value_stored_whole(loaded: Loaded) -> None:
    con = await postgres.connect(loaded.url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        assert await con.fetchval("SELECT count(*) FROM public.events") == len(EVENTS)
        params = dict(
            await con.fetch("SELECT key, value FROM rm.run_params WHERE run_id = $1", RUN)
        )
        assert params == {
            PARAM_KEY: PARAM_VALUE, "ascii": ASCII_PARAM_VALUE, "one": 1.0, "flag": True,
        }  # fmt: skip
        tags = await con.fetch("SELECT key, value FROM rm.run_tags WHERE run_id = $1", RUN)
        assert [tuple(t) for t in tags] == [(TAG_KEY, TAG_VALUE)]
        run = await con.fetchrow("SELECT * FROM rm.runs WHERE project = $1", PROJECT)
        assert (run["run_id"], run["name"], run["experiment"], run["status"]) == (
            RUN, RUN_NAME, EXPERIMENT, "failed"
        )  # fmt: skip
        # The actor as the client sent it, in the indexed column of the event store.
        assert [r[0] for r in await con.fetch("SELECT DISTINCT actor FROM public.events")] == [
            ACTOR
        ]
        metric = await con.fetchrow("SELECT key, step FROM rm.run_metrics WHERE run_id = $1", RUN)
        assert tuple(metric) == (METRIC_KEY, 2**63 - 1)
        dataset = await con.fetchrow(
            "SELECT name, uri FROM rm.datasets WHERE project = $1", PROJECT
        )
        assert tuple(dataset) == (DATASET, URI)
        assert await con.fetchval("SELECT count(*) FROM rm.annotations") == 1
        assert await con.fetchval("SELECT count(*) FROM rm.redactions") == 1
        edges = await con.fetch("SELECT edge_type, src FROM rm.lineage_edges ORDER BY 1, 2")
        assert [tuple(e) for e in edges] == sorted([
            ("derived", f"dataset_version:{PARENT_DATASET}@{VERSION}"),
            ("input", f"dataset_version:{DATASET}@{VERSION}"),
            ("output", f"run:{PARENT_RUN}"),
            ("output", f"run:{PARENT_RUN}"),  # the version a pipeline reported it wrote
            ("output", f"run:{RUN}"),
            ("trained", f"run:{RUN}"),
        ])  # fmt: skip
    finally:
        await con.close()


SEARCH = """query($p: String!, $f: RunFilter) {
  searchRuns(project: $p, filter: $f) { nodes { runId params { key value } tags { key value } }
                                        totalCount } }"""


def _search(api: Api, f: dict[str, Any]) -> list[str]:
    data = api.query(SEARCH, {"p": PROJECT, "f": f})["searchRuns"]
    assert data["totalCount"] == len(data["nodes"])
    return [n["runId"] for n in data["nodes"]]


def test_search_finds_the_run_by_its_longest_param_and_tag_values(api: Api) -> None:
    def param(value: Any, op: str = "EQ", key: str = PARAM_KEY) -> dict[str, Any]:
        return {"params": [{"key": key, "op": op, "value": value}]}

    assert _search(api, param(PARAM_VALUE)) == [RUN]
    assert _search(api, param(ASCII_PARAM_VALUE, key="ascii")) == [RUN]
    assert _search(api, {"tags": [{"key": TAG_KEY, "value": TAG_VALUE}]}) == [RUN]
    assert _search(api, {"tags": [{"key": TAG_KEY}]}) == [RUN]
    # Equal up to the last character is not equal.
    near = PARAM_VALUE[:-1] + ("a" if PARAM_VALUE[-1] != "a" else "b")
    assert _search(api, param(near)) == []
    assert _search(api, {"tags": [{"key": TAG_KEY, "value": TAG_VALUE[:-1]}]}) == []
    assert _search(api, param(PARAM_VALUE, key=PARAM_KEY[:-1])) == []
    # Both filters at once, and a param filter beside a long tag filter.
    both = {**param(PARAM_VALUE), "tags": [{"key": TAG_KEY, "value": TAG_VALUE}]}
    assert _search(api, both) == [RUN]
    # JSON equality, not text equality: 1 equals the logged 1.0; true is not "true".
    assert _search(api, param(1, key="one")) == [RUN]
    assert _search(api, param(1.0, key="one")) == [RUN]
    assert _search(api, param(True, key="flag")) == [RUN]
    assert _search(api, param("true", key="flag")) == []
    # Comparisons other than equality still compare the whole value.
    assert _search(api, param(PARAM_VALUE, "GTE")) == [RUN]
    assert _search(api, param(PARAM_VALUE, "LTE")) == [RUN]
    assert _search(api, param(PARAM_VALUE, "GT")) == []
    assert _search(api, param(PARAM_VALUE, "NEQ")) == []
    assert _search(api, param(near, "NEQ")) == [RUN]
    assert _search(api, param(PARAM_VALUE[:-1], "GT")) == [RUN]  # a prefix sorts first
    # The values come back whole.
    node = api.query(SEARCH, {"p": PROJECT, "f": param(PARAM_VALUE)})["searchRuns"]["nodes"][0]
    assert {p["key"]: p["value"] for p in node["params"]}[PARAM_KEY] == PARAM_VALUE
    assert node["tags"] == [{"key": TAG_KEY, "value": TAG_VALUE}]


async def _value_indexes(con: asyncpg.Connection) -> dict[str, str]:
    """Definitions of the indexes on run_params and run_tags other than the primary keys."""
    rows = await con.fetch(
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'rm' "
        "AND tablename IN ('run_params', 'run_tags') AND indexname NOT LIKE '%pkey' ORDER BY 1"
    )
    # The definition without its (possibly generated) name, for comparing across rebuilds.
    return {r["tablename"]: r["indexdef"].partition(" ON ")[2] for r in rows}


HASH_INDEXES = {
    "run_params": "rm.run_params USING btree (project, key, jsonb_hash_extended(value, "
    "(0)::bigint)) INCLUDE (run_id)",
    "run_tags": "rm.run_tags USING btree (project, key, hashtextextended(value, (0)::bigint)) "
    "INCLUDE (run_id)",
}


async def test_hash_indexes_replace_the_value_indexes(loaded: Loaded) -> None:
    con = await postgres.connect(loaded.url)
    try:
        names = {
            r[0]
            for r in await con.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'rm' "
                "AND tablename IN ('run_params', 'run_tags')"
            )
        }
        assert names == {
            "run_params_pkey", "run_params_key_value_hash", "run_tags_pkey",
            "run_tags_key_value_hash",
        }  # fmt: skip
        assert await _value_indexes(con) == HASH_INDEXES
        stats = await con.fetch(
            "SELECT stxname, pg_get_statisticsobjdef_columns(oid) FROM pg_statistic_ext "
            "WHERE stxrelid IN ('rm.run_params'::regclass, 'rm.run_tags'::regclass) ORDER BY 1"
        )
        assert [tuple(r) for r in stats] == [
            ("run_params_key_value", "key, value, jsonb_hash_extended(value, 0::bigint)"),
            ("run_tags_key_value", "key, value, hashtextextended(value, 0::bigint)"),
        ]
    finally:
        await con.close()


def _index_conditions(plan: Any) -> dict[str, str]:
    """Index name -> index condition, for every index scan in an EXPLAIN (FORMAT JSON) tree."""
    out: dict[str, str] = {}
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            out[node["Index Name"]] = node.get("Index Cond", "")
        nodes += node.get("Plans", [])
    return out


async def test_equality_filters_are_answered_from_the_hash_indexes(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    await migrated(url)
    con = await postgres.connect(url)
    try:
        # 5000 runs sharing each key between two values; r1 alone has a long value.
        await con.execute(
            """
            INSERT INTO rm.runs (project, run_id, status, actor, recorded_at)
            SELECT 'p', 'r' || i, 'completed', 'a', now() FROM generate_series(1, 5000) i;
            INSERT INTO rm.run_params (project, run_id, key, value)
            SELECT 'p', 'r' || i, 'opt', to_jsonb(CASE WHEN i % 2 = 0 THEN 'adam' ELSE 'sgd' END)
            FROM generate_series(2, 5000) i;
            INSERT INTO rm.run_tags (project, run_id, key, value)
            SELECT 'p', 'r' || i, 'team', CASE WHEN i % 2 = 0 THEN 'core' ELSE 'growth' END
            FROM generate_series(2, 5000) i;
            """
        )
        await con.execute("INSERT INTO rm.run_params VALUES ('p', 'r1', 'opt', $1)", PARAM_VALUE)
        await con.execute("INSERT INTO rm.run_tags VALUES ('p', 'r1', 'team', $1)", TAG_VALUE)
        await con.execute("ANALYZE rm.runs; ANALYZE rm.run_params; ANALYZE rm.run_tags")
        for f, index, hashed in [
            (RunFilter(params=[ParamFilter(key="opt", op=CompareOp.EQ, value=PARAM_VALUE)]),
             "run_params_key_value_hash", "jsonb_hash_extended(value, '0'::bigint) ="),
            (RunFilter(tags=[TagFilter(key="team", value=TAG_VALUE)]),
             "run_tags_key_value_hash", "hashtextextended(value, '0'::bigint) ="),
        ]:  # fmt: skip
            # The conditions searchRuns builds, in the statement that counts its matches.
            sql = _Sql()
            _filters(sql, "p", f, None)
            statement = f"SELECT count(*) FROM rm.runs r WHERE {' AND '.join(sql.where)}"
            async with con.transaction():
                await con.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                assert await con.fetchval(statement, *sql.args) == 1
                plan = await con.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *sql.args)
            conditions = _index_conditions(plan)
            assert index in conditions, plan
            assert hashed in conditions[index], conditions
    finally:
        await con.close()


async def test_rebuild_keeps_the_hash_indexes_and_the_long_values(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    await migrated(url)
    await append_and_project(url, EVENTS)
    assert await rebuild(url) == len(EVENTS)
    con = await postgres.connect(url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.dead_letters") == 0
        # Fresh tables LIKE the old ones: the same definitions under generated names.
        assert await _value_indexes(con) == HASH_INDEXES
        value = await con.fetchval(
            "SELECT value FROM rm.run_params WHERE run_id = $1 AND key = $2", RUN, PARAM_KEY
        )
        assert value == PARAM_VALUE
        tag = await con.fetchval(
            "SELECT value FROM rm.run_tags WHERE run_id = $1 AND key = $2", RUN, TAG_KEY
        )
        assert tag == TAG_VALUE
    finally:
        await con.close()


async def test_the_migration_finds_value_indexes_renamed_by_a_rebuild(
    database_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await database_factory()
    every = postgres.migration_files()
    assert [v for v, _ in every if v == 6], "0006_long_values.sql is missing"
    with monkeypatch.context() as m:
        m.setattr(postgres, "migration_files", lambda: [(v, p) for v, p in every if v < 6])
        await migrated(url)
    short = [
        ev("run.started", "run:r", {"name": "r"}),
        ev("run.tags.set", "run:r", {"tags": {"t": "v"}}),
    ]
    await append_and_project(url, short)
    await rebuild(url)  # 0004's indexes and statistics now have generated names
    con = await postgres.connect(url)
    try:
        assert await _value_indexes(con) == {
            t: f"rm.{t} USING btree (project, key, value) INCLUDE (run_id)"
            for t in ("run_params", "run_tags")
        }
        names = {r[0] for r in await con.fetch("SELECT indexname FROM pg_indexes")}
        assert not names & {"run_params_key_value", "run_tags_key_value"}
        assert await postgres.migrate(con) == [v for v, _ in every if v >= 6]
        assert await _value_indexes(con) == HASH_INDEXES
        # 0004's statistics went too (whatever their name), replaced by the hash-aware ones.
        assert (
            await con.fetchval(
                "SELECT count(*) FROM pg_statistic_ext WHERE stxrelid IN "
                "('rm.run_params'::regclass, 'rm.run_tags'::regclass) AND stxexprs IS NULL"
            )
            == 0
        )
    finally:
        await con.close()
    await append_and_project(url, [ev("run.tags.set", "run:r", {"tags": {TAG_KEY: TAG_VALUE}})])

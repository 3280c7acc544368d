"""Audit and time travel: history, audit trail, asOf / knownAt on aliases and deployments, and
the governance query; including a late-recorded alias change."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from starlette.testclient import TestClient

from studbook_server.adapters import postgres
from tests.graphql.conftest import Api, Scenario, append_and_project, make_app, make_tokens
from tests.support import at, ev, migrated, scenario

Factory = Callable[..., Coroutine[Any, Any, str]]

BY_ALIAS = """
query($alias: String!, $asOf: DateTime, $knownAt: DateTime) {
  modelVersionByAlias(project: "churn", model: "churn-clf", alias: $alias, asOf: $asOf, knownAt: $knownAt) {
    number
  }
}
"""


def _version(api: Api, alias: str, **kw: Any) -> int | None:
    mv = api.query(BY_ALIAS, {"alias": alias, **kw})["modelVersionByAlias"]
    return None if mv is None else int(mv["number"])


def test_which_version_held_an_alias_at_a_time(api: Api) -> None:
    # production: v1 from day 6, v2 from day 8, v1 again from day 10; staging: v2 on days 10-11.
    assert _version(api, "production", asOf=at(5.5)) is None  # before the first promotion
    assert _version(api, "production", asOf=at(6)) == 1  # the promotion's own moment
    assert _version(api, "production", asOf=at(6.5)) == 1
    assert _version(api, "production", asOf=at(8.5)) == 2
    assert _version(api, "production", asOf=at(10.5)) == 1
    assert _version(api, "production") == 1
    assert _version(api, "staging", asOf=at(10.5)) == 2
    assert _version(api, "staging") is None  # removed on day 11
    assert _version(api, "canary") is None
    aliases = api.query(
        """{ modelVersion(id: "churn/model_version:churn-clf@2") {
               then: aliases(asOf: "2026-03-11T12:00:00Z") { alias validFrom validTo setBy }
               now: aliases { alias }
               approvedThen: approved(asOf: "2026-03-09T00:00:00Z")
               approvals(asOf: "2026-03-09T00:00:00Z") { decision } } }"""
    )["modelVersion"]
    assert [a["alias"] for a in aliases["then"]] == ["staging"]
    assert aliases["now"] == []
    assert aliases["approvedThen"] is False
    assert aliases["approvals"] == []


def test_history_of_a_subject_in_order(api: Api) -> None:
    events = api.query(
        """{ history(subject: "churn/model:churn-clf") {
               nodes { type actor occurredAt recordedAt subjectSeq payload subject } } }"""
    )["history"]["nodes"]
    assert [e["type"] for e in events] == [
        "model.created", "model.version.registered", "model.version.registered",
        "model.version.approved", "model.alias.set", "model.version.deployed", "model.alias.set",
        "model.version.rejected", "model.alias.set", "model.alias.set", "model.alias.removed",
        "model.version.undeployed",
    ]  # fmt: skip
    assert [e["subjectSeq"] for e in events] == list(range(1, 13))
    assert events[3]["actor"] == "bob"
    assert events[3]["payload"] == {"version": 1, "comment": "ok"}
    assert {e["subject"] for e in events} == {"churn/model:churn-clf"}
    # An old schema version is upcast: run.started v1 kept `host` at the top level.
    started = api.query(
        """{ history(subject: "churn/run:run-2", first: 1) {
               nodes { type schemaVersion payload redacted } pageInfo { hasNextPage } } }"""
    )["history"]
    (first,) = started["nodes"]
    assert first["schemaVersion"] == 1
    assert "host" not in first["payload"]
    assert started["pageInfo"]["hasNextPage"] is True
    redacted = api.query(
        """{ history(subject: "churn/run:run-1", first: 1) { nodes { redacted payload } } }"""
    )["history"]["nodes"][0]
    assert redacted["redacted"] is True
    assert "host" not in redacted["payload"]["environment"]
    error = api.errors(
        '{ history(subject: "churn/model_version:churn-clf@1") { nodes { type } } }'
    )[0]
    assert "`churn/model:churn-clf`" in error["message"]


def test_audit_trail_filters_and_pages(api: Api, scenario_db: Scenario) -> None:
    q = """query($f: AuditFilter, $first: Int, $after: String) {
      auditTrail(filter: $f, first: $first, after: $after) {
        nodes { type actor position project occurredAt } pageInfo { hasNextPage endCursor } } }"""
    bob = api.query(q, {"f": {"actor": "bob"}})["auditTrail"]["nodes"]
    assert [(e["type"], e["actor"]) for e in bob] == [
        ("model.version.approved", "bob"),
        ("model.version.rejected", "bob"),
    ]
    promotions = api.query(
        q, {"f": {"project": "churn", "types": ["model.alias.set"], "from": at(7), "to": at(10)}}
    )["auditTrail"]["nodes"]
    assert [e["occurredAt"][:10] for e in promotions] == ["2026-03-09"]
    # Pages in store order cover everything once.
    seen: list[int] = []
    after = None
    while True:
        page = api.query(q, {"f": {"project": "churn"}, "first": 10, "after": after})["auditTrail"]
        seen += [e["position"] for e in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    churn = [e for e in scenario_db.events if e["project"] == "churn"]
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == len(churn)
    by_subject = api.query(q, {"f": {"subject": "churn/run:run-3"}})["auditTrail"]["nodes"]
    assert [e["type"] for e in by_subject] == ["run.started", "run.finished"]


def test_unapproved_promotions(api: Api) -> None:
    found = api.query(
        """{ unapprovedPromotions(project: "churn") {
               alias promotedAt promotedBy latestDecision latestDecisionAt modelVersion { number } } }"""
    )["unapprovedPromotions"]
    assert [
        (p["alias"], p["modelVersion"]["number"], p["promotedAt"][:10], p["latestDecision"])
        for p in found
    ] == [
        ("production", 2, "2026-03-09", None),  # never reviewed
        ("staging", 2, "2026-03-11", "REJECTED"),  # rejected on day 9, promoted anyway
    ]
    only_staging = api.query(
        '{ unapprovedPromotions(project: "churn", alias: "staging") { alias } }'
    )
    assert only_staging["unapprovedPromotions"] == [{"alias": "staging"}]


async def test_known_at_tells_what_was_believed_before_a_late_recorded_change(
    database_factory: Factory,
) -> None:
    url = await database_factory()
    await migrated(url)
    await append_and_project(url, scenario())
    con = await postgres.connect(url)
    try:
        before: Any = await con.fetchval("SELECT max(recorded_at) FROM public.events")
    finally:
        await con.close()
    # Learned now: on day 7 someone had pointed production at version 2 (occurred in the past).
    late = ev("model.alias.set", "model:churn-clf", {"alias": "production", "version": 2},
              when=at(7), actor="carol")  # fmt: skip
    await append_and_project(url, [late])
    tokens = await make_tokens(url)
    with TestClient(make_app(url)) as client:
        api = Api(client, tokens)
        known_before = before.isoformat()
        assert _version(api, "production", asOf=at(7.5)) == 2  # what we know now
        assert _version(api, "production", asOf=at(7.5), knownAt=known_before) == 1  # then
        assert _version(api, "production", asOf=at(6.5)) == 1  # history before it is untouched
        history = api.query(
            """query($k: DateTime) { model(id: "churn/model:churn-clf") {
                 now: aliasHistory(alias: "production") { version validFrom setBy }
                 then: aliasHistory(alias: "production", knownAt: $k) { version validFrom } } }""",
            {"k": known_before},
        )["model"]
        assert [(h["version"], h["validFrom"][:10], h["setBy"]) for h in history["now"]] == [
            (1, "2026-03-07", "alice"), (2, "2026-03-08", "carol"),
            (2, "2026-03-09", "alice"), (1, "2026-03-11", "alice"),
        ]  # fmt: skip
        assert [(h["version"], h["validFrom"][:10]) for h in history["then"]] == [
            (1, "2026-03-07"), (2, "2026-03-09"), (1, "2026-03-11"),
        ]  # fmt: skip
        unapproved = """query($k: DateTime) { unapprovedPromotions(project: "churn", knownAt: $k) {
                          promotedBy promotedAt } }"""
        now = api.query(unapproved)["unapprovedPromotions"]
        then = api.query(unapproved, {"k": known_before})["unapprovedPromotions"]
        assert ("carol", "2026-03-08") in [(p["promotedBy"], p["promotedAt"][:10]) for p in now]
        assert "carol" not in [p["promotedBy"] for p in then]
        # The audit trail separates occurred and recorded time: carol's change occurred on day 7
        # but was recorded after everything else.
        trail = api.query(
            """query($k: DateTime) { auditTrail(filter: {recordedFrom: $k, types: ["model.alias.set"]}) {
                 nodes { actor occurredAt } } }""",
            {"k": (before.replace(microsecond=before.microsecond)).isoformat()},
        )["auditTrail"]["nodes"]
        assert trail[-1]["actor"] == "carol"

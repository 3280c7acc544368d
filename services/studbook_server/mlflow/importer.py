"""`studbook-server import-mlflow --from http://mlflow-host:5000 --project P`.

Reads an MLflow tracking server through its REST API (experiments, runs with their params, tags,
full metric histories and datasets; registered models, versions, tags, stages and aliases) and replays it into a Studbook project as back-dated events
(the times MLflow recorded), through the one write path. Every event id is derived (uuid5) from
MLflow's ids, and every event's content from MLflow's data alone, so importing again sends the
same events, which the store already holds: nothing changes. Experiments keep MLflow's ids, so
`experiment_id`s in code and URLs keep working.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import orjson
import urllib3

from studbook_server import auth
from studbook_server.errors import StudbookError
from studbook_server.mlflow._ids import DEFAULT_EXPERIMENT_ID, derived_event_id, event, rfc3339
from studbook_server.mlflow._runs import dataset_events
from studbook_server.writepath import Refused, Writer

PAGE = 1000  # runs/search and experiments/search pages
HISTORY_PAGE = 25_000
POINTS_PER_EVENT = 10_000  # run.metrics.logged holds at most 10,000 points
PARAMS_PER_EVENT = 1000
ACTOR = "mlflow-import"
_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "killed"}


class MlflowReadError(StudbookError):
    """The MLflow server could not be read."""


@dataclass
class Source:
    """An MLflow tracking server's REST API (urllib3)."""

    url: str
    token: str | None = None
    http: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(retries=urllib3.Retry(3, backoff_factor=0.5))
    )

    def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = urljoin(self.url.rstrip("/") + "/", "api/2.0/mlflow/" + path)
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            if method == "GET":
                r = self.http.request("GET", url, fields=_query(body), headers=headers)
            else:
                r = self.http.request(method, url, body=orjson.dumps(body), headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise MlflowReadError(f"cannot reach MLflow at {self.url}: {exc}") from exc
        if r.status >= 400:
            raise MlflowReadError(
                f"MLflow answered {r.status} to {method} {path}: {r.data[:500].decode(errors='replace')}"
            )
        doc: dict[str, Any] = orjson.loads(r.data or b"{}")
        return doc

    def pages(self, method: str, path: str, body: dict[str, Any], key: str) -> Iterator[Any]:
        token: str | None = None
        while True:
            page = self.call(method, path, {**body, **({"page_token": token} if token else {})})
            yield from page.get(key, [])
            token = page.get("next_page_token")
            if not token:
                return


def _query(body: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in body.items() if v is not None}


def _at(ms: Any) -> datetime | None:
    if ms in (None, "", 0, "0"):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _tags(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {t["key"]: str(t.get("value", "")) for t in items or []}


def experiment_events(project: str, e: dict[str, Any]) -> list[dict[str, Any]]:
    exp_id = str(e["experiment_id"])
    created = _at(e.get("creation_time")) or datetime(1970, 1, 1, tzinfo=UTC)
    docs: list[dict[str, Any]] = []
    subject = f"experiment:{exp_id}"
    if exp_id != DEFAULT_EXPERIMENT_ID:
        payload: dict[str, Any] = {"name": e["name"]}
        if e.get("artifact_location"):
            payload["artifact_location"] = e["artifact_location"]
        tags = _tags(e.get("tags"))
        if tags:
            payload["tags"] = tags
        docs.append(event("experiment.created", project, subject, payload, actor=ACTOR,
                          at=created, event_id=_id(project, "experiment", exp_id)))  # fmt: skip
        if e.get("lifecycle_stage") == "deleted":
            updated = _at(e.get("last_update_time")) or created
            docs.append(event("experiment.updated", project, subject,
                              {"lifecycle_stage": "deleted"}, actor=ACTOR, at=updated,
                              event_id=_id(project, "experiment.deleted", exp_id)))  # fmt: skip
    return docs


def _id(project: str, *parts: str) -> str:
    return derived_event_id("import-mlflow", project, *parts)


def run_events(
    project: str, run: dict[str, Any], history: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The events of one MLflow run (``history``: every point of each metric key)."""
    info, data = run["info"], run.get("data", {})
    run_id = info["run_id"]
    subject = f"run:{run_id}"
    start = _at(info.get("start_time")) or datetime(1970, 1, 1, tzinfo=UTC)
    tags = _tags(data.get("tags"))
    actor = info.get("user_id") or tags.get("mlflow.user") or ACTOR
    started: dict[str, Any] = {
        "name": info.get("run_name") or tags.get("mlflow.runName") or run_id,
        "experiment": str(info["experiment_id"]),
    }
    if tags.get("mlflow.parentRunId"):
        started["parent_run"] = tags["mlflow.parentRunId"]

    def ev(type_: str, payload: dict[str, Any], at: datetime, *key: str) -> dict[str, Any]:
        return event(type_, project, subject, payload, actor=actor, at=at,
                     event_id=_id(project, run_id, type_, *key))  # fmt: skip

    docs = [ev("run.started", started, start)]
    if tags:
        docs.append(ev("run.tags.set", {"tags": tags}, start))
    params = {p["key"]: str(p.get("value", "")) for p in data.get("params") or []}
    keys = sorted(params)
    for n in range(0, len(keys), PARAMS_PER_EVENT):
        chunk = {k: params[k] for k in keys[n : n + PARAMS_PER_EVENT]}
        docs.append(ev("run.params.logged", {"params": chunk}, start, str(n)))
    for key in sorted(history):
        points = sorted(
            history[key], key=lambda m: (int(m.get("step", 0)), int(m.get("timestamp", 0)))
        )
        for n in range(0, len(points), POINTS_PER_EVENT):
            points_chunk: list[dict[str, Any]] = [
                {"key": key, "value": float(m["value"]), "step": int(m.get("step", 0)),
                 "timestamp": rfc3339(_at(m.get("timestamp")) or start)}
                for m in points[n : n + POINTS_PER_EVENT]
            ]  # fmt: skip
            first = _at(points[n].get("timestamp")) or start
            docs.append(ev("run.metrics.logged", {"metrics": points_chunk}, first, key, str(n)))
    for n, item in enumerate((run.get("inputs") or {}).get("dataset_inputs") or []):
        _ds, _version, made = dataset_events(project, run_id, item, n, actor)
        for doc in made:
            doc["occurred_at"] = rfc3339(start)
            doc["event_id"] = _id(project, run_id, doc["type"], doc["subject"], str(n))
        docs += made
    status = _STATUS.get(info.get("status", ""))
    if status is not None:
        end = _at(info.get("end_time")) or start
        docs.append(ev("run.finished", {"status": status}, max(end, start)))
    if info.get("lifecycle_stage") == "deleted":
        end = _at(info.get("end_time")) or start
        docs.append(ev("run.lifecycle.set", {"lifecycle_stage": "deleted"}, max(end, start)))
    return docs


def metric_history(source: Source, run_id: str, key: str) -> list[dict[str, Any]]:
    return list(
        source.pages(
            "GET", "metrics/get-history",
            {"run_id": run_id, "run_uuid": run_id, "metric_key": key,
             "max_results": HISTORY_PAGE},
            "metrics",
        )
    )  # fmt: skip


def _runs_of(source: Source, experiment_id: str) -> list[dict[str, Any]]:
    body = {"experiment_ids": [experiment_id], "max_results": PAGE, "run_view_type": "ALL"}
    return list(source.pages("POST", "runs/search", body, "runs"))


@dataclass
class Imported:
    experiments: int = 0
    runs: int = 0
    models: int = 0
    versions: int = 0
    events: int = 0
    refused: list[str] = field(default_factory=list)


def _registered_models(source: Source) -> list[dict[str, Any]]:
    return list(source.pages("GET", "registered-models/search", {"max_results": PAGE},
                             "registered_models"))  # fmt: skip


def _versions_of(source: Source, name: str) -> list[dict[str, Any]]:
    escaped = name.replace("'", "\\'")
    found = list(source.pages("GET", "model-versions/search",
                              {"filter": f"name='{escaped}'", "max_results": 10_000},
                              "model_versions"))  # fmt: skip
    return sorted(found, key=lambda v: int(v["version"]))


async def _import_registry(
    source: Source, project: str, writer: Writer, principal: auth.Principal, out: Imported
) -> None:
    """Registered models, their versions (in order, so the write path numbers them as MLflow
    did in a project without versions of its own), tags, stages, aliases."""
    import asyncio

    for m in await asyncio.to_thread(_registered_models, source):
        name = m["name"]
        subject = f"model:{name}"
        created = _at(m.get("creation_timestamp")) or datetime(1970, 1, 1, tzinfo=UTC)

        def ev(
            type_: str,
            payload: dict[str, Any],
            at: datetime,
            *key: str,
            subject: str = subject,
            name: str = name,
        ) -> dict[str, Any]:
            return event(type_, project, subject, payload, actor=ACTOR, at=at,
                         event_id=_id(project, "model", name, type_, *key))  # fmt: skip

        head: dict[str, Any] = {"name": name}
        if m.get("description"):
            head["description"] = m["description"]
        docs = [ev("model.created", head, created)]
        tags = _tags(m.get("tags"))
        if tags:
            docs.append(ev("model.updated", {"tags": tags}, created, "tags"))
        outcome = await writer.submit(principal, docs)
        if isinstance(outcome, Refused):
            out.refused.append(f"registered model {name}: {outcome.message} "
                               + "; ".join(v.message for v in outcome.violations[:3]))  # fmt: skip
            continue
        out.events += len(docs)
        out.models += 1
        numbers: dict[str, int] = {}
        for v in await asyncio.to_thread(_versions_of, source, name):
            at = _at(v.get("creation_timestamp")) or created
            payload: dict[str, Any] = {"artifact_uri": v.get("source") or f"models:/{name}"}
            if v.get("run_id"):
                payload["run"] = v["run_id"]
            if v.get("description"):
                payload["description"] = v["description"]
            registered = ev("model.version.registered", payload, at, str(v["version"]))
            accepted = await writer.submit(principal, [registered])
            if isinstance(accepted, Refused):
                out.refused.append(f"model version {name}/{v['version']}: {accepted.message}")
                continue
            number = accepted.numbers.get(registered["event_id"], int(v["version"]))
            numbers[str(v["version"])] = number
            out.events += 1
            out.versions += 1
            update: dict[str, Any] = {"version": number}
            vtags = _tags(v.get("tags"))
            if vtags:
                update["tags"] = vtags
            if v.get("current_stage") and v["current_stage"] != "None":
                update["stage"] = v["current_stage"]
            if len(update) > 1:
                last = _at(v.get("last_updated_timestamp")) or at
                doc = ev("model.version.updated", update, max(last, at), str(v["version"]))
                result = await writer.submit(principal, [doc])
                if isinstance(result, Refused):
                    out.refused.append(f"model version {name}/{v['version']}: {result.message}")
                else:
                    out.events += 1
        aliases = []
        for a in m.get("aliases") or []:
            if str(a.get("version")) in numbers:
                last = _at(m.get("last_updated_timestamp")) or created
                aliases.append(ev("model.alias.set", {
                    "alias": a["alias"], "version": numbers[str(a["version"])]},
                    last, "alias", a["alias"]))  # fmt: skip
        for doc in aliases:
            result = await writer.submit(principal, [doc])
            if isinstance(result, Refused):
                out.refused.append(f"alias {name}@{doc['payload']['alias']}: {result.message}")
            else:
                out.events += 1


async def import_mlflow(source: Source, project: str, writer: Writer) -> Imported:
    """Replay everything ``source`` holds into ``project`` through ``writer``."""
    import asyncio

    principal = auth.Principal(None, ACTOR, frozenset({"write", "read"}), frozenset({project}))
    out = Imported()

    async def send(docs: list[dict[str, Any]], what: str) -> None:
        if not docs:
            return
        outcome = await writer.submit(principal, docs)
        if isinstance(outcome, Refused):
            detail = "; ".join(f"{v.path}: {v.message}" for v in outcome.violations[:5])
            out.refused.append(f"{what}: {outcome.message}{' (' + detail + ')' if detail else ''}")
        else:
            out.events += len(docs)

    experiments = await asyncio.to_thread(
        lambda: list(source.pages("POST", "experiments/search",
                                  {"max_results": PAGE, "view_type": "ALL"}, "experiments"))
    )  # fmt: skip
    for e in experiments:
        await send(experiment_events(project, e), f"experiment {e['experiment_id']}")
        out.experiments += 1
    ids = [str(e["experiment_id"]) for e in experiments]
    for exp_id in ids:
        runs = await asyncio.to_thread(_runs_of, source, exp_id)
        for run in runs:
            run_id = run["info"]["run_id"]
            keys = sorted({m["key"] for m in run.get("data", {}).get("metrics") or []})
            history: dict[str, list[dict[str, Any]]] = {}
            for key in keys:
                history[key] = await asyncio.to_thread(metric_history, source, run_id, key)
            await send(run_events(project, run, history), f"run {run_id}")
            out.runs += 1
    await _import_registry(source, project, writer, principal, out)
    return out


async def import_main(url: str, project: str, token: str | None, data_dir: Any = None) -> int:
    """The CLI: connect to Studbook's store and transport as the server does, then import."""
    from studbook_server.adapters import postgres
    from studbook_server.adapters.publish import KafkaPublisher, Publisher, StorePublisher
    from studbook_server.config import load_settings
    from studbook_server.domain import attestation
    from studbook_server.locate import resolve_database_url

    settings = load_settings()
    database_url = resolve_database_url(settings, data_dir)
    pool = await postgres.create_pool(database_url)
    kafka: KafkaPublisher | None = None
    try:
        async with pool.acquire() as con:
            await postgres.migrate(con)
            signing_key = await postgres.server_key(con, attestation.KEY_NAME)
        publisher: Publisher
        if settings.kafka_bootstrap:
            kafka = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic, signing_key,
                                   timeout_s=settings.publish_timeout_s)  # fmt: skip
            await kafka.start()
            publisher = kafka
        else:
            publisher = StorePublisher(pool)
        writer = Writer(settings, pool, publisher)
        done = await import_mlflow(Source(url, token), project, writer)
    finally:
        if kafka is not None:
            await kafka.stop()
        await pool.close()
    print(
        f"import-mlflow: {done.experiments} experiments, {done.runs} runs, {done.models} "
        f"registered models, {done.versions} model versions, {done.events} events sent to "
        f"project {project} (events already stored are kept once)",
        file=sys.stderr,
    )
    for problem in done.refused:
        print(f"import-mlflow: refused {problem}", file=sys.stderr)
    return 1 if done.refused else 0

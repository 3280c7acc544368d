"""OpenLineage events to Studbook events: pure functions, no I/O (docs/openlineage.md).

:func:`map_event` takes an event that passed :func:`~studbook_server.openlineage._spec.violations`
and returns the Studbook event documents it stands for, in the order they must be stored:

- ``openlineage.event.reported``: the event verbatim, so that nothing it carries is lost, with the
  Studbook names of its datasets (its facets become queryable from it);
- for a RunEvent: ``run.started`` (START: the job's name, the parent run, the code), ``run.tags.set``
  (job, job type, the OpenLineage tags), per input ``dataset.version.reported`` (when it names a
  version) and ``dataset.read``, per output ``dataset.version.reported`` (and, when the run ends,
  ``run.output.produced``), and ``run.finished`` (COMPLETE, FAIL with the error message, ABORT);
- for a DatasetEvent with a documentation facet: ``dataset.created`` with its description.

Event ids are UUIDv5 of the OpenLineage run id, event type, event time and a digest of the body
(and which of the derived events it is), so the same event delivered twice is stored once. The
inputs and outputs a run lists again in later events (COMPLETE after START) are new events that
change nothing already known: a run's first read of a dataset fixes the version it read, and a
version reported again only fills in what it lacked.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from studbook._naming import dataset_name, openlineage_uri
from studbook_server.domain.contract import TIME_RANGE, Violation, in_time_range

# Every id this module makes is a UUIDv5 in this namespace, of the mapping's version and the
# event's key. Bump MAPPING_VERSION when an event maps to other Studbook events than before: a
# producer re-sending an old event then gets new ids (stored anew), not a conflict (409) with
# the events the old mapping stored under the same ids.
ID_NAMESPACE = uuid.UUID("6f1c2a8e-3b4d-5e6f-8a9b-0c1d2e3f4a5b")
MAPPING_VERSION = "1"
PRODUCER = {"name": "studbook-openlineage"}

_PROJECT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UNSAFE_VERSION = re.compile(r"[^A-Za-z0-9._-]+")
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
# `ValueError: bad` (Python's last traceback line), `java.lang.IllegalStateException: bad` (a JVM
# trace's first line, perhaps after `Exception in thread "main" `).
_ERROR_CLASS = re.compile(
    r'(?:Exception in thread "[^"]*" )?((?:[A-Za-z_$][\w$]*\.)*[A-Za-z_$][\w$]*'
    r"(?:Error|Exception|Exit|Interrupt|Failure|Fault))(?::|$)"
)

STATUS = {"COMPLETE": "completed", "FAIL": "failed", "ABORT": "killed"}
MAX_URI = 2048
MAX_FACET_NAME = 250
MAX_TAGS = 1000
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
MAX_ERROR_MESSAGE = 10000


class MappingError(ValueError):
    """The event is valid OpenLineage but cannot be recorded as it is; ``violations`` say why
    (a JSON Pointer into the OpenLineage event each) and ``status`` which HTTP status fits."""

    def __init__(self, violations: Sequence[Violation], status: int = 400) -> None:
        self.violations = list(violations)
        self.status = status
        super().__init__("; ".join(f"{v.path or '/'}: {v.message}" for v in self.violations))


@dataclass(frozen=True, slots=True)
class Mapped:
    """What an OpenLineage event becomes: its project and the Studbook events, in order."""

    kind: str
    project: str
    docs: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Dataset:
    namespace: str
    name: str
    uri: str
    dataset: str  # the Studbook dataset name
    facets: Mapping[str, Any]

    def facet(self, name: str) -> Mapping[str, Any] | None:
        return _facet(self.facets, name)

    def named(self) -> dict[str, str]:
        return {"dataset": self.dataset, "uri": self.uri}


def _facet(facets: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    """A facet, unless it is absent or being deleted."""
    found = (facets or {}).get(name)
    if not isinstance(found, Mapping) or found.get("_deleted") is True:
        return None
    return found


# ------------------------------------------------------------------------------------ names


def version_id(text: str) -> str:
    """A Studbook version id for an OpenLineage ``datasetVersion``: itself when it fits the
    contract's id pattern, else a readable prefix and 12 hex digits of its SHA-256."""
    if _VERSION.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = _UNSAFE_VERSION.sub("_", text).lstrip("._-")[:115]
    return f"{safe}-{digest}" if safe else f"v-{digest}"


def project_of(namespace: str) -> str | None:
    """The project a job namespace names: the namespace itself, or its part before the first
    `/` (`churn/airflow-prod`), when that is a project id."""
    head = namespace.partition("/")[0]
    return head if _PROJECT.fullmatch(head) else None


def _namespace_problem(namespace: str) -> str:
    return (
        f"job namespace {orjson.dumps(namespace).decode()[:120]} does not name a Studbook "
        "project: use the project id (e.g. `churn`) or `<project>/<anything>` as the namespace "
        "(Airflow: AIRFLOW__OPENLINEAGE__NAMESPACE, Spark: spark.openlineage.namespace, "
        "dbt: OPENLINEAGE_NAMESPACE)"
    )


def resolve_project(event: Mapping[str, Any], kind: str, requested: str | None) -> str:
    """The project of an event: its job namespace's (RunEvent, JobEvent), else ``requested``
    (the request's `project` parameter or the token's only project). A job namespace that names
    another project than ``requested`` is a mismatch, and an error."""
    if kind == "DatasetEvent":
        if requested is None:
            raise MappingError(
                [
                    Violation(
                        0,
                        "/dataset",
                        "a DatasetEvent names no job, so no project: send it to "
                        "/api/v1/lineage?project=<project>, or with a token for one project",
                    )
                ]
            )
        return requested
    namespace = event["job"]["namespace"]
    project = project_of(namespace)
    if project is None:
        raise MappingError([Violation(0, "/job/namespace", _namespace_problem(namespace))])
    if requested is not None and project != requested:
        raise MappingError(
            [
                Violation(
                    0,
                    "/job/namespace",
                    f"job namespace `{namespace}` names project `{project}`, but the request "
                    f"is for project `{requested}`: make them agree",
                )
            ]
        )
    return project


def _datasets(event: Mapping[str, Any], side: str) -> list[_Dataset]:
    out = []
    for i, item in enumerate(event.get(side) or []):
        namespace, name = item["namespace"], item["name"]
        if not namespace or not name:
            field = "namespace" if not namespace else "name"
            raise MappingError([Violation(0, f"/{side}/{i}/{field}", f"`{field}` is empty")])
        uri = openlineage_uri(namespace, name)
        if len(uri) > MAX_URI:
            raise MappingError(
                [
                    Violation(
                        0,
                        f"/{side}/{i}/name",
                        f"namespace and name together must be at most {MAX_URI} characters "
                        f"(got {len(uri)})",
                    )
                ]
            )
        out.append(_Dataset(namespace, name, uri, dataset_name(uri), item.get("facets") or {}))
    return out


def _long_facet_names(event: Mapping[str, Any]) -> list[Violation]:
    places: list[tuple[str, Any]] = [
        ("/run/facets", (event.get("run") or {}).get("facets")),
        ("/job/facets", (event.get("job") or {}).get("facets")),
        ("/dataset/facets", (event.get("dataset") or {}).get("facets")),
    ]
    for side, own in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        for i, item in enumerate(event.get(side) or []):
            places += [(f"/{side}/{i}/facets", item.get("facets"))]
            places += [(f"/{side}/{i}/{own}", item.get(own))]
    return [
        Violation(
            0, f"{where}/{name[:40]}…", f"facet names must be at most {MAX_FACET_NAME} characters"
        )
        for where, facets in places
        if isinstance(facets, dict)
        for name in facets
        if len(name) > MAX_FACET_NAME
    ]


# ------------------------------------------------------------------------------------ times


def _event_time(event: Mapping[str, Any]) -> str:
    text = event["eventTime"]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise MappingError(
            [
                Violation(
                    0,
                    "/eventTime",
                    f"`eventTime` must be an RFC 3339 date-time with a timezone offset (got {text!r})",
                )
            ]
        )
    if not in_time_range(when):
        raise MappingError(
            [Violation(0, "/eventTime", f"`eventTime` must be a time {TIME_RANGE} (got {text!r})")]
        )
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------ facets


def _tags(
    job_facets: Mapping[str, Any], run_facets: Mapping[str, Any], job: Mapping[str, Any]
) -> dict[str, str]:
    """Run tags: the OpenLineage `tags` facets (run over job), then the job and its type."""
    tags: dict[str, str] = {}
    for facets in (job_facets, run_facets):
        for tag in (_facet(facets, "tags") or {}).get("tags") or []:
            key, value = tag.get("key"), tag.get("value")
            if isinstance(key, str) and 0 < len(key) <= MAX_TAG_KEY and isinstance(value, str):
                tags[key] = value[:MAX_TAG_VALUE]
    ours = {
        "openlineage.job.namespace": job["namespace"],
        "openlineage.job.name": job["name"],
    }
    job_type = _facet(job_facets, "jobType") or {}
    for key, field in (
        ("openlineage.job.integration", "integration"),
        ("openlineage.job.processing_type", "processingType"),
        ("openlineage.job.type", "jobType"),
    ):
        if isinstance(job_type.get(field), str):
            ours[key] = job_type[field]
    language = (_facet(job_facets, "sourceCode") or {}).get("language")
    if isinstance(language, str):
        ours["openlineage.source_code.language"] = language
    for key in ours:
        tags.pop(key, None)
    room = MAX_TAGS - len(ours)
    out = dict(list(tags.items())[:room])
    out.update({k: v[:MAX_TAG_VALUE] for k, v in ours.items() if v})
    return out


def _code(job_facets: Mapping[str, Any]) -> dict[str, Any] | None:
    """run.started's `code` from a git `sourceCodeLocation` facet (fields that fit it)."""
    location = _facet(job_facets, "sourceCodeLocation")
    if location is None or str(location.get("type", "")).lower() != "git":
        return None
    code: dict[str, Any] = {}
    repo = location.get("repoUrl") or location.get("url")
    if isinstance(repo, str) and 0 < len(repo) <= 2048:
        code["git_repo"] = repo
    commit = location.get("version")
    if isinstance(commit, str) and _COMMIT.fullmatch(commit.lower()):
        code["git_commit"] = commit.lower()
    branch = location.get("branch")
    if isinstance(branch, str) and 0 < len(branch) <= 255:
        code["git_branch"] = branch
    path = location.get("path")
    if isinstance(path, str) and 0 < len(path) <= 1024:
        code["entry_point"] = path
    return code or None


def error_type(facet: Mapping[str, Any]) -> str:
    """The exception class an `errorMessage` facet names: its message's or its stack trace's
    (last line for Python, first for the JVM) `SomeError: ...`, else `FAIL`."""
    lines = [str(facet.get("message", "")).strip()]
    trace = [ln.strip() for ln in str(facet.get("stackTrace") or "").splitlines() if ln.strip()]
    if trace:
        lines += [trace[-1], trace[0]]
    for line in lines:
        match = _ERROR_CLASS.match(line)
        if match is not None:
            return match[1][:200]
    return "FAIL"


def _schema(dataset: _Dataset) -> list[Any] | None:
    fields = (dataset.facet("schema") or {}).get("fields")
    return list(fields) if isinstance(fields, list) else None


def _version(dataset: _Dataset) -> str | None:
    found = (dataset.facet("version") or {}).get("datasetVersion")
    return version_id(found) if isinstance(found, str) and found else None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


# ------------------------------------------------------------------------------------ events


def body_digest(event: Mapping[str, Any]) -> str:
    """SHA-256 of the event's canonical JSON (keys sorted): the same for a re-delivery however
    its producer orders keys or spaces the text."""
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _id(*parts: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "|".join((MAPPING_VERSION, *parts))))


def map_event(event: Mapping[str, Any], kind: str, project: str) -> Mapped:
    """The Studbook events for a spec-valid OpenLineage ``event`` of ``kind`` in ``project``.

    Raises :class:`MappingError` for what the spec allows but Studbook cannot record (an
    eventTime without offset or out of range, an empty dataset name, overlong names).
    """
    long_names = _long_facet_names(event)
    if long_names:
        raise MappingError(long_names)
    occurred_at = _event_time(event)
    producer = str(event.get("producer") or "openlineage")[:200]
    run_id = str(uuid.UUID(event["run"]["runId"])) if kind == "RunEvent" else None
    key = (run_id or kind, str(event.get("eventType", "")), event["eventTime"], body_digest(event))
    reported_id = _id(*key, "reported")

    def doc(
        event_type: str,
        subject: str,
        payload: dict[str, Any],
        event_id: str,
        schema_version: int = 1,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": event_id,
            "type": event_type,
            "schema_version": schema_version,
            "occurred_at": occurred_at,
            "actor": producer,
            "project": project,
            "subject": subject,
            "payload": payload,
            "producer": PRODUCER,
        }
        if event_type != "openlineage.event.reported":
            out["causation_id"] = reported_id
        if run_id is not None:
            out["correlation_id"] = run_id
        return out

    inputs, outputs = _datasets(event, "inputs"), _datasets(event, "outputs")
    reported: dict[str, Any] = {"kind": kind, "event": dict(event)}
    if kind == "DatasetEvent":
        item = event["dataset"]
        if not item["namespace"] or not item["name"]:
            field = "namespace" if not item["namespace"] else "name"
            raise MappingError([Violation(0, f"/dataset/{field}", f"`{field}` is empty")])
        uri = openlineage_uri(item["namespace"], item["name"])
        if len(uri) > MAX_URI:
            raise MappingError(
                [
                    Violation(
                        0,
                        "/dataset/name",
                        f"namespace and name together must be at most {MAX_URI} characters",
                    )
                ]
            )
        target = _Dataset(
            item["namespace"], item["name"], uri, dataset_name(uri), item.get("facets") or {}
        )
        reported["dataset"] = target.named()
        docs = [
            doc("openlineage.event.reported", f"dataset:{target.dataset}", reported, reported_id)
        ]
        documentation = target.facet("documentation")
        if documentation is not None and isinstance(documentation.get("description"), str):
            created = {
                "name": target.dataset,
                "uri": target.uri,
                "description": documentation["description"][:10000],
            }
            docs.append(
                doc("dataset.created", f"dataset:{target.dataset}", created, _id(*key, "created"))
            )
        return Mapped(kind, project, docs)

    if inputs:
        reported["inputs"] = [d.named() for d in inputs]
    if outputs:
        reported["outputs"] = [d.named() for d in outputs]
    if kind == "JobEvent":
        return Mapped(
            kind,
            project,
            [doc("openlineage.event.reported", f"project:{project}", reported, reported_id)],
        )

    assert run_id is not None
    subject = f"run:{run_id}"
    job = event["job"]
    run_facets = event["run"].get("facets") or {}
    job_facets = job.get("facets") or {}
    event_type = event.get("eventType")
    docs = [doc("openlineage.event.reported", subject, reported, reported_id)]
    if event_type == "START":
        started: dict[str, Any] = {"name": job["name"][:250] or run_id}
        if _NAME.fullmatch(job["name"]):
            started["experiment"] = job["name"]
        parent = ((_facet(run_facets, "parent") or {}).get("run") or {}).get("runId")
        if isinstance(parent, str):
            started["parent_run"] = str(uuid.UUID(parent))
        code = _code(job_facets)
        if code is not None:
            started["code"] = code
        docs.append(doc("run.started", subject, started, _id(*key, "started"), schema_version=2))
    tags = _tags(job_facets, run_facets, job)
    docs.append(doc("run.tags.set", subject, {"tags": tags}, _id(*key, "tags")))
    for i, dataset in enumerate(inputs):
        version = _version(dataset)
        where = f"dataset:{dataset.dataset}"
        if version is not None:
            known: dict[str, Any] = {"version": version, "uri": dataset.uri}
            schema = _schema(dataset)
            if schema is not None:
                known["schema"] = schema
            docs.append(doc("dataset.version.reported", where, known, _id(*key, f"input:{i}")))
        read: dict[str, Any] = {"run": run_id, "uri": dataset.uri}
        if version is not None:
            read["version"] = version
        docs.append(doc("dataset.read", where, read, _id(*key, f"read:{i}")))
    status = STATUS.get(str(event_type))
    for i, dataset in enumerate(outputs):
        version = _version(dataset) or run_id
        where = f"dataset:{dataset.dataset}"
        written: dict[str, Any] = {
            "version": version,
            "uri": dataset.uri,
            "produced_by_run": run_id,
        }
        schema = _schema(dataset)
        if schema is not None:
            written["schema"] = schema
        statistics = _facet(event["outputs"][i].get("outputFacets"), "outputStatistics") or {}
        for field, name in (("row_count", "rowCount"), ("size_bytes", "size")):
            count = _count(statistics.get(name))
            if count is not None:
                written[field] = count
        docs.append(doc("dataset.version.reported", where, written, _id(*key, f"output:{i}")))
        if status is not None:  # a run's outputs, listed once: when it ends
            produced = {"uri": dataset.uri, "dataset": dataset.dataset, "version": version}
            docs.append(doc("run.output.produced", subject, produced, _id(*key, f"produced:{i}")))
    if status is not None:
        finished: dict[str, Any] = {"status": status}
        failure = _facet(run_facets, "errorMessage")
        if failure is not None and status != "completed":
            finished["error"] = {
                "type": error_type(failure),
                "message": str(failure["message"])[:MAX_ERROR_MESSAGE],
            }
        docs.append(doc("run.finished", subject, finished, _id(*key, "finished")))
    return Mapped(kind, project, docs)

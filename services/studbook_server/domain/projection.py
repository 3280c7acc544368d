"""What each event does to the read models: pure rules, no I/O.

The runner hands :func:`project` a batch of stored events (in store order) and the slice of current
state the batch needs (:class:`State`, loaded for the keys :func:`state_keys` names). It returns
:class:`Changes`: rows to write, grouped per table so the writer can use COPY / one statement per
table, and the events it rejects with their reason (they go to the dead letters).

Read this module top-down to see what happens to, say, a `run.started` event: find `_run_started`.
"""

from __future__ import annotations

import base64
import hashlib
from collections import ChainMap
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from studbook_server.domain.contract import Event

# --------------------------------------------------------------------------------- node ids


def dataset_version_node(dataset: str, version: str) -> str:
    return f"dataset_version:{dataset}@{version}"


def run_node(run_id: str) -> str:
    return f"run:{run_id}"


def model_version_node(model: str, number: int) -> str:
    return f"model_version:{model}@{number}"


def deployment_node(model: str, environment: str) -> str:
    return f"deployment:{model}/{environment}"


# ----------------------------------------------------------------------------- input / state


@dataclass(frozen=True, slots=True)
class StoredPrincipal:
    """Who sent an event, as the server authenticated them: the token's id and name. Both are
    None when the sender could not be authenticated (a record produced straight to Kafka, or a
    row stored before principals were recorded): then only the client's claim is known."""

    token_id: str | None
    name: str | None


UNVERIFIED = StoredPrincipal(None, None)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store holds it: its global position, when the store recorded it, and
    who sent it."""

    event: Event
    position: int
    recorded_at: datetime
    principal: StoredPrincipal = UNVERIFIED

    @property
    def who(self) -> str:
        """The name read models show for who did it: the authenticated principal, or the
        client's claim marked as such when nobody was authenticated."""
        return self.principal.name or f"unverified:{self.event.actor}"


@dataclass(slots=True)
class Assignment:
    """One bitemporal row of rm.assignments (an alias or a deployment holding a model version)."""

    created_position: int
    part: int
    project: str
    kind: str
    model: str
    name: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    recorded_from: datetime
    recorded_to: datetime | None
    set_by: str
    set_event: str
    target: str | None

    def covers(self, t: datetime) -> bool:
        return self.valid_from <= t and (self.valid_to is None or t < self.valid_to)


AssignmentKey = tuple[str, str, str, str]  # project, kind, model, name


@dataclass(frozen=True, slots=True)
class StateKeys:
    """Which existing state a batch needs loaded."""

    dataset_versions: frozenset[tuple[str, str, str]]  # project, dataset, version
    datasets: frozenset[tuple[str, str]]  # project, dataset (for the next version number)
    models: frozenset[tuple[str, str]]  # project, model (for version numbers)
    assignments: frozenset[AssignmentKey]
    reads: frozenset[tuple[str, str, str]] = frozenset()  # project, run, dataset (dataset.read)
    # project, model, number: the numbers the write path gave (are they taken already?)
    model_versions: frozenset[tuple[str, str, int]] = frozenset()


@dataclass(slots=True)
class State:
    """Current state for a batch's keys; :func:`project` updates it as it goes.

    Rules never mutate a value in place (they store a new one), so an event's rule can run on
    an :meth:`overlay` that is merged back only when the whole rule succeeded.
    """

    # None for a version reported without a digest (dataset.version.reported).
    dataset_version_digests: MutableMapping[tuple[str, str, str], str | None] = field(
        default_factory=dict
    )
    dataset_numbers: MutableMapping[tuple[str, str], int] = field(default_factory=dict)
    model_numbers: MutableMapping[tuple[str, str], int] = field(default_factory=dict)
    # Rows believed now (recorded_to IS NULL), per key, any order.
    assignments: MutableMapping[AssignmentKey, list[Assignment]] = field(default_factory=dict)
    # Each dataset's latest version (the highest number): its id and digest (None: reported).
    dataset_latest: MutableMapping[tuple[str, str], tuple[str, str | None]] = field(
        default_factory=dict
    )
    # The version of a dataset a run read first (dataset.read): (project, run, dataset) -> version.
    reads: MutableMapping[tuple[str, str, str], str] = field(default_factory=dict)
    # Version numbers taken, for the numbers events carry: (project, model, number) -> event id.
    versions_taken: MutableMapping[tuple[str, str, int], str] = field(default_factory=dict)

    def overlay(self) -> State:
        """A scratch view: reads fall through to this state, writes stay in the overlay."""
        return State(
            ChainMap({}, self.dataset_version_digests),
            ChainMap({}, self.dataset_numbers),
            ChainMap({}, self.model_numbers),
            ChainMap({}, self.assignments),
            ChainMap({}, self.dataset_latest),
            ChainMap({}, self.reads),
            ChainMap({}, self.versions_taken),
        )

    def _scratch(self) -> tuple[MutableMapping[Any, Any], ...]:
        maps = (
            self.dataset_version_digests, self.dataset_numbers, self.model_numbers,
            self.assignments, self.dataset_latest, self.reads, self.versions_taken,
        )  # fmt: skip
        out: list[MutableMapping[Any, Any]] = []
        for m in maps:
            assert isinstance(m, ChainMap)
            out.append(m.maps[0])
        return tuple(out)

    def absorb(self, overlay: State) -> None:
        """Keep what a successful rule wrote to ``overlay``, which is then empty again."""
        mine: tuple[MutableMapping[Any, Any], ...] = (
            self.dataset_version_digests, self.dataset_numbers, self.model_numbers,
            self.assignments, self.dataset_latest, self.reads, self.versions_taken,
        )  # fmt: skip
        for into, written in zip(mine, overlay._scratch(), strict=True):
            if written:
                into.update(written)
                written.clear()

    def forget(self) -> None:
        """Drop what a refused rule wrote to this overlay."""
        for written in self._scratch():
            written.clear()


# ------------------------------------------------------------------------------------ output


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """Microseconds since the Unix epoch (exact, unlike ``timestamp()``)."""
    return (at - EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(slots=True)
class SeriesPoints:
    """One series' points in a batch, in the order they were logged (columns, not rows: the
    writer cuts them into chunks of rm.metric_chunks without touching each point again).
    Times are microseconds since the Unix epoch."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ats: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def summary(self) -> MetricSummary:
        """The latest point by (step, time, position), later logged on ties; min, max, count."""
        steps = self.steps
        top = max(steps)
        if steps.count(top) == 1:
            i = steps.index(top)
        else:
            ats, positions = self.ats, self.positions
            i = max(
                (j for j, step in enumerate(steps) if step == top),
                key=lambda j: (ats[j], positions[j], j),
            )
        values = self.values
        return MetricSummary(
            values[i], top, from_micros(self.ats[i]), self.positions[i], min(values),
            max(values), len(values),
        )  # fmt: skip

    def extend(self, other: SeriesPoints) -> None:
        self.steps.extend(other.steps)
        self.values.extend(other.values)
        self.ats.extend(other.ats)
        self.positions.extend(other.positions)


class MetricPoints(dict[tuple[str, str, str], SeriesPoints]):
    """A batch's metric points by series (project, run, key), series in order of their first
    point; ``len`` is the number of points."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        # Any series, even of a rule that failed before counting its points (then discarded).
        return dict.__len__(self) > 0

    def clear(self) -> None:
        super().clear()
        self.count = 0

    def absorb(self, other: MetricPoints) -> None:
        for series, points in other.items():
            mine = self.get(series)
            if mine is None:
                self[series] = points
            else:
                mine.extend(points)
        self.count += other.count


@dataclass(slots=True)
class MetricSummary:
    """The batch's contribution to one (run, key) row of rm.run_metrics."""

    value: float
    step: int
    at: datetime
    position: int
    min_value: float
    max_value: float
    points: int


@dataclass(frozen=True, slots=True)
class Redaction:
    event: StoredEvent
    fields: tuple[str, ...]
    reason: str


Row = tuple[Any, ...]


@dataclass(slots=True)
class Changes:
    """Row changes for one batch, per table. Tuples follow the column lists in the writer."""

    # Projects, datasets and models exist once anything names them; the row's last element says
    # whether it came from the explicit `*.created` event (which then fills in the description).
    projects: dict[str, Row] = field(default_factory=dict)
    runs_started: list[Row] = field(default_factory=list)
    runs_finished: list[Row] = field(default_factory=list)
    params: dict[tuple[str, str, str], Row] = field(default_factory=dict)
    tags_set: dict[tuple[str, str, str], Row] = field(default_factory=dict)
    tags_removed: set[tuple[str, str, str]] = field(default_factory=set)
    metric_points: MetricPoints = field(default_factory=MetricPoints)
    # Filled from metric_points at the end of `project`.
    metric_summaries: dict[tuple[str, str, str], MetricSummary] = field(default_factory=dict)
    outputs: list[Row] = field(default_factory=list)
    datasets: dict[tuple[str, str], Row] = field(default_factory=dict)
    dataset_versions: list[Row] = field(default_factory=list)
    # Versions reported without a digest (new rows), and later reports filling in their gaps.
    dataset_versions_reported: list[Row] = field(default_factory=list)
    dataset_versions_filled: list[Row] = field(default_factory=list)
    models: dict[tuple[str, str], Row] = field(default_factory=dict)
    model_versions: list[Row] = field(default_factory=list)
    assignments_new: list[Assignment] = field(default_factory=list)
    # Existing rows whose belief ended: (created_position, part, recorded_to).
    assignments_closed: list[tuple[int, int, datetime]] = field(default_factory=list)
    approvals: list[Row] = field(default_factory=list)
    annotations: list[Row] = field(default_factory=list)
    edges: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)
    # OpenLineage facets, the newest report of each (project, node, scope, facet name).
    facets: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)
    redactions: list[Redaction] = field(default_factory=list)
    # MLflow's facts (docs/mlflow.md): stored artifacts (the newest store of each (project,
    # path)), logged models, and updates applied in event order after the rows they update.
    artifacts: dict[tuple[str, str], Row] = field(default_factory=dict)
    logged_models: list[Row] = field(default_factory=list)
    logged_model_updates: list[Row] = field(default_factory=list)
    model_updates: list[Row] = field(default_factory=list)
    version_updates: list[Row] = field(default_factory=list)
    # MLflow tracking (docs/mlflow.md): experiments, their updates and run deletions, applied in
    # event order after the rows they update.
    experiments: list[Row] = field(default_factory=list)
    experiment_updates: list[Row] = field(default_factory=list)
    run_lifecycle: list[Row] = field(default_factory=list)
    rejected: list[tuple[StoredEvent, str]] = field(default_factory=list)
    last_position: int = 0

    def absorb(self, one: Changes) -> None:
        """Move the changes of one event (computed on its own) after this batch's so far,
        leaving ``one`` empty for the next event."""
        if one.projects:
            self.projects.update(one.projects)
            one.projects.clear()
        for listed in _APPENDED:
            rows = getattr(one, listed)
            if rows:
                getattr(self, listed).extend(rows)
                rows.clear()
        if one.assignments_closed:
            # A row this batch made and a later event closes is written closed; others get an
            # UPDATE.
            made = {(a.created_position, a.part): a for a in self.assignments_new}
            for created_position, part, recorded_to in one.assignments_closed:
                closed = made.get((created_position, part))
                if closed is not None:
                    closed.recorded_to = recorded_to
                else:
                    self.assignments_closed.append((created_position, part, recorded_to))
            one.assignments_closed.clear()
        if one.assignments_new:
            self.assignments_new.extend(one.assignments_new)
            one.assignments_new.clear()
        if one.params:
            self.params.update(one.params)
            one.params.clear()
        if one.tags_removed:
            for tag in one.tags_removed:
                self.tags_set.pop(tag, None)
                self.tags_removed.add(tag)
            one.tags_removed.clear()
        if one.tags_set:
            for tag, row in one.tags_set.items():
                self.tags_removed.discard(tag)
                self.tags_set[tag] = row
            one.tags_set.clear()
        if one.metric_points:
            self.metric_points.absorb(one.metric_points)
            one.metric_points.clear()
        # An explicit `*.created` row replaces an implied one; an implied one never replaces.
        for named, theirs in ((self.datasets, one.datasets), (self.models, one.models)):
            if theirs:
                for named_key, row in theirs.items():
                    if row[-1]:
                        named[named_key] = row
                    else:
                        named.setdefault(named_key, row)
                theirs.clear()
        if one.artifacts:
            self.artifacts.update(one.artifacts)
            one.artifacts.clear()
        if one.edges:
            for edge, row in one.edges.items():
                self.edges.setdefault(edge, row)
            one.edges.clear()
        if one.facets:
            for facet, row in one.facets.items():
                kept = self.facets.get(facet)
                if kept is None or _facet_order(row) >= _facet_order(kept):
                    self.facets[facet] = row
            one.facets.clear()

    def discard(self) -> None:
        """Forget everything (the changes of a refused event)."""
        for name in _ALL_FIELDS:
            value = getattr(self, name)
            if value:
                value.clear()


_APPENDED = (
    "runs_started", "runs_finished", "outputs", "dataset_versions",
    "dataset_versions_reported", "dataset_versions_filled",
    "model_versions", "approvals", "annotations", "redactions", "rejected",
    "logged_models", "logged_model_updates", "model_updates", "version_updates",
    "experiments", "experiment_updates", "run_lifecycle",
)  # fmt: skip


_ALL_FIELDS = (
    *_APPENDED, "projects", "params", "tags_set", "tags_removed", "metric_points",
    "metric_summaries", "datasets",
    "models", "assignments_new", "assignments_closed", "edges", "facets", "artifacts",
)  # fmt: skip


def _facet_order(row: Row) -> tuple[Any, ...]:
    """Which report of a facet is newer: by the OpenLineage event time, then store position."""
    return (row[5], row[6])


class Rejected(Exception):
    """An event that is valid JSON-wise but cannot be applied; the message says why."""


# ------------------------------------------------------------------------------------ rules


def state_keys(events: Iterable[StoredEvent]) -> StateKeys:
    """The existing state :func:`project` will consult for these events."""
    versions: set[tuple[str, str, str]] = set()
    datasets: set[tuple[str, str]] = set()
    models: set[tuple[str, str]] = set()
    assignments: set[AssignmentKey] = set()
    reads: set[tuple[str, str, str]] = set()
    numbered: set[tuple[str, str, int]] = set()
    for stored in events:
        e = stored.event
        p = e.payload
        # `.get`: a payload missing a field is refused by its rule in `project`, not here.
        if e.type in ("dataset.version.created", "dataset.version.reported"):
            versions.add((e.project, e.subject_key, str(p.get("version"))))
            datasets.add((e.project, e.subject_key))
        elif e.type == "dataset.read":
            datasets.add((e.project, e.subject_key))
            reads.add((e.project, str(p.get("run")), e.subject_key))
        elif e.type.startswith("model."):
            models.add((e.project, e.subject_key))
            if e.type == "model.version.registered" and isinstance(p.get("version"), int):
                numbered.add((e.project, e.subject_key, p["version"]))
            if e.type in ("model.alias.set", "model.alias.removed"):
                assignments.add((e.project, "alias", e.subject_key, str(p.get("alias"))))
            elif e.type in ("model.version.deployed", "model.version.undeployed"):
                assignments.add((e.project, "deployment", e.subject_key, str(p.get("environment"))))
    return StateKeys(
        frozenset(versions), frozenset(datasets), frozenset(models), frozenset(assignments),
        frozenset(reads), frozenset(numbered),
    )  # fmt: skip


def project(events: Iterable[StoredEvent], state: State) -> Changes:
    """Apply a batch of stored events, in order, to ``state``; return the row changes.

    Each event's rule runs on its own scratch changes and a scratch overlay of ``state``, merged
    only when the rule succeeds: a refused event changes nothing (no version number used up, no
    partial metric batch), so the outcome never depends on where batch boundaries fall.
    """
    changes = Changes()
    # One scratch pair per batch, emptied after each event (merged, or dropped if refused).
    scratch, overlay = Changes(), state.overlay()
    for stored in events:
        e = stored.event
        changes.last_position = stored.position
        if e.project not in changes.projects:
            # Every project that has events exists; project.created adds its description.
            changes.projects[e.project] = (
                e.project, None, stored.who, e.occurred_at, stored.recorded_at, False
            )  # fmt: skip
        rule = _RULES.get(e.type)
        if rule is None:  # pragma: no cover - the contract admits only types listed in _RULES
            changes.rejected.append((stored, f"no projection rule for event type `{e.type}`"))
            continue
        try:
            rule(stored, overlay, scratch)
        except Rejected as exc:
            overlay.forget()
            scratch.discard()
            changes.rejected.append((stored, str(exc)))
            continue
        except Exception as exc:
            # A payload the schema admits but a rule cannot use (e.g. a field erased by a
            # redaction, a value out of a type's range): that event is refused, never the batch.
            overlay.forget()
            scratch.discard()
            changes.rejected.append((stored, f"cannot be applied: {type(exc).__name__}: {exc}"))
            continue
        state.absorb(overlay)
        changes.absorb(scratch)
    for series, points in changes.metric_points.items():
        changes.metric_summaries[series] = points.summary()
    return changes


def _project_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event  # the contract already checked that the subject is `project:<project>`
    ch.projects[e.project] = (
        e.project,
        e.payload.get("description"),
        s.who,
        e.occurred_at,
        s.recorded_at,
        True,
    )


def _dataset_row(s: StoredEvent, description: str | None, uri: str | None, explicit: bool) -> Row:
    e = s.event
    return (
        e.project, e.subject_key, description, uri, s.who, e.occurred_at, s.recorded_at, explicit
    )  # fmt: skip


def _dataset_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    if e.payload["name"] != e.subject_key:
        raise Rejected(
            f"`dataset.created` name `{e.payload['name']}` differs from its subject `{e.subject}`"
        )
    ch.datasets[(e.project, e.subject_key)] = _dataset_row(
        s, e.payload.get("description"), e.payload.get("uri"), True
    )


def _dataset_version_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    dataset, version = e.subject_key, p["version"]
    key = (e.project, dataset, version)
    if key in state.dataset_version_digests:
        known = state.dataset_version_digests[key]
        if known is None:
            # A version a pipeline reported, now hashed: it keeps its number, and learns its digest.
            state.dataset_version_digests[key] = p["digest"]
            latest = state.dataset_latest.get((e.project, dataset))
            if latest is not None and latest[0] == version:
                state.dataset_latest[(e.project, dataset)] = (version, p["digest"])
            ch.dataset_versions_filled.append(
                (
                    e.project, dataset, version, p.get("schema"), p.get("row_count"),
                    p.get("size_bytes"), p["digest"], p.get("produced_by_run"),
                )
            )  # fmt: skip
            return
        if known == p["digest"]:
            return  # the same content registered again: nothing new
        raise Rejected(
            f"dataset version `{dataset}@{version}` already exists with digest {known}; "
            f"a version id names one content (got {p['digest']}): choose a new version id"
        )
    state.dataset_version_digests[key] = p["digest"]
    number = state.dataset_numbers.get((e.project, dataset), 0) + 1
    state.dataset_numbers[(e.project, dataset)] = number
    latest = state.dataset_latest.get((e.project, dataset))
    state.dataset_latest[(e.project, dataset)] = (version, p["digest"])
    # A version implies its dataset; an explicit dataset.created (earlier or later) wins.
    ch.datasets.setdefault((e.project, dataset), _dataset_row(s, None, None, False))
    parents = [{"dataset": r["dataset"], "version": r["version"]} for r in p.get("parents", [])]
    run = p.get("produced_by_run")
    if not parents and run is None and latest is not None and latest[1] is None:
        # Training code hashing the data a pipeline reported (the dataset its uri names, e.g.
        # `dataset_version(uri=...)`): the copy derives from the pipeline's latest version.
        parents = [{"dataset": dataset, "version": latest[0]}]
    ch.dataset_versions.append(
        (
            e.project,
            dataset,
            version,
            number,
            p["uri"],
            p["digest"],
            p.get("size_bytes"),
            p.get("row_count"),
            p.get("schema"),
            parents,
            run,
            s.who,
            e.occurred_at,
            s.recorded_at,
            p.get("source"),
        )
    )
    node = dataset_version_node(dataset, version)
    for parent in parents:
        _edge(ch, s, "derived", dataset_version_node(parent["dataset"], parent["version"]), node)
    if run is not None:
        _edge(ch, s, "output", run_node(run), node)


# The version a read links to when it names none and the dataset has no version yet: the data
# as it was before any writer reported it.
UNVERSIONED = "unversioned"


def _reported_version(
    s: StoredEvent, state: State, ch: Changes, dataset: str, version: str, uri: str
) -> bool:
    """Make ``dataset@version`` a version without a digest (size, rows, schema and producer
    from the event's payload, when it has them) unless it exists; whether it is new."""
    e, p = s.event, s.event.payload
    key = (e.project, dataset, version)
    if key in state.dataset_version_digests:
        return False
    state.dataset_version_digests[key] = None
    number = state.dataset_numbers.get((e.project, dataset), 0) + 1
    state.dataset_numbers[(e.project, dataset)] = number
    state.dataset_latest[(e.project, dataset)] = (version, None)
    # A pipeline's version is a state of the dataset itself, so the dataset lives at its uri.
    ch.datasets.setdefault((e.project, dataset), _dataset_row(s, None, uri, False))
    ch.dataset_versions_reported.append(
        (
            e.project, dataset, version, number, uri, p.get("size_bytes"), p.get("row_count"),
            p.get("schema"), [], p.get("produced_by_run"), s.who, e.occurred_at, s.recorded_at,
        )
    )  # fmt: skip
    return True


def _dataset_version_reported(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    dataset, version = e.subject_key, p["version"]
    run = p.get("produced_by_run")
    if not _reported_version(s, state, ch, dataset, version, p["uri"]):
        # Reported again (a run's COMPLETE after its START): fill in what the report adds.
        ch.dataset_versions_filled.append(
            (
                e.project, dataset, version, p.get("schema"), p.get("row_count"),
                p.get("size_bytes"), None, run,
            )
        )  # fmt: skip
    if run is not None:
        _edge(ch, s, "output", run_node(run), dataset_version_node(dataset, version))


def _dataset_read(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    dataset = e.subject_key
    read = (e.project, p["run"], dataset)
    if read in state.reads:
        return  # a run's first read of a dataset says which version it read (OpenLineage
        # integrations list a run's inputs again at COMPLETE, by when a new version may exist)
    version = p.get("version")
    if version is None:
        # Store order is Kafka's order within the dataset's partition: a write reported before
        # this read is known here, whichever partition the runs' own events took.
        latest = state.dataset_latest.get((e.project, dataset))
        version = latest[0] if latest is not None else UNVERSIONED
        if latest is None:
            _reported_version(s, state, ch, dataset, version, p["uri"])
    state.reads[read] = version
    ch.datasets.setdefault((e.project, dataset), _dataset_row(s, None, p["uri"], False))
    _edge(ch, s, "input", dataset_version_node(dataset, version), run_node(p["run"]), p.get("role"))


def _openlineage_event_reported(s: StoredEvent, state: State, ch: Changes) -> None:
    """Keep the event's facets, each under the run or dataset it describes (the event itself
    stays in the store, verbatim): a run's `run` and `job` facets and its datasets' input and
    output facets (scope `input:<dataset>`, `output:<dataset>`), and every dataset's facets. A
    facet sent with `_deleted: true` is removed."""
    e, p = s.event, s.event.payload
    event = p.get("event") or {}  # `event` may have been erased by a redaction

    def keep(node: str, scope: str, facets: object) -> None:
        if not isinstance(facets, dict):
            return
        for name, value in facets.items():
            deleted = isinstance(value, dict) and value.get("_deleted") is True
            row = (
                e.project, node, scope, name, None if deleted else value, e.occurred_at,
                s.position, e.event_id,
            )  # fmt: skip
            key = (e.project, node, scope, name)
            mine = ch.facets.get(key)
            if mine is None or _facet_order(row) >= _facet_order(mine):
                ch.facets[key] = row

    def dataset(named: dict[str, str], facets: object) -> str:
        name = named["dataset"]
        # The event's subject is the run (or project): the row names the dataset itself.
        row = (e.project, name, None, named["uri"], s.who, e.occurred_at, s.recorded_at, False)
        ch.datasets.setdefault((e.project, name), row)
        keep(f"dataset:{name}", "dataset", facets)
        return name

    runs = p["kind"] == "RunEvent"
    if runs:
        keep(e.subject, "run", (event.get("run") or {}).get("facets"))
        keep(e.subject, "job", (event.get("job") or {}).get("facets"))
    for side, own in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        sent = event.get(side) or []
        for item, named in zip(sent, p.get(side) or [], strict=False):
            name = dataset(named, item.get("facets") if isinstance(item, dict) else None)
            if runs and isinstance(item, dict):
                keep(e.subject, f"{side[:-1]}:{name}", item.get(own))
    if "dataset" in p:
        dataset(p["dataset"], (event.get("dataset") or {}).get("facets"))


def _edge(
    ch: Changes, s: StoredEvent, edge_type: str, src: str, dst: str, role: str | None = None
) -> None:
    e = s.event
    key = (e.project, src, dst, edge_type)
    # The first claim of an edge keeps its times; repeating it adds nothing.
    ch.edges.setdefault(
        key, (e.project, edge_type, src, dst, role, e.occurred_at, s.recorded_at, e.event_id)
    )


def _run_started(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    code = p.get("code")
    ch.runs_started.append(
        (
            e.project,
            e.subject_key,
            p["name"],
            p.get("experiment"),
            p.get("parent_run"),
            s.who,
            e.occurred_at,
            s.recorded_at,
            code,
            code.get("git_commit") if code else None,
            p.get("environment"),
        )
    )
    rerun = p.get("reproduces")
    if rerun is not None:
        # A re-run by `studbook reproduce`: exact (same params) or derived (params changed).
        kind = "derived_run" if rerun.get("derived") else "reproduced"
        _edge(ch, s, kind, run_node(rerun["run"]), run_node(e.subject_key))


def _run_diff_recorded(s: StoredEvent, state: State, ch: Changes) -> None:
    """The diff stays in the event store, where `Run.codeDiff` reads it: no copy in the read
    models, so a redaction of `diff` erases it everywhere. Only its digest is checked here."""
    p = s.event.payload
    if not {"diff", "encoding", "size_bytes"} <= p.keys():
        return  # erased by a redaction (the event store replays it so on a rebuild)
    data = (
        base64.b64decode(p["diff"], validate=True)
        if p["encoding"] == "base64"
        else p["diff"].encode()
    )
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if found != p["digest"] or len(data) != p["size_bytes"]:
        raise Rejected(
            f"`run.diff.recorded`: the diff's content ({len(data)} bytes, {found}) does not "
            f"match its `digest` {p['digest']} and `size_bytes` {p['size_bytes']}"
        )


def _run_params_logged(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    for key, value in e.payload["params"].items():
        ch.params[(e.project, e.subject_key, key)] = (e.project, e.subject_key, key, value)


def _run_metrics_logged(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    position = s.position
    parse = datetime.fromisoformat
    # Points logged together share their timestamp text: parse each distinct one once.
    last_ts: str | None = None
    default_us = last_us = micros(e.occurred_at)
    metrics = e.payload["metrics"]
    by_key: dict[str, SeriesPoints] = {}
    for m in metrics:
        key = m["key"]
        value = float(m["value"])
        step = m.get("step", 0)
        ts = m.get("timestamp")
        if ts is None:
            us = default_us
        elif ts == last_ts:
            us = last_us
        else:
            us = last_us = micros(parse(ts))
            last_ts = ts
        points = by_key.get(key)
        if points is None:
            points = by_key[key] = SeriesPoints()
        points.steps.append(step)
        points.values.append(value)
        points.ats.append(us)
    series = ch.metric_points
    for key, points in by_key.items():
        points.positions = [position] * len(points.steps)
        series[(e.project, e.subject_key, key)] = points
    series.count += len(metrics)


def _run_tags_set(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    for key, value in e.payload["tags"].items():
        k = (e.project, e.subject_key, key)
        if value is None:
            ch.tags_set.pop(k, None)
            ch.tags_removed.add(k)
        else:
            ch.tags_removed.discard(k)
            ch.tags_set[k] = (e.project, e.subject_key, key, value)


def _run_input_used(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    src = dataset_version_node(p["dataset"], p["version"])
    _edge(ch, s, "input", src, run_node(e.subject_key), p["role"])
    # A read too, for a later dataset.read of the same batch (the database answers the same from
    # the input edge once it is stored).
    state.reads.setdefault((e.project, e.subject_key, p["dataset"]), p["version"])


def _run_output_produced(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    dataset, version = p.get("dataset"), p.get("version")
    ch.outputs.append(
        (
            e.project,
            e.subject_key,
            p["uri"],
            p.get("digest"),
            p.get("name"),
            dataset,
            version,
            e.occurred_at,
            e.event_id,
        )
    )
    if dataset is not None and version is not None:
        _edge(ch, s, "output", run_node(e.subject_key), dataset_version_node(dataset, version))


def _run_finished(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.runs_finished.append(
        (
            e.project,
            e.subject_key,
            p["status"],
            s.who,
            e.occurred_at,
            s.recorded_at,
            p.get("error"),
        )
    )


def _run_lifecycle_set(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    ch.run_lifecycle.append(
        (e.project, e.subject_key, e.payload["lifecycle_stage"], e.occurred_at, s.position)
    )


def _experiment_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.experiments.append(
        (
            e.project, e.subject_key, p["name"], p.get("artifact_location"), p.get("tags", {}),
            s.who, e.occurred_at, s.recorded_at,
        )
    )  # fmt: skip


def _experiment_updated(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.experiment_updates.append(
        (
            e.project, e.subject_key, p.get("name"), p.get("lifecycle_stage"), p.get("tags"),
            e.occurred_at,
        )
    )  # fmt: skip


def _model_row(s: StoredEvent, description: str | None, explicit: bool) -> Row:
    e = s.event
    return (e.project, e.subject_key, description, s.who, e.occurred_at, s.recorded_at, explicit)


def _model_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e = s.event
    if e.payload["name"] != e.subject_key:
        raise Rejected(
            f"`model.created` name `{e.payload['name']}` differs from its subject `{e.subject}`"
        )
    ch.models[(e.project, e.subject_key)] = _model_row(s, e.payload.get("description"), True)
    # A name created again after `model.updated` deleted it is back (its old versions stay
    # deleted); its description is set in event order with those of `model.updated`, so the
    # outcome does not depend on which batch either lands in.
    ch.model_updates.append(
        (e.project, e.subject_key, e.payload.get("description"), True, None, False, True,
         e.occurred_at, 0)
    )  # fmt: skip


def _model_version_registered(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    model = e.subject_key
    latest = state.model_numbers.get((e.project, model), 0)
    # The write path numbered it when it accepted it; events that did not pass it are numbered
    # after the highest number known. Numbers may arrive out of order (two requests at once).
    number = p.get("version") or latest + 1
    taken = state.versions_taken.get((e.project, model, number))
    if taken is not None:
        raise Rejected(
            f"version {number} of model `{model}` is taken (by event {taken}): a number is "
            "the server's to give, once"
        )
    state.model_numbers[(e.project, model)] = max(latest, number)
    state.versions_taken[(e.project, model, number)] = e.event_id
    ch.models.setdefault((e.project, model), _model_row(s, None, False))
    run = p.get("run")
    ch.model_versions.append(
        (
            e.project,
            model,
            number,
            run,
            p["artifact_uri"],
            p.get("digest"),
            p.get("framework"),
            p.get("signature"),
            p.get("description"),
            s.who,
            e.occurred_at,
            s.recorded_at,
            e.event_id,
            s.principal.token_id,
        )
    )
    if run is not None:
        _edge(ch, s, "trained", run_node(run), model_version_node(model, number))


def _require_version(s: StoredEvent, state: State, version: int) -> None:
    e = s.event
    latest = state.model_numbers.get((e.project, e.subject_key), 0)
    if not 1 <= version <= latest:
        have = f"its latest is version {latest}" if latest else "it has no versions"
        raise Rejected(
            f"`{e.type}` names version {version} of model `{e.subject_key}`, but {have}: "
            "was `model.version.registered` sent first?"
        )


def _assign(
    s: StoredEvent, state: State, ch: Changes, kind: str, name: str, version: int | None
) -> None:
    """Set (``version``) or clear (``None``) ``name`` from the event's occurred time on.

    Rows the store believes stay untouched except for ``recorded_to``: the row covering the event's
    time is closed and replaced by its part before that time, and a new row runs from the event's
    time to the next change already known (if any), so late-recorded events land in the past.
    """
    e = s.event
    t, k = e.occurred_at, s.recorded_at
    key = (e.project, kind, e.subject_key, name)
    current = list(state.assignments.get(key, ()))  # a new list: the rule may yet be refused
    covering = next((r for r in current if r.covers(t)), None)
    if covering is None:
        if version is None:
            what = "alias" if kind == "alias" else "deployment to"
            raise Rejected(
                f"`{e.type}`: model `{e.subject_key}` has no {what} `{name}` at {t.isoformat()}"
            )
        later = [r.valid_from for r in current if r.valid_from > t]
        valid_to = min(later) if later else None
    else:
        valid_to = covering.valid_to
        current.remove(covering)
        # Applied when the event's changes are merged (Changes.absorb): the rule may yet fail.
        ch.assignments_closed.append((covering.created_position, covering.part, k))
        if covering.valid_from < t:
            head = Assignment(
                s.position, 1, e.project, kind, e.subject_key, name, covering.version,
                covering.valid_from, t, k, None, covering.set_by, covering.set_event,
                covering.target,
            )  # fmt: skip
            current.append(head)
            ch.assignments_new.append(head)
    if version is not None:
        row = Assignment(
            s.position, 0, e.project, kind, e.subject_key, name, version, t, valid_to, k, None,
            s.who, e.event_id, e.payload.get("target"),
        )  # fmt: skip
        current.append(row)
        ch.assignments_new.append(row)
    state.assignments[key] = current


def _model_alias_set(s: StoredEvent, state: State, ch: Changes) -> None:
    p = s.event.payload
    _require_version(s, state, p["version"])
    _assign(s, state, ch, "alias", p["alias"], p["version"])


def _model_alias_removed(s: StoredEvent, state: State, ch: Changes) -> None:
    _assign(s, state, ch, "alias", s.event.payload["alias"], None)


def _model_version_deployed(s: StoredEvent, state: State, ch: Changes) -> None:
    p = s.event.payload
    _require_version(s, state, p["version"])
    _assign(s, state, ch, "deployment", p["environment"], p["version"])


def _model_version_undeployed(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    key = (e.project, "deployment", e.subject_key, p["environment"])
    held = next((r for r in state.assignments.get(key, []) if r.covers(e.occurred_at)), None)
    if held is not None and held.version != p["version"]:
        raise Rejected(
            f"`model.version.undeployed` names version {p['version']} of `{e.subject_key}` in "
            f"`{p['environment']}`, but version {held.version} is deployed there"
        )
    _assign(s, state, ch, "deployment", p["environment"], None)


def _decision(decision: str) -> Callable[[StoredEvent, State, Changes], None]:
    def rule(s: StoredEvent, state: State, ch: Changes) -> None:
        e, p = s.event, s.event.payload
        _require_version(s, state, p["version"])
        ch.approvals.append(
            (
                e.event_id,
                e.project,
                e.subject_key,
                p["version"],
                decision,
                s.who,
                p.get("comment"),
                p.get("evidence", []),
                e.occurred_at,
                s.recorded_at,
                e.actor,
                s.principal.token_id,
            )
        )

    return rule


def _annotation_added(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.annotations.append(
        (
            e.event_id,
            e.project,
            e.subject,
            p["text"],
            p.get("labels", {}),
            s.who,
            e.occurred_at,
            s.recorded_at,
        )
    )


def _artifact_stored(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.artifacts[(e.project, p["path"])] = (
        e.project, p["path"], e.subject, p["uri"], p["size_bytes"], p["digest"], s.who,
        e.occurred_at, s.recorded_at, e.event_id, s.position,
    )  # fmt: skip


def _logged_model_created(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.logged_models.append(
        (
            e.project, e.subject_key, p["name"], p["experiment"], p.get("run"), p["artifact_uri"],
            p["status"], p.get("model_type"), p.get("params", {}), p.get("tags", {}), s.who,
            e.occurred_at, e.occurred_at, s.recorded_at, s.position,
        )
    )  # fmt: skip


def _logged_model_updated(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.logged_model_updates.append(
        (e.project, e.subject_key, p.get("status"), p.get("tags"), e.occurred_at, s.position)
    )


def _model_updated(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    ch.models.setdefault((e.project, e.subject_key), _model_row(s, None, False))
    ch.model_updates.append(
        (
            e.project, e.subject_key, p.get("description"), "description" in p, p.get("tags"),
            bool(p.get("deleted")), False, e.occurred_at,
            # the versions a deletion covers: those numbered by then
            state.model_numbers.get((e.project, e.subject_key), 0),
        )
    )  # fmt: skip


def _model_version_updated(s: StoredEvent, state: State, ch: Changes) -> None:
    e, p = s.event, s.event.payload
    _require_version(s, state, p["version"])
    ch.version_updates.append(
        (
            e.project, e.subject_key, p["version"], p.get("description"), "description" in p,
            p.get("tags"), p.get("stage"), bool(p.get("deleted")), e.occurred_at,
        )
    )  # fmt: skip


# Fields that identify things or carry lineage: erasing them, or anything inside them, would
# break the history itself. Redaction is for personal data (hosts, repository URLs, free text).
NOT_REDACTABLE = frozenset({
    "name", "version", "digest", "dataset", "run", "alias", "environment", "status", "metrics",
    "params", "tags", "role", "parents", "produced_by_run", "artifact_uri", "uri", "parent_run",
    "fields", "reproduces",
    # artifact.stored, logged_model.*: where a file is and what it belongs to
    "path", "logged_model", "experiment", "size_bytes",
    # model.updated, model.version.updated: lifecycle facts the read models act on
    "deleted", "stage",
    # experiment.updated, run.lifecycle.set: whether it is deleted, which the read models keep
    "lifecycle_stage",
    # openlineage.event.reported: what kind of OpenLineage event it keeps
    "kind",
})  # fmt: skip


# Fields nothing inside of which may be erased either: lineage references, and values the read
# models keep (a redaction erases stored events, not these tables).
NOT_REDACTABLE_WITHIN = frozenset({
    "parents", "metrics", "params", "tags", "reproduces",
    # openlineage.event.reported: which dataset a DatasetEvent names, a RunEvent's datasets
    "dataset", "inputs", "outputs",
})  # fmt: skip


def refused_redactions(fields: Iterable[str]) -> list[str]:
    """The dotted paths a redaction may not erase: an identifying field (``parents``,
    ``digest``), anything within lineage references or kept values (``parents.0``,
    ``metrics.0.value``, ``params.lr``), array items, and paths with empty steps."""
    refused = []
    for f in fields:
        steps = f.split(".")
        if (
            (len(steps) == 1 and f in NOT_REDACTABLE)
            or steps[0] in NOT_REDACTABLE_WITHIN
            or any(step == "" or step.isdigit() for step in steps)
        ):
            refused.append(f)
    return sorted(refused)


def _subject_redacted(s: StoredEvent, state: State, ch: Changes) -> None:
    p = s.event.payload
    refused = refused_redactions(p["fields"])
    if refused:
        raise Rejected(
            f"`subject.redacted` may not erase {', '.join(refused)}: they identify the subject or "
            "carry its lineage; redact personal fields such as `environment.host` instead"
        )
    ch.redactions.append(Redaction(s, tuple(p["fields"]), p["reason"]))


_RULES: dict[str, Callable[[StoredEvent, State, Changes], None]] = {
    "project.created": _project_created,
    "dataset.created": _dataset_created,
    "dataset.version.created": _dataset_version_created,
    "dataset.version.reported": _dataset_version_reported,
    "dataset.read": _dataset_read,
    "run.started": _run_started,
    "run.params.logged": _run_params_logged,
    "run.metrics.logged": _run_metrics_logged,
    "run.tags.set": _run_tags_set,
    "run.input.used": _run_input_used,
    "run.output.produced": _run_output_produced,
    "run.finished": _run_finished,
    "run.diff.recorded": _run_diff_recorded,
    "run.lifecycle.set": _run_lifecycle_set,
    "experiment.created": _experiment_created,
    "experiment.updated": _experiment_updated,
    "model.created": _model_created,
    "model.version.registered": _model_version_registered,
    "model.alias.set": _model_alias_set,
    "model.alias.removed": _model_alias_removed,
    "model.version.approved": _decision("approved"),
    "model.version.rejected": _decision("rejected"),
    "model.version.deployed": _model_version_deployed,
    "model.version.undeployed": _model_version_undeployed,
    "annotation.added": _annotation_added,
    "subject.redacted": _subject_redacted,
    "openlineage.event.reported": _openlineage_event_reported,
    "artifact.stored": _artifact_stored,
    "logged_model.created": _logged_model_created,
    "logged_model.updated": _logged_model_updated,
    "model.updated": _model_updated,
    "model.version.updated": _model_version_updated,
}

"""Hypothesis strategies for random event streams that exercise every rule of the projection.

A stream is built per subject first (a *lane*: one run's, dataset's, model's or project's events,
in an order a client could send them), then the lanes are interleaved at random, as Kafka
partitions interleave them. On top of that:

- cross-subject references point anywhere, also at subjects whose events come later or never
  (a run using a dataset version not registered yet, a version trained by an unknown run);
- every event type and schema version of the contract is drawn (a test checks it), from runs
  (v1 to v3 starts, params, metrics, tags, inputs, outputs, diffs, ends) and models (versions,
  aliases, reviews, deployments) to what data pipelines send (versions reported without a
  digest, reads at a named or the latest version, OpenLineage events with facets);
- a run's start may come late (after its metrics, even after its end) or never;
- some events are refused by the projection rules (an alias or an approval naming a version
  that does not exist, a dataset version id reused with another digest, an undeploy of a version
  not deployed there, an alias removed that was never set, a `*.created` whose name differs from
  its subject, a redaction of an identifying field);
- some events are sent twice (same event id, same bytes), later in their partition;
- a few records are not valid events at all (a date that does not exist, a NUL character, a
  field only the store may set), and a diff may not match its digest;
- timestamps sit on boundaries (the epoch and just before it, +14:00 / -12:00 / +23:59 offsets,
  a day ahead of now and just past it, micro- and nanosecond digits), and so do sizes (strings
  at their schema's maxLength, metric batches of up to 10,000 points, steps at the int64 limit,
  versions at the int32 limit, 1,000 params, 5,000 packages).

The strategy draws only the shape of a stream; event ids are assigned when it is sent
(:meth:`Stream.wire`), so shrinking never makes two different events share an id. Small
choices are drawn as indexes into constant tuples (:func:`_pick`): building a fresh
`sampled_from` per draw made generation cost more than the Kafka round trip.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson
from hypothesis import strategies as st

__all__ = ["DIGESTS", "REDACT_COPIES", "Stream", "ev", "shorten", "stream_of", "streams"]

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[Any]], Any]

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
# "Now" for timestamps relative to the server's clock, taken when the module is imported: the
# examples run later, so `NOW + 23h` is always within a day of the server's now.
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------ drawing helpers


@functools.cache
def _range(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def _between(draw: Draw, low: int, high: int) -> int:
    return int(draw(_range(low, high)))


def _pick(draw: Draw, options: Sequence[T]) -> T:
    """One of ``options``; shrinks towards the first."""
    return options[_between(draw, 0, len(options) - 1)]


def _chance(draw: Draw, one_in: int) -> bool:
    """True once in ``one_in`` draws, on average; shrinks towards False (the common case)."""
    return _between(draw, 0, one_in - 1) == one_in - 1


def _maybe(draw: Draw) -> bool:
    """A fair coin that shrinks towards False (leaving the optional thing out)."""
    return _between(draw, 0, 1) == 1


def _long(prefix: str, length: int, fill: str = "x") -> str:
    """A string of exactly ``length`` characters: a schema's maxLength."""
    return (prefix + fill * length)[:length]


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------- times

# Instants on the boundaries. Old and new validation may disagree on some (before 1970, more
# than a day ahead): either way such an event is stored, or dead-lettered, once for both the
# live projection and the rebuild.
_EDGE_INSTANTS = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=1),
    datetime(1970, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
    datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    NOW,
    NOW + timedelta(hours=23),
    NOW + timedelta(hours=25),
)
# Offsets at the ends of the real-world range, odd ones, the largest the contract's pattern
# admits, and three spellings of UTC.
_OFFSETS = ("Z", "+00:00", "-00:00", "+14:00", "-12:00", "+05:45", "-09:30", "+23:59")
_DIGITS = (0, 3, 6, 6, 9)
_NANOS = ("000", "999", "123")


def _zone(offset: str) -> timezone:
    if offset in ("Z", "+00:00", "-00:00"):
        return UTC
    sign = 1 if offset[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))


def rfc3339(t: datetime, offset: str = "Z", digits: int = 6, nanos: str = "000") -> str:
    """``t`` as RFC 3339 text at ``offset`` with ``digits`` fractional digits (0, 3, 6 or 9;
    ``nanos`` are the three digits a datetime cannot hold)."""
    local = t.astimezone(_zone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}{nanos}"[:digits]
    return text + offset


def _instant(draw: Draw, hours: int) -> datetime:
    """Mostly whole hours after T0 (so assignment changes collide and cover each other), some
    fine-grained times, and the edge instants."""
    kind = _between(draw, 0, 4)
    if kind <= 2:
        return T0 + timedelta(hours=_between(draw, 0, hours))
    if kind == 3:
        return T0 + timedelta(microseconds=_between(draw, 0, hours * 3600 * 10**6))
    return _pick(draw, _EDGE_INSTANTS)


def _timestamp(draw: Draw, hours: int = 8) -> str:
    t = _instant(draw, hours)
    digits = _pick(draw, _DIGITS)
    return rfc3339(t, _pick(draw, _OFFSETS), digits, _pick(draw, _NANOS) if digits == 9 else "")


# ------------------------------------------------------------------------------------- names

PROJECTS = ("churn", "p", _long("proj-", 64))
ACTORS = ("alice", "bob@example.com", "Zoë 名前 🚀", _long("actor-", 200))
DATASET_NAMES = ("events", "raw/clicks", _long("ds/", 200))
RUN_IDS = ("r1", "r-2", _long("run.", 128))
MODEL_NAMES = ("churn-clf", "team/ranker", _long("m/", 200))
# "unversioned" is also the name the projection gives a read of a dataset with no version yet.
VERSION_IDS = ("v1", "v2", "unversioned", _long("v", 128))
_COMMON_VERSIONS = VERSION_IDS[:2]
ALIASES = ("production", "staging", _long("a", 63))
ENVIRONMENTS = ("prod", "canary", _long("e", 63))
METRIC_KEYS = ("loss", "val/acc", _long("k", 250))
PARAM_KEYS = ("lr", "depth", "opt.name", _long("p", 250))
TAG_KEYS = ("team", "owner", _long("t", 250))
LABEL_KEYS = ("k", "review", _long("l", 250))
ROLES = ("train", "validation", "test", "evaluation", "other")
STATUSES = ("completed", "failed", "killed")
DIGESTS = tuple(digest(f"content-{i}") for i in range(3))
URIS = ("s3://d/1", "s3://d/2", _long("s3://", 2048))

_NUMBERS = st.one_of(
    st.sampled_from(
        (0.0, -0.0, 1.0, -1.5, 0.1, 1e-7, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308)
    ),
    st.sampled_from((0, 1, -1, INT64_MAX, -(2**63), 2**53 + 1)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-1000, 1000),
)
_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


def _version_id(draw: Draw) -> str:
    """A dataset version id; mostly one of two, so versions are reported, hashed, read and
    referred to under the same id."""
    return _pick(draw, VERSION_IDS if _chance(draw, 4) else _COMMON_VERSIONS)


@functools.cache
def _text(max_size: int, boundary: int) -> st.SearchStrategy[str]:
    """Short text of any printable characters (no NUL: `_broken` covers that), or a string of
    exactly ``boundary`` characters, each two bytes in UTF-8."""
    return st.one_of(
        st.text(_CHARS, min_size=1, max_size=max_size), st.just(_long("ß", boundary, "é"))
    )


_PARAM_VALUES = st.one_of(_NUMBERS, st.booleans(), st.none(), _text(10, 6000))
_PARAMS = st.one_of(
    st.dictionaries(st.sampled_from(PARAM_KEYS), _PARAM_VALUES, min_size=1, max_size=4),
    st.just({f"param-{i}": i / 3 for i in range(1000)}),
)
_TAGS = st.dictionaries(
    st.sampled_from(TAG_KEYS), st.one_of(st.none(), _text(8, 5000)), min_size=1, max_size=3
)
_LABELS = st.one_of(
    st.dictionaries(st.sampled_from(LABEL_KEYS), _text(5, 1000), max_size=3),
    st.just({f"label-{i}": "v" for i in range(100)}),
)
_PRODUCERS = (
    {"name": "sdk", "version": "0.1.0"},
    {"name": _long("n", 200), "version": _long("v", 200), "host": _long("h", 255)},
)
_PACKAGES = (["numpy==2.0"], [f"pkg{i}==1" for i in range(5000)])
_EVIDENCE = (["s3://report"], [_long("s3://", 2048)] * 100)
_ARGVS = (["train.py", "--lr", "0.1"], [f"--opt{i}" for i in range(1000)], [_long("-", 4096)])
_FACET_NAMES = ("schema", "dataSource", "nominalTime", _long("f", 250))
_SCHEMAS: tuple[Any, ...] = ([{"name": "user", "type": "string"}], {"fields": {"a": 1}}, [])


# ------------------------------------------------------------------------------------ events


@dataclass
class Ev:
    """One event before it gets its id: the wire document without `event_id`."""

    type: str
    subject: str
    payload: dict[str, Any]
    project: str
    occurred_at: str
    actor: str
    schema_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # optional envelope fields
    # Fields that make the record an invalid event (expected in the dead letters).
    breakage: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sent:
    """One Kafka record: the index of the event it carries (the same index twice: a duplicate)."""

    event: int


class Stream:
    """The events of a stream (each once) and the records that carry them (some twice).

    Not a dataclass: Hypothesis pretty-prints a dataclass field by field, which for a failing
    example with a 10,000-point metric batch is a repr too large to be useful (and a warning,
    which this suite turns into an error). The test notes :meth:`describe` instead.
    """

    def __init__(self, events: list[Ev], sends: list[Sent]) -> None:
        self.events = events
        self.sends = sends

    def __repr__(self) -> str:
        return f"Stream(<{len(self.events)} events, {len(self.sends)} records>)"

    def wire(self) -> list[dict[str, Any]]:
        """The wire documents, one per event, each with a fresh event id."""
        out = []
        for e in self.events:
            doc = {
                "event_id": str(uuid.uuid4()),
                "type": e.type,
                "schema_version": e.schema_version,
                "occurred_at": e.occurred_at,
                "actor": e.actor,
                "project": e.project,
                "subject": e.subject,
                "payload": e.payload,
                **e.extra,
            }
            if e.breakage is not None:
                doc.update(e.breakage)
            out.append(doc)
        return out

    def describe(self, docs: list[dict[str, Any]]) -> str:
        """The records as sent, one a line (long values shortened), for failure reports."""
        lines = []
        first: dict[int, int] = {}
        for n, s in enumerate(self.sends):
            again = f" (#{first[s.event]} again)" if s.event in first else ""
            first.setdefault(s.event, n)
            lines.append(f"#{n}{again} {shorten(docs[s.event])}")
        return "\n".join(lines)


def ev(
    type_: str,
    subject: str,
    payload: dict[str, Any],
    *,
    project: str = "churn",
    at: str = "2026-03-01T09:00:00Z",
    schema_version: int = 1,
) -> Ev:
    """One event for an explicit example (a regression found by the strategy)."""
    return Ev(type_, subject, payload, project, at, "alice", schema_version)


def stream_of(*events: Ev, again: Sequence[int] = ()) -> Stream:
    """The events in order, one record each, then the events at ``again`` sent a second time."""
    return Stream(list(events), [Sent(i) for i in range(len(events))] + [Sent(i) for i in again])


def _abbreviate(v: Any) -> Any:
    if isinstance(v, str) and len(v) > 40:
        return f"{v[:12]}…[{len(v)} chars]"
    if isinstance(v, list) and len(v) > 6:
        return [*(_abbreviate(x) for x in v[:3]), f"…[{len(v)} items]", _abbreviate(v[-1])]
    if isinstance(v, list):
        return [_abbreviate(x) for x in v]
    if isinstance(v, dict):
        items = list(v.items())
        out = {_abbreviate(k): _abbreviate(x) for k, x in items[:16]}
        if len(items) > 16:
            out["…"] = f"[{len(items)} keys]"
        return out
    return v


def shorten(value: Any, limit: int = 500) -> str:
    """JSON of ``value`` with long strings, lists and objects abbreviated."""
    text = orjson.dumps(_abbreviate(value)).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _World:
    """The names a stream uses; references draw from the same pools, so they often hit."""

    projects: list[str]
    datasets: list[str]
    runs: list[str]
    models: list[str]


def _ev(
    draw: Draw,
    type_: str,
    subject: str,
    payload: dict[str, Any],
    project: str,
    when: str | None = None,
    schema_version: int = 1,
) -> Ev:
    extra: dict[str, Any] = {}
    if _maybe(draw):
        extra["producer"] = _pick(draw, _PRODUCERS)
    if _chance(draw, 5):
        extra["correlation_id"] = _pick(draw, ("c-1", _long("c", 200)))
        extra["causation_id"] = _pick(draw, ("x", _long("y", 200)))
    return Ev(
        type=type_,
        subject=subject,
        payload=payload,
        project=project,
        occurred_at=when or _timestamp(draw),
        actor=_pick(draw, ACTORS),
        schema_version=schema_version,
        extra=extra,
    )


# ------------------------------------------------------------------------ redactions, notes

# What a redaction may name, by what docs/write-path.md promises for it:
# - fields that identify the subject or carry its lineage, or anything inside them (`parents`,
#   `parents.0.version`, `metrics.0.value`): refused, live and on a rebuild alike;
# - the fields of a run's start event (`environment.host`, `code`, `experiment`, v1's `host`):
#   erased from the store and refreshed in rm.runs at once;
# - paths no earlier event has: nothing changes anywhere;
# - fields other read models keep a copy of (an annotation's text, a comment, an error, a
#   dataset version's size or source, an OpenLineage facet): the docs say those copies keep
#   the erased value "until the next rebuild", so live and rebuild differ there by design.
#   Drawn only with STUDBOOK_REDACT_COPIES=1, to show that divergence; by default left out.
# Most paths are taken from the subject's earlier events, so that the redaction erases something.
_REDACT_FALLBACK = ("name", "version", "digest", "parents", "metrics", "nothing.here", "no_such")
_COPIED = frozenset({
    "text", "labels", "comment", "evidence", "error", "framework", "signature", "size_bytes",
    "row_count", "schema", "target", "description", "source",
    "event",  # an OpenLineage event's facets, copied to rm.openlineage_facets
})  # fmt: skip
REDACT_COPIES = os.environ.get("STUDBOOK_REDACT_COPIES") == "1"


def _is_copied(path: str) -> bool:
    top, _, rest = path.partition(".")
    return top in _COPIED or (top in ("tags", "params") and bool(rest))


def _paths(payload: dict[str, Any]) -> list[str]:
    """Paths into ``payload`` a redaction could name: top-level keys, keys one level down,
    and the first item of an array (and its keys)."""
    out = []
    for key, value in payload.items():
        out.append(key)
        if isinstance(value, dict):
            out += [f"{key}.{k}" for k in list(value)[:4]]
        elif isinstance(value, list) and value:
            out.append(f"{key}.0")
            if isinstance(value[0], dict):
                out += [f"{key}.0.{k}" for k in value[0]]
    return out


def _redaction(draw: Draw, subject: str, project: str, earlier: Sequence[Ev]) -> Ev:
    # Earlier redactions are no source: erasing a redaction's own `reason` or `fields` is
    # erasing a copy (rm.redactions), and the current code refuses it anyway.
    sources = [e for e in earlier if REDACT_COPIES or e.type != "subject.redacted"]
    candidates = sorted(
        {p for e in sources for p in _paths(e.payload) if REDACT_COPIES or not _is_copied(p)}
    )
    nested = [p for p in candidates if "." in p]
    fields: list[str] = []
    for _ in range(_between(draw, 1, 3)):
        pool = _pick(draw, (candidates, nested, _REDACT_FALLBACK))
        path = _pick(draw, pool or _REDACT_FALLBACK)
        if path not in fields:
            fields.append(path)
    payload = {"reason": _pick(draw, ("GDPR", _long("r", 1000))), "fields": fields}
    return _ev(draw, "subject.redacted", subject, payload, project)


def _annotation(draw: Draw, subject: str, project: str) -> Ev:
    payload: dict[str, Any] = {"text": draw(_text(20, 10000))}
    if _maybe(draw):
        payload["labels"] = draw(_LABELS)
    return _ev(draw, "annotation.added", subject, payload, project)


def _with_asides(draw: Draw, lane: list[Ev], subject: str, project: str) -> list[Ev]:
    """The lane with up to two annotations or redactions of its subject, anywhere in it."""
    for _ in range(_between(draw, 0, 2)):
        at = _between(draw, 0, len(lane))
        if _maybe(draw):
            lane.insert(at, _redaction(draw, subject, project, lane[:at]))
        else:
            lane.insert(at, _annotation(draw, subject, project))
    return lane


# ---------------------------------------------------------------------------------- runs

_POINTS = st.lists(
    st.fixed_dictionaries(
        {"key": st.sampled_from(METRIC_KEYS), "value": _NUMBERS},
        optional={
            "step": st.one_of(st.integers(0, 5), st.sampled_from((INT64_MAX, INT64_MAX - 1))),
            "timestamp": st.just(""),  # a flag: `_metrics` draws the text with `_timestamp`
        },
    ),
    min_size=1,
    max_size=12,
)


def _metrics(draw: Draw) -> dict[str, Any]:
    if _chance(draw, 6):
        # Many points, built from a few drawn numbers: drawing 10,000 points one by one would
        # make the example huge and shrinking slow. Short keys keep the record well under the
        # broker's limit.
        n = _pick(draw, (1000, 5000, 10000))
        base = _pick(draw, (0, INT64_MAX - 10000))
        stamp = _timestamp(draw) if _maybe(draw) else None
        points: list[dict[str, Any]] = []
        for i in range(n):
            point: dict[str, Any] = {"key": "abc"[i % 3], "value": (i * 7919 % 1000) / 7}
            point["step"] = base + i // 3
            if stamp is not None and i % 2:
                point["timestamp"] = stamp
            points.append(point)
        return {"metrics": points}
    points = draw(_POINTS)
    for point in points:
        if "timestamp" in point:
            point["timestamp"] = _timestamp(draw)
    return {"metrics": points}


_DIFF_TEXT = "diff --git a/train.py b/train.py\n-lr = 0.1\n+lr = 0.05\n"
_DIFF_MAX = bytes(range(256)) * 1024  # 262,144 bytes: the schema's size_bytes maximum


def _diff(draw: Draw) -> dict[str, Any]:
    """A `run.diff.recorded` payload: UTF-8 or base64 (the largest is 349,528 characters,
    exactly the schema's maxLength), usually matching its digest and size, now and then not
    (the projection refuses it)."""
    kind = _between(draw, 0, 2)
    if kind == 0:
        data, encoding, text = _DIFF_TEXT.encode(), "utf-8", _DIFF_TEXT
    elif kind == 1:
        data, encoding = _DIFF_MAX, "base64"
        text = base64.b64encode(data).decode()
    else:
        data, encoding, text = b"", "utf-8", ""
    payload = {
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "encoding": encoding,
        "diff": text,
    }
    if _chance(draw, 5):
        payload["digest"] = _pick(draw, DIGESTS)  # does not match: refused
    return payload


def _facets(draw: Draw) -> dict[str, Any]:
    """OpenLineage facets: a few names, some deleted (`_deleted: true`)."""
    out: dict[str, Any] = {}
    for _ in range(_between(draw, 0, 2)):
        name = _pick(draw, _FACET_NAMES)
        out[name] = {"_deleted": True} if _chance(draw, 4) else {"v": _between(draw, 0, 2)}
    return out


def _openlineage(draw: Draw, world: _World, kind: str, subject: str, project: str) -> Ev:
    """An `openlineage.event.reported`: a RunEvent (subject: the run), a DatasetEvent (the
    dataset) or a JobEvent (the project), with facets for the run, its job and its datasets."""
    event: dict[str, Any] = {"eventType": _pick(draw, ("START", "COMPLETE"))}
    payload: dict[str, Any] = {"kind": kind, "event": event}
    if kind == "RunEvent":
        event["run"] = {"facets": _facets(draw)}
        event["job"] = {"facets": _facets(draw)}
    for side, own in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        if kind != "DatasetEvent" and _maybe(draw):
            names = sorted({_pick(draw, world.datasets) for _ in range(_between(draw, 1, 2))})
            payload[side] = [{"dataset": n, "uri": _pick(draw, URIS)} for n in names]
            event[side] = [{"facets": _facets(draw), own: _facets(draw)} for _ in names]
    if kind == "DatasetEvent":
        payload["dataset"] = {"dataset": subject.partition(":")[2], "uri": _pick(draw, URIS)}
        event["dataset"] = {"facets": _facets(draw)}
    return _ev(draw, "openlineage.event.reported", subject, payload, project)


def _run_started(draw: Draw, world: _World, run: str, project: str) -> Ev:
    payload: dict[str, Any] = {"name": _pick(draw, ("baseline", _long("n", 250)))}
    if _maybe(draw):
        code: dict[str, Any] = {}
        if _maybe(draw):
            code["git_repo"] = _pick(draw, ("git@x:churn.git", _long("g", 2048)))
        if _maybe(draw):
            code["git_commit"] = _pick(draw, ("abc1234", "f" * 64))
        if _maybe(draw):
            code["git_branch"] = _pick(draw, ("main", _long("b", 255)))
        if _maybe(draw):
            code["git_dirty"] = _maybe(draw)
        if _maybe(draw):
            code["entry_point"] = _pick(draw, ("train.py", _long("e", 1024)))
        payload["code"] = code
    host = _pick(draw, ("gpu-1", _long("h", 255))) if _maybe(draw) else None
    if _chance(draw, 4):
        # v1 keeps the host at the top level; it is upcast to environment.host on read.
        if host is not None:
            payload["host"] = host
        if _maybe(draw):
            payload["environment"] = {"python_version": "3.11.7"}
        return _ev(draw, "run.started", f"run:{run}", payload, project, schema_version=1)
    version = _pick(draw, (2, 3))
    if version == 3 and "code" in payload:
        # v3: what a re-run needs (command line, working directory, the uncommitted diff).
        code = payload["code"]
        if _maybe(draw):
            code["module"] = _pick(draw, ("train", _long("m", 1024)))
        if _maybe(draw):
            code["argv"] = _pick(draw, _ARGVS)
        if _maybe(draw):
            code["working_dir"] = _pick(draw, ("/work", _long("/w", 1024)))
        if _maybe(draw):
            code["diff"] = {
                "digest": _pick(draw, DIGESTS),
                "size_bytes": _pick(draw, (0, 262144, INT64_MAX)),
                "stored": _maybe(draw),
            }
    if version == 3 and _chance(draw, 3):
        rerun: dict[str, Any] = {"run": _pick(draw, world.runs)}
        if _maybe(draw):
            rerun["derived"] = _maybe(draw)
        payload["reproduces"] = rerun
    if _maybe(draw):
        payload["experiment"] = _pick(draw, ("sweep", _long("x/", 200)))
    if _chance(draw, 4):
        payload["parent_run"] = _pick(draw, world.runs)
    if _maybe(draw):
        environment: dict[str, Any] = {}
        if _maybe(draw):
            environment["python_version"] = _pick(draw, ("3.11.7", _long("3", 64)))
        if _maybe(draw):
            environment["packages_digest"] = _pick(draw, DIGESTS)
        if _maybe(draw):
            environment["packages"] = _pick(draw, _PACKAGES)
        if host is not None:
            environment["host"] = host
        payload["environment"] = environment
    return _ev(draw, "run.started", f"run:{run}", payload, project, schema_version=version)


def _run_body(draw: Draw, world: _World, run: str, project: str) -> Ev:
    subject = f"run:{run}"
    kind = _between(draw, 0, 8)
    if kind == 8:
        stage = _pick(draw, ("active", "deleted"))
        return _ev(draw, "run.lifecycle.set", subject, {"lifecycle_stage": stage}, project)
    if kind == 6:
        return _ev(draw, "run.diff.recorded", subject, _diff(draw), project)
    if kind == 7:
        return _openlineage(draw, world, "RunEvent", subject, project)
    if kind == 0:
        return _ev(draw, "run.params.logged", subject, {"params": draw(_PARAMS)}, project)
    if kind == 1:
        return _ev(draw, "run.tags.set", subject, {"tags": draw(_TAGS)}, project)
    if kind == 2:
        payload: dict[str, Any] = {
            "dataset": _pick(draw, world.datasets),
            "version": _version_id(draw),
            "role": _pick(draw, ROLES),
        }
        return _ev(draw, "run.input.used", subject, payload, project)
    if kind == 3:
        payload = {"uri": _pick(draw, URIS)}
        if _maybe(draw):
            payload["digest"] = _pick(draw, DIGESTS)
        if _maybe(draw):
            payload["name"] = _pick(draw, ("model", _long("o", 200)))
        if _maybe(draw):
            payload["dataset"] = _pick(draw, world.datasets)
            payload["version"] = _version_id(draw)
        return _ev(draw, "run.output.produced", subject, payload, project)
    return _ev(draw, "run.metrics.logged", subject, _metrics(draw), project)


def _run_finished(draw: Draw, run: str, project: str) -> Ev:
    payload: dict[str, Any] = {"status": _pick(draw, STATUSES)}
    if payload["status"] != "completed" and _maybe(draw):
        payload["error"] = {
            "type": _pick(draw, ("ValueError", _long("E", 200))),
            "message": _pick(draw, ("bad shape", "", _long("m", 10000))),
        }
    return _ev(draw, "run.finished", f"run:{run}", payload, project)


def _run_lane(draw: Draw, world: _World, run: str, project: str) -> list[Ev]:
    lane = [_run_body(draw, world, run, project) for _ in range(_between(draw, 0, 5))]
    if not _chance(draw, 4):
        lane.append(_run_finished(draw, run, project))
        if _chance(draw, 4):  # a late batch after the end, or a restart
            late = _run_body(draw, world, run, project)
            lane.append(late if _maybe(draw) else _run_started(draw, world, run, project))
    # Usually the start comes first. Sometimes it never arrives, or arrives late: spooled by an
    # SDK while the broker was down, or sent by another client than the one that finished it.
    start = _pick(draw, ("first", "first", "first", "late", "never"))
    if start == "first":
        lane.insert(0, _run_started(draw, world, run, project))
    elif start == "late":
        lane.insert(_between(draw, 0, len(lane)), _run_started(draw, world, run, project))
    return _with_asides(draw, lane, f"run:{run}", project)


# ------------------------------------------------------------------------------ datasets


def _dataset_version(draw: Draw, world: _World) -> tuple[dict[str, Any], int]:
    """A `dataset.version.created` payload and its schema version (v2 adds `source`)."""
    # Small pools: the same version id with the same digest is a no-op, with another one it is
    # refused, and a version reported without a digest learns this one.
    payload: dict[str, Any] = {
        "version": _version_id(draw),
        "uri": _pick(draw, URIS),
        "digest": _pick(draw, DIGESTS),
    }
    if _maybe(draw):
        payload["size_bytes"] = _pick(draw, (0, 10, INT64_MAX))
        payload["row_count"] = _pick(draw, (0, 100, INT64_MAX))
    if _maybe(draw):
        payload["schema"] = _pick(draw, _SCHEMAS)
    if _maybe(draw):
        parents = {
            (_pick(draw, world.datasets), _version_id(draw)) for _ in range(_between(draw, 0, 3))
        }
        payload["parents"] = [{"dataset": d, "version": v} for d, v in sorted(parents)]
    if _maybe(draw):
        payload["produced_by_run"] = _pick(draw, world.runs)
    if _maybe(draw):
        source: dict[str, Any] = {
            "uri": _pick(draw, ("file:///data/x.csv", _long("file://", 2048)))
        }
        if _maybe(draw):
            source["repo_path"] = _pick(draw, ("data/x.csv", _long("d/", 1024)))
        payload["source"] = source
        return payload, 2
    return payload, _pick(draw, (1, 2))


def _dataset_event(draw: Draw, world: _World, subject: str, project: str) -> Ev:
    """A version made by training code (with a digest) or reported by a pipeline (without),
    a run's read of the dataset (at a version, or at whatever is latest), or an OpenLineage
    DatasetEvent."""
    kind = _between(draw, 0, 4)
    if kind <= 1:
        payload, version = _dataset_version(draw, world)
        return _ev(
            draw, "dataset.version.created", subject, payload, project, schema_version=version
        )
    if kind == 2:
        reported: dict[str, Any] = {"version": _version_id(draw), "uri": _pick(draw, URIS)}
        if _maybe(draw):
            reported["produced_by_run"] = _pick(draw, world.runs)
        if _maybe(draw):
            reported["schema"] = _pick(draw, _SCHEMAS)
        if _maybe(draw):
            reported["row_count"] = _pick(draw, (0, 100, INT64_MAX))
        if _maybe(draw):
            reported["size_bytes"] = _pick(draw, (0, 10, INT64_MAX))
        return _ev(draw, "dataset.version.reported", subject, reported, project)
    if kind == 3:
        read: dict[str, Any] = {"run": _pick(draw, world.runs), "uri": _pick(draw, URIS)}
        if _maybe(draw):
            read["version"] = _version_id(draw)
        if _maybe(draw):
            read["role"] = _pick(draw, ROLES)
        return _ev(draw, "dataset.read", subject, read, project)
    return _openlineage(draw, world, "DatasetEvent", subject, project)


def _dataset_lane(draw: Draw, world: _World, dataset: str, project: str) -> list[Ev]:
    subject = f"dataset:{dataset}"
    lane = [_dataset_event(draw, world, subject, project) for _ in range(_between(draw, 0, 5))]
    if _maybe(draw):
        # Before, between or after its versions; now and then with a name not its own.
        created: dict[str, Any] = {
            "name": _pick(draw, DATASET_NAMES) if _chance(draw, 6) else dataset
        }
        if _maybe(draw):
            created["uri"] = _pick(draw, URIS)
        lane.insert(
            _between(draw, 0, len(lane)), _ev(draw, "dataset.created", subject, created, project)
        )
    return _with_asides(draw, lane, subject, project)


# -------------------------------------------------------------------------------- models


def _model_lane(draw: Draw, world: _World, model: str, project: str) -> list[Ev]:
    subject = f"model:{model}"
    lane: list[Ev] = []
    registered = 0
    deployed: dict[str, int] = {}
    for _ in range(_between(draw, 0, 8)):
        kind = _pick(draw, ("register", "alias", "register", "alias", "unalias", "decide",
                            "deploy", "undeploy", "update", "version_update"))  # fmt: skip
        # Mostly a version that exists, now and then the next one (not registered yet) or the
        # largest the schema admits.
        if _chance(draw, 5):
            version = _pick(draw, (registered + 1, INT32_MAX))
        else:
            version = _between(draw, 1, max(registered, 1))
        # Whole hours, so changes land before, on and after each other: late-recorded history.
        when = _timestamp(draw, hours=6)
        if kind == "register":
            payload: dict[str, Any] = {"artifact_uri": _pick(draw, URIS)}
            if _maybe(draw):
                payload["run"] = _pick(draw, world.runs)
            if _maybe(draw):
                payload["digest"] = _pick(draw, DIGESTS)
            if _maybe(draw):
                payload["framework"] = _pick(draw, ("xgboost", _long("f", 100)))
            if _maybe(draw):
                payload["signature"] = {"inputs": [{"name": "x", "type": "double"}]}
            registered += 1
            lane.append(_ev(draw, "model.version.registered", subject, payload, project, when))
        elif kind == "update":  # MLflow's description, tags, deletion of a registered model
            payload = {}
            if _maybe(draw):
                payload["description"] = _pick(draw, ("", "churn", _long("d", 10000)))
            if _maybe(draw) or not payload:
                payload["tags"] = {"team": _pick(draw, ("growth", None)), "k": _long("v", 8000)}
            if _chance(draw, 4):
                payload["deleted"] = True
            lane.append(_ev(draw, "model.updated", subject, payload, project, when))
        elif kind == "version_update":  # MLflow's stage, tags, description, deletion
            payload = {"version": version}
            if _maybe(draw):
                payload["stage"] = _pick(draw, ("None", "Staging", "Production", "Archived"))
            if _maybe(draw):
                payload["tags"] = {"ok": _pick(draw, ("yes", None))}
            if _maybe(draw):
                payload["description"] = _pick(draw, ("", _long("d", 10000)))
            if _chance(draw, 5):
                payload["deleted"] = True
            lane.append(_ev(draw, "model.version.updated", subject, payload, project, when))
        elif kind == "alias":
            payload = {"alias": _pick(draw, ALIASES), "version": version}
            lane.append(_ev(draw, "model.alias.set", subject, payload, project, when))
        elif kind == "unalias":
            payload = {"alias": _pick(draw, ALIASES)}
            lane.append(_ev(draw, "model.alias.removed", subject, payload, project, when))
        elif kind == "decide":
            payload = {"version": version}
            if _maybe(draw):
                payload["comment"] = _pick(draw, ("ok", "", _long("c", 10000)))
            if _maybe(draw):
                payload["evidence"] = _pick(draw, _EVIDENCE)
            decision = _pick(draw, ("model.version.approved", "model.version.rejected"))
            lane.append(_ev(draw, decision, subject, payload, project, when))
        elif kind == "deploy":
            environment = _pick(draw, ENVIRONMENTS)
            payload = {"version": version, "environment": environment}
            if _maybe(draw):
                payload["target"] = _pick(draw, ("k8s/churn", _long("t", 500)))
            deployed[environment] = version
            lane.append(_ev(draw, "model.version.deployed", subject, payload, project, when))
        else:
            environment = _pick(draw, ENVIRONMENTS)
            # Usually the version deployed there (if any); otherwise it is refused.
            if environment in deployed and not _chance(draw, 4):
                version = deployed[environment]
            payload = {"version": version, "environment": environment}
            lane.append(_ev(draw, "model.version.undeployed", subject, payload, project, when))
    if _maybe(draw):
        name = _pick(draw, MODEL_NAMES) if _chance(draw, 6) else model
        lane.insert(
            _between(draw, 0, len(lane)),
            _ev(draw, "model.created", subject, {"name": name}, project),
        )
    return _with_asides(draw, lane, subject, project)


def _logged_model_lane(draw: Draw, world: _World, model_id: str, project: str) -> list[Ev]:
    """An MLflow 3 logged model: created (or not: updates of an unknown one change nothing), its
    files stored (about it, or about a run), its status and tags updated."""
    subject = f"logged_model:{model_id}"
    lane: list[Ev] = []
    folder = f"1/models/{model_id}/artifacts"
    if not _chance(draw, 5):
        created: dict[str, Any] = {
            "name": "model", "experiment": "1", "artifact_uri": f"mlflow-artifacts:/{folder}",
            "status": "LOGGED_MODEL_PENDING",
        }  # fmt: skip
        if _maybe(draw):
            created["run"] = _pick(draw, world.runs)
        if _maybe(draw):
            created["params"] = {"alpha": _pick(draw, ("0.5", _long("p", 8000)))}
        if _maybe(draw):
            created["tags"] = {"mlflow.user": "ada"}
        lane.append(_ev(draw, "logged_model.created", subject, created, project))
    for _ in range(_between(draw, 0, 4)):
        if _maybe(draw):
            on_run = _chance(draw, 3)
            run = _pick(draw, world.runs)
            path = _pick(draw, ("MLmodel", "model.skops", "sub/" + _long("f", 300)))
            stored: dict[str, Any] = {
                "path": f"1/{run}/artifacts/{path}" if on_run else f"{folder}/{path}",
                "uri": _pick(draw, ("file:///var/lib/a", "s3://bucket/" + _long("k", 2000))),
                "size_bytes": _pick(draw, (0, 512, 2**63 - 1)),
                "digest": _pick(draw, DIGESTS),
            }
            stored.update({"run": run} if on_run else {"logged_model": model_id})
            about = f"run:{run}" if on_run else subject
            lane.append(_ev(draw, "artifact.stored", about, stored, project))
        else:
            update: dict[str, Any] = {}
            if _maybe(draw):
                update["status"] = _pick(draw, ("LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"))
            if _maybe(draw) or not update:
                update["tags"] = {"mlflow.modelVersions": _pick(draw, ("[]", None)), "t": "x"}
            lane.append(_ev(draw, "logged_model.updated", subject, update, project))
    return lane


def _experiment_lane(draw: Draw, experiment: str, project: str) -> list[Ev]:
    """An MLflow experiment: created (or not: updates of an unknown one change nothing), then
    renamed, deleted, restored, tagged."""
    subject = f"experiment:{experiment}"
    lane: list[Ev] = []
    if not _chance(draw, 5):
        created: dict[str, Any] = {"name": _pick(draw, ("churn", _long("e", 500)))}
        if _maybe(draw):
            created["artifact_location"] = _pick(draw, (f"mlflow-artifacts:/{experiment}",))
        if _maybe(draw):
            created["tags"] = {"team": _pick(draw, ("growth", _long("t", 5000)))}
        lane.append(_ev(draw, "experiment.created", subject, created, project))
    for _ in range(_between(draw, 0, 3)):
        update: dict[str, Any] = {}
        if _maybe(draw):
            update["name"] = _pick(draw, ("churn-v2", "churn"))
        if _maybe(draw):
            update["lifecycle_stage"] = _pick(draw, ("active", "deleted"))
        if _maybe(draw) or not update:
            update["tags"] = {"team": _pick(draw, ("growth", None)), "stage": "x"}
        lane.append(_ev(draw, "experiment.updated", subject, update, project))
    return lane


def _project_lane(draw: Draw, world: _World, project: str) -> list[Ev]:
    subject = f"project:{project}"
    lane = [_ev(draw, "project.created", subject, {}, project)]
    if _chance(draw, 4):  # created twice: the later one wins
        lane.append(_ev(draw, "project.created", subject, {}, project))
    if _chance(draw, 3):
        lane.append(_openlineage(draw, world, "JobEvent", subject, project))
    return _with_asides(draw, lane, subject, project)


# ------------------------------------------------------------------------- invalid records

_BREAKAGES = (
    {"occurred_at": "2026-02-30T12:00:00Z"},  # a day that does not exist
    {"actor": "nul\u0000actor"},  # PostgreSQL cannot store NUL
    {"recorded_at": rfc3339(T0)},  # the store assigns it; a client may not send it
)


def _broken(draw: Draw, e: Ev) -> Ev:
    """A copy of ``e`` that breaks the contract: the projector dead-letters it on decoding."""
    return Ev(
        e.type, e.subject, e.payload, e.project, e.occurred_at, e.actor, e.schema_version,
        breakage=_pick(draw, _BREAKAGES),
    )  # fmt: skip


# -------------------------------------------------------------------------------- streams


@st.composite
def streams(draw: Draw) -> Stream:
    """A random stream: lanes per subject, interleaved, with duplicates and invalid records."""
    world = _World(
        projects=sorted({_pick(draw, PROJECTS) for _ in range(_between(draw, 1, 2))}),
        datasets=sorted({_pick(draw, DATASET_NAMES) for _ in range(_between(draw, 1, 2))}),
        runs=sorted({_pick(draw, RUN_IDS) for _ in range(_between(draw, 1, 3))}),
        models=sorted({_pick(draw, MODEL_NAMES) for _ in range(_between(draw, 1, 2))}),
    )
    lanes = [_project_lane(draw, world, p) for p in world.projects if _maybe(draw)]
    lanes += [_run_lane(draw, world, r, _pick(draw, world.projects)) for r in world.runs]
    lanes += [_dataset_lane(draw, world, d, _pick(draw, world.projects)) for d in world.datasets]
    lanes += [_model_lane(draw, world, m, _pick(draw, world.projects)) for m in world.models]
    lanes += [
        _experiment_lane(draw, x, _pick(draw, world.projects))
        for x in ("1", "2")[: _between(draw, 0, 2)]
    ]
    lanes += [
        _logged_model_lane(draw, world, m, _pick(draw, world.projects))
        for m in ("m-0123456789abcdef0123456789abcdef", "m-1")[: _between(draw, 0, 2)]
    ]
    lanes = [lane for lane in lanes if lane] or [_project_lane(draw, world, world.projects[0])]

    # Interleave: a permutation of lane labels, each lane's events taken in their order. The
    # identity (one lane after another) is where shrinking goes.
    labels = [i for i, lane in enumerate(lanes) for _ in lane]
    events: list[Ev] = []
    taken = [0] * len(lanes)
    for i in draw(st.permutations(labels)):
        events.append(lanes[i][taken[i]])
        taken[i] += 1

    if _chance(draw, 4):
        for _ in range(_between(draw, 1, 2)):
            broken = _broken(draw, _pick(draw, events))
            events.insert(_between(draw, 0, len(events)), broken)

    sends = [Sent(i) for i in range(len(events))]
    # Duplicates: a record sent again later (same id and bytes, same key, so same partition).
    for _ in range(_between(draw, 0, 3)):
        source = _between(draw, 0, len(sends) - 1)
        sends.insert(_between(draw, source + 1, len(sends)), sends[source])
    return Stream(events, sends)

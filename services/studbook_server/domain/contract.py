"""The event contract: validation, upcasting and the wire codec of Studbook events.

The JSON Schemas in ``schema/events`` are the source of truth: ``envelope.schema.json`` for the
envelope and ``<type>.v<N>.schema.json`` for each payload version. This module compiles them
with fastjsonschema (once per schema, on first use), turns validation failures into
:class:`Violation` records that name a JSON Pointer and say what was expected, upgrades old
payload versions to the current one (:func:`upcast`) and converts between bytes and
:class:`Event`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import fastjsonschema
import orjson

__all__ = [
    "CURRENT_VERSIONS",
    "EVENT_TYPES",
    "MAX_DEPTH",
    "MAX_VIOLATIONS_PER_EVENT",
    "UPCASTERS",
    "Event",
    "InvalidEvent",
    "Upcaster",
    "Violation",
    "decode_event",
    "encode_event",
    "event_from_dict",
    "known_versions",
    "schema_dir",
    "schema_path",
    "schema_violations",
    "upcast",
    "validate_batch",
    "validate_event",
]

# Declared rather than discovered so that importing this module reads no file; a unit test
# checks it against the schema files and the envelope's `type` enum.
CURRENT_VERSIONS: Mapping[str, int] = MappingProxyType(
    {
        "project.created": 1,
        "dataset.created": 1,
        "dataset.version.created": 2,
        "dataset.version.reported": 1,
        "dataset.read": 1,
        "run.started": 3,
        "run.params.logged": 1,
        "run.metrics.logged": 1,
        "run.tags.set": 1,
        "run.input.used": 1,
        "run.output.produced": 1,
        "run.finished": 1,
        "run.diff.recorded": 1,
        "model.created": 1,
        "model.version.registered": 1,
        "model.alias.set": 1,
        "model.alias.removed": 1,
        "model.version.approved": 1,
        "model.version.rejected": 1,
        "model.version.deployed": 1,
        "model.version.undeployed": 1,
        "annotation.added": 1,
        "subject.redacted": 1,
        "openlineage.event.reported": 1,
        "artifact.stored": 1,
        "logged_model.created": 1,
        "logged_model.updated": 1,
        "model.updated": 1,
        "model.version.updated": 1,
        "experiment.created": 1,
        "experiment.updated": 1,
        "run.lifecycle.set": 1,
    }
)
EVENT_TYPES: tuple[str, ...] = tuple(CURRENT_VERSIONS)

# One bad event can carry 10,000 bad metrics; the client needs the first few, not all of them.
MAX_VIOLATIONS_PER_EVENT = 100

# How deep objects and arrays may nest in a payload. Free-form values (params, labels, signatures)
# rarely need more than a few levels; without a bound, a payload nested a few hundred levels
# deep could not be stored or re-encoded at all (orjson encodes at most 254 levels).
MAX_DEPTH = 32

# Fields the event store assigns; a client that sends them has misunderstood the protocol.
_STORE_FIELDS = frozenset({"recorded_at", "position"})


# --------------------------------------------------------------------------- schema files


@functools.cache
def schema_dir() -> Path:
    """Return the folder holding the schemas (``events/``, ``sql/``, ``graphql/``).

    An installed wheel carries them as ``studbook_server/_schema``; a source checkout has them
    in the repository's ``schema`` folder.
    """
    packaged = Path(__file__).resolve().parents[1] / "_schema"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "schema"


def schema_path(name: str) -> Path:
    """Return the path of an event schema file, e.g. ``schema_path("run.started.v2")``."""
    return schema_dir() / "events" / f"{name}.schema.json"


@functools.cache
def _load_schema(name: str) -> Mapping[str, Any]:
    schema = orjson.loads(schema_path(name).read_bytes())
    if not isinstance(schema, dict):
        raise TypeError(f"{schema_path(name)} does not hold a JSON object")
    return MappingProxyType(schema)


def _for_fastjsonschema(node: Any) -> Any:
    """Copy a 2020-12 schema, adapted to what fastjsonschema enforces and how fast it does it.

    fastjsonschema silently ignores ``dependentRequired``; draft-07's array form of
    ``dependencies`` means the same and is enforced. ``format: uuid`` is dropped where a
    ``pattern`` already pins the (stricter, lowercase) UUID shape: it would cost a second regex
    per event and report the same problem twice.
    """
    if isinstance(node, list):
        return [_for_fastjsonschema(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {key: _for_fastjsonschema(value) for key, value in node.items()}
    if "dependentRequired" in out:
        out["dependencies"] = out.pop("dependentRequired")
    if out.get("format") == "uuid" and "pattern" in out:
        del out["format"]
    return out


# Times an event may carry: from the Unix epoch to a day past the server's clock. Outside that,
# a time is a client's mistake (or an attack on time travel and governance queries), and some
# values, such as 0001-01-01T00:30:00+01:00, have no UTC value in Python or PostgreSQL at all.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_ALLOWANCE = timedelta(days=1)
TIME_RANGE = "between 1970-01-01T00:00:00Z and one day past the server's clock"


def _parse_datetime(value: str) -> datetime | None:
    """An aware datetime, or None (not a date-time, or without a timezone offset)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


class _Latest:
    """Now plus the allowance, read from the clock at most once a second (this runs for every
    distinct timestamp of every event)."""

    tick = -2.0
    value = EARLIEST_TIME

    @classmethod
    def get(cls) -> datetime:
        tick = time.monotonic()
        if tick - cls.tick > 1.0:
            cls.tick, cls.value = tick, datetime.now(UTC) + FUTURE_ALLOWANCE
        return cls.value


def in_time_range(when: datetime, now: datetime | None = None) -> bool:
    """Whether an aware datetime lies in the range events may carry (:data:`TIME_RANGE`)."""
    latest = now + FUTURE_ALLOWANCE if now is not None else _Latest.get()
    return EARLIEST_TIME <= when <= latest


def _is_datetime(value: str) -> bool:
    # The schema's pattern fixes the shape (and requires an offset); this rejects the dates
    # the pattern cannot, such as February 30th, which the projector could not parse later,
    # and times out of range.
    when = _parse_datetime(value)
    return when is not None and in_time_range(when)


_Validator = Callable[[Any], Any]


@functools.cache
def _validator(name: str) -> _Validator:
    return cast(
        _Validator,
        fastjsonschema.compile(
            _for_fastjsonschema(_load_schema(name)),
            # Validation must not change what it checks: defaults are documentation only.
            use_default=False,
            # Report every problem of an event at once rather than one per round trip.
            fast_fail=False,
            formats={"date-time": _is_datetime},
        ),
    )


def known_versions(event_type: str) -> range:
    """Return the schema versions of ``event_type`` that can be validated and upcast."""
    return range(1, CURRENT_VERSIONS[event_type] + 1)


# --------------------------------------------------------------------------- violations


@dataclass(frozen=True, slots=True)
class Violation:
    """One way in which an event breaks the contract.

    ``index`` is the event's position in its batch, ``path`` a JSON Pointer (RFC 6901) into the
    event (``""`` is the whole event; a missing or unknown field is pointed at by its would-be
    location) and ``message`` a sentence naming the field and what was expected.
    """

    index: int
    path: str
    message: str


class InvalidEvent(ValueError):
    """Raised by the decoding functions when an event breaks the contract."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations: list[Violation] = list(violations)
        super().__init__("; ".join(f"{v.path or '/'}: {v.message}" for v in self.violations))


# Readable names for the patterns the schemas use; a unit test keeps this table and the
# schemas in step, so every pattern violation reads as a sentence rather than a regex.
_PATTERN_HINTS: Mapping[str, str] = MappingProxyType(
    {
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$": (
            "a UUID in lowercase hex, e.g. 3f2b1c9e-8d4a-4e6b-9f1a-2c3d4e5f6a7b"
        ),
        "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        "(\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$": (
            "an RFC 3339 date-time with a timezone offset, e.g. 2026-03-01T12:00:00Z"
        ),
        "^[a-z0-9][a-z0-9._-]{0,63}$": (
            "a project id: 1 to 64 lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        ),
        "^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$": (
            "a name: 1 to 200 letters, digits, '.', '_', '/' or '-',"
            " starting with a letter or digit"
        ),
        "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$": (
            "an id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ),
        "^sha256:[0-9a-f]{64}$": "a digest: 'sha256:' followed by 64 lowercase hex digits",
        "^[a-z][a-z0-9_-]{0,62}$": (
            "1 to 63 lowercase letters, digits, '_' or '-', starting with a letter"
        ),
        "^[0-9a-f]{7,64}$": "a git commit hash: 7 to 64 lowercase hex digits",
        "^(project|dataset|run|model|logged_model|experiment):[^\\s].*$": (
            "'<kind>:<id>' where kind is project, dataset, run, model, logged_model or experiment"
        ),
    }
)

_TYPE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "string": "a string",
        "number": "a number",
        "integer": "an integer",
        "boolean": "a boolean",
        "object": "an object",
        "array": "an array",
        "null": "null",
    }
)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _show(value: object, limit: int = 60) -> str:
    """Render a value as JSON for a message, shortened: it may be a client's megabyte string."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _either(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _plural(count: object, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _resolve(rest: str, node: object) -> list[str] | None:
    """Split a fastjsonschema name suffix (``.metrics[3].value``) into keys, guided by the data.

    The name joins keys with ``.`` and ``[i]`` without escaping, so a parameter called
    ``lr.decay`` is ambiguous on its own; matching against the actual keys resolves it.
    """
    if not rest:
        return []
    if rest[0] == "[" and isinstance(node, list):
        end = rest.find("]")
        digits = rest[1:end]
        if end > 1 and digits.isdigit() and int(digits) < len(node):
            tail = _resolve(rest[end + 1 :], node[int(digits)])
            if tail is not None:
                return [digits, *tail]
    if rest[0] == "." and isinstance(node, Mapping):
        body = rest[1:]
        candidates = [k for k in node if isinstance(k, str) and body.startswith(k)]
        for key in sorted(candidates, key=len, reverse=True):
            after = body[len(key) :]
            if after and after[0] not in ".[":
                continue
            tail = _resolve(after, node[key])
            if tail is not None:
                return [key, *tail]
    return None


def _keys_of(exc: fastjsonschema.JsonSchemaValueException, root: object) -> list[str]:
    name = exc.name or "data"
    suffix = name[4:] if name.startswith("data") else name
    keys = _resolve(suffix, root)
    # Unresolvable only if fastjsonschema changes its naming; its own split is then the best guess.
    return keys if keys is not None else exc.path[1:]


def _pointer(prefix: str, keys: Sequence[str]) -> str:
    return prefix + "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys)


def _label(prefix: str, keys: Sequence[str]) -> str:
    """Name the field at ``keys`` for a message: ``value``, ``metrics[3]``, ``payload``."""
    if not keys:
        return "`payload`" if prefix == "/payload" else "the event"
    last = keys[-1]
    if last.isdigit() and len(keys) > 1:
        parents = [k for k in keys[:-1] if not k.isdigit()] or ["payload"]
        return f"`{parents[-1]}[{last}]`"
    return f"`{last}`"


def _name_problem(name: str, rules: Mapping[str, Any]) -> str | None:
    """Say what is wrong with an object key under a ``propertyNames`` schema, if anything."""
    if "minLength" in rules and len(name) < rules["minLength"]:
        return "must not be empty" if rules["minLength"] == 1 else "is too short"
    if "maxLength" in rules and len(name) > rules["maxLength"]:
        return f"is longer than {rules['maxLength']} characters"
    return None


def _explain(
    exc: fastjsonschema.JsonSchemaValueException, root: object, prefix: str
) -> Iterator[tuple[list[str], str]]:
    """Yield (keys, message) pairs for one fastjsonschema error; keys lead from ``root``."""
    keys = _keys_of(exc, root)
    here = keys
    label = _label(prefix, keys)
    rule = exc.rule or ""
    definition: Mapping[str, Any] = exc.definition if isinstance(exc.definition, Mapping) else {}
    expected = definition.get(rule)
    value = exc.value

    if rule == "required" and isinstance(value, Mapping):
        for field in sorted(set(expected or ()) - value.keys()):
            yield [*keys, field], f"required field `{field}` is missing"
    elif rule == "additionalProperties" and isinstance(value, Mapping):
        allowed = definition.get("properties", {})
        for field in value:
            if field in allowed:
                continue
            field_path = [*keys, str(field)]
            if not keys and prefix == "" and field in _STORE_FIELDS:
                yield field_path, f"`{field}` is assigned by the event store; do not send it"
            else:
                yield field_path, f"unknown field `{field}`"
    elif rule == "dependencies" and isinstance(value, Mapping):
        for field, needs in (expected or {}).items():
            if field in value:
                for need in needs:
                    if need not in value:
                        yield (
                            [*keys, need],
                            f"field `{need}` is required when `{field}` is given",
                        )
    elif rule == "propertyNames" and isinstance(value, Mapping):
        rules = expected if isinstance(expected, Mapping) else {}
        for field in value:
            problem = _name_problem(str(field), rules)
            if problem is not None:
                yield [*keys, str(field)], f"field name in {label} {problem}"
    elif rule == "type":
        types = [expected] if isinstance(expected, str) else list(expected or ())
        wanted = _either([_TYPE_NAMES.get(t, t) for t in types])
        yield here, f"{label} must be {wanted} (got {_json_type(value)})"
    elif rule == "enum":
        yield here, f"{label} is not one of {_show(expected, 1000)} (got {_show(value)})"
    elif rule == "const":
        yield here, f"{label} must be {_show(expected)} (got {_show(value)})"
    elif rule == "pattern":
        hint = _PATTERN_HINTS.get(str(expected))
        wanted = hint if hint is not None else f"a string matching the pattern {expected}"
        yield here, f"{label} must be {wanted} (got {_show(value)})"
    elif rule == "format":
        if expected == "date-time" and isinstance(value, str) and _parse_datetime(value):
            yield here, f"{label} must be a time {TIME_RANGE} (got {_show(value)})"
        else:
            yield here, f"{label} is not a valid {expected} (got {_show(value)})"
    elif rule == "minLength":
        message = (
            "must not be empty" if expected == 1 else f"must be at least {expected} characters"
        )
        yield here, f"{label} {message}"
    elif rule == "maxLength":
        yield here, f"{label} must be at most {expected} characters (got {len(value)})"
    elif rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        yield here, f"{label} must be {op[rule]} {expected} (got {_show(value)})"
    elif rule == "minItems":
        yield here, f"{label} must have at least {_plural(expected, 'item')}"
    elif rule == "maxItems":
        yield here, f"{label} must have at most {_plural(expected, 'item')} (got {len(value)})"
    elif rule == "minProperties":
        yield here, f"{label} must have at least {_plural(expected, 'field')}"
    elif rule == "maxProperties":
        yield here, f"{label} must have at most {_plural(expected, 'field')} (got {len(value)})"
    elif rule == "uniqueItems":
        yield here, f"{label} must not contain duplicate items"
    else:
        yield here, f"{label} is invalid: {exc.message}"


def _document_order(root: object, keys: Sequence[str]) -> tuple[tuple[int, int, str], ...]:
    """Sort key that puts locations in the order the client wrote them.

    fastjsonschema reports unknown fields in set order, which changes from one process to the
    next; a client (and a test) should see the same list for the same event every time. Fields
    that are not there (missing required ones) sort after those that are, by name.
    """
    order: list[tuple[int, int, str]] = []
    node: object = root
    for key in keys:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            order.append((0, int(key), ""))
            node = node[int(key)]
        elif isinstance(node, Mapping) and key in node:
            order.append((0, next(i for i, k in enumerate(node) if k == key), ""))
            node = node[key]
        else:
            order.append((1, 0, key))
            node = None
    return tuple(order)


def schema_violations(
    exc: fastjsonschema.JsonSchemaException, root: object, prefix: str = "", index: int = 0
) -> list[Violation]:
    """The violations a fastjsonschema validator compiled elsewhere (with ``fast_fail=False``)
    found in ``root``, in the contract's words: for adapters that check a foreign format (an
    OpenLineage event) before turning it into events."""
    return _violations(exc, root, prefix, index)


def _violations(
    exc: fastjsonschema.JsonSchemaException, root: object, prefix: str, index: int
) -> list[Violation]:
    if isinstance(exc, fastjsonschema.JsonSchemaValuesException):
        errors = exc.errors
    elif isinstance(exc, fastjsonschema.JsonSchemaValueException):
        errors = [exc]
    else:  # pragma: no cover - the compiled validators raise only the two above
        raise exc
    found: dict[tuple[str, ...], str] = {}
    for error in errors:
        explained = list(_explain(error, root, prefix))
        if not explained:  # e.g. a propertyNames rule without a readable explanation
            explained = [(_keys_of(error, root), error.message)]
        for keys, message in explained:
            # One problem per location: a bad UUID fails both its pattern and its format.
            found.setdefault(tuple(keys), message)
    ordered = sorted(found, key=lambda keys: _document_order(root, keys))
    out = [Violation(index, _pointer(prefix, keys), found[keys]) for keys in ordered]
    if len(out) > MAX_VIOLATIONS_PER_EVENT:
        hidden = len(out) - MAX_VIOLATIONS_PER_EVENT
        out = out[:MAX_VIOLATIONS_PER_EVENT]
        out.append(Violation(index, "", f"{hidden} more violations not shown"))
    return out


# --------------------------------------------------------------------------- subjects

_PROJECT_ID = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}"
_RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SUBJECT_SHAPES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "project": (f"project:{_PROJECT_ID}", "'project:<project id>'"),
        "dataset": (f"dataset:{_NAME}", "'dataset:<dataset name>'"),
        "run": (f"run:{_RUN_ID}", "'run:<run id>'"),
        "model": (f"model:{_NAME}", "'model:<model name>'"),
        "logged_model": (f"logged_model:{_RUN_ID}", "'logged_model:<logged model id>'"),
        "experiment": (f"experiment:{_RUN_ID}", "'experiment:<experiment id>'"),
    }
)


def _subject_rule(event_type: str) -> tuple[re.Pattern[str], str]:
    family = event_type.partition(".")[0]
    if family in _SUBJECT_SHAPES:
        shape, hint = _SUBJECT_SHAPES[family]
        return re.compile(shape), hint
    # annotation.added, subject.redacted, openlineage.event.reported and artifact.stored are
    # about any aggregate.
    shapes = [shape for shape, _hint in _SUBJECT_SHAPES.values()]
    hints = [hint for _shape, hint in _SUBJECT_SHAPES.values()]
    return re.compile("|".join(shapes)), _either(hints)


# Which aggregate a type's events belong to, and the shape of its id. JSON Schema could say this
# with an if/then per family, but fastjsonschema evaluates a failing `if` by raising an
# exception: that made envelope validation three times slower than this lookup.
_SUBJECT_RULES: Mapping[str, tuple[re.Pattern[str], str]] = MappingProxyType(
    {event_type: _subject_rule(event_type) for event_type in EVENT_TYPES}
)


def _subject_violation(event: Mapping[str, Any], index: int) -> Violation | None:
    event_type: str = event["type"]
    subject: str = event["subject"]
    rule, hint = _SUBJECT_RULES[event_type]
    if rule.fullmatch(subject) is None:
        message = f"`subject` must be {hint} for `{event_type}` events (got {_show(subject)})"
        return Violation(index, "/subject", message)
    if event_type.startswith("project.") and subject != "project:" + event["project"]:
        expected = _show("project:" + event["project"])
        message = f"`subject` of a project event must be {expected} (got {_show(subject)})"
        return Violation(index, "/subject", message)
    return None


# --------------------------------------------------------------------------- validation


def _too_deep(root: object, limit: int = MAX_DEPTH) -> list[str] | None:
    """The keys leading to the first container nested deeper than ``limit``, or None."""
    stack: list[tuple[object, list[str]]] = [(root, [])]
    while stack:
        node, keys = stack.pop()
        if len(keys) > limit:
            return keys
        if isinstance(node, dict):
            stack.extend(
                (v, [*keys, str(k)]) for k, v in node.items() if isinstance(v, dict | list)
            )
        elif isinstance(node, list):
            stack.extend(
                (v, [*keys, str(i)]) for i, v in enumerate(node) if isinstance(v, dict | list)
            )
    return None


def validate_event(raw: object, index: int = 0) -> list[Violation]:
    """Check one event (as parsed from JSON) against the contract; return [] when it is valid.

    The envelope is checked first; the payload is checked against ``<type>.v<schema_version>``
    only once the envelope is valid. ``index`` is copied into every violation.
    """
    try:
        _validator("envelope")(raw)
    except fastjsonschema.JsonSchemaException as exc:
        return _violations(exc, raw, "", index)
    event = cast(dict[str, Any], raw)
    subject_problem = _subject_violation(event, index)
    if subject_problem is not None:
        return [subject_problem]
    event_type: str = event["type"]
    # JSON Schema counts 1.0 as an integer, and so does fastjsonschema.
    version = int(event["schema_version"])
    if version > CURRENT_VERSIONS[event_type]:
        known = ", ".join(str(v) for v in known_versions(event_type))
        message = (
            f"`schema_version` {version} is not known for `{event_type}`; known versions: {known}"
        )
        return [Violation(index, "/schema_version", message)]
    payload = event["payload"]
    if event_type == "run.metrics.logged" and version == 1 and _metrics_v1_fast_ok(payload):
        return []  # a batch in the common shape is flat: no depth to check
    deep = _too_deep(payload)
    if deep is not None:
        message = f"is nested more than {MAX_DEPTH} levels deep: flatten it"
        return [
            Violation(index, _pointer("/payload", deep), f"{_label('/payload', deep)} {message}")
        ]
    try:
        _validator(f"{event_type}.v{version}")(payload)
    except fastjsonschema.JsonSchemaException as exc:
        return _violations(exc, payload, "/payload", index)
    return []


# The metric batch is most of the traffic (thousands of points per event), and the generated
# validator spends most of its time there. This check accepts exactly what
# run.metrics.logged.v1 accepts in the common shape (a test compares the two on many payloads);
# anything it does not accept goes to the generated validator, which says what is wrong.
_POINT_FIELDS = frozenset({"key", "value", "step", "timestamp"})
_INT64_MAX = 2**63 - 1


@functools.cache
def _metric_schema() -> tuple[re.Pattern[str], int, int]:
    metrics = _load_schema("run.metrics.logged.v1")["properties"]["metrics"]
    stamp = metrics["items"]["properties"]["timestamp"]["pattern"]
    return (
        re.compile(stamp),
        metrics["maxItems"],
        metrics["items"]["properties"]["key"]["maxLength"],
    )


def _metrics_v1_fast_ok(payload: object) -> bool:
    if type(payload) is not dict or len(payload) != 1:
        return False
    metrics = payload.get("metrics")
    stamp_pattern, max_items, max_key = _metric_schema()
    if type(metrics) is not list or not 1 <= len(metrics) <= max_items:
        return False
    fields = _POINT_FIELDS
    good_stamp: object = None
    good_second: object = None
    for m in metrics:
        if type(m) is not dict:
            return False
        key, value = m.get("key"), m.get("value")
        if type(key) is not str or not 1 <= len(key) <= max_key:
            return False
        if type(value) is not float and type(value) is not int:
            return False
        if len(m) == 2:
            continue  # key and value, nothing else
        if not m.keys() <= fields:
            return False
        if "step" in m:
            step = m["step"]
            if type(step) is not int or not 0 <= step <= _INT64_MAX:
                return False
        if "timestamp" in m:
            stamp = m["timestamp"]
            if stamp != good_stamp:  # points logged together share their timestamp
                if type(stamp) is not str or not stamp_pattern.search(stamp):
                    return False
                # Points logged one by one differ in their fraction of a second: a second whose
                # every instant is valid and in range needs parsing once.
                second = (stamp[:19], "Z" if stamp[-1] == "Z" else stamp[-6:])
                if second != good_second:
                    if not _is_datetime(stamp):
                        return False
                    if _whole_second_valid(*second):
                        good_second = second
                good_stamp = stamp
    return True


def _whole_second_valid(prefix: str, offset: str) -> bool:
    """Whether every instant of the second ``prefix`` (``YYYY-MM-DDTHH:MM:SS``) at ``offset``
    is a valid time in range, whatever its fraction."""
    start = _parse_datetime(prefix + ("+00:00" if offset == "Z" else offset))
    if start is None:
        return False
    return in_time_range(start) and in_time_range(start + timedelta(microseconds=999_999))


def validate_batch(raws: Sequence[object]) -> list[Violation]:
    """Check a batch of events; return the violations of all of them, each with its index."""
    violations: list[Violation] = []
    for index, raw in enumerate(raws):
        violations.extend(validate_event(raw, index))
    return violations


# --------------------------------------------------------------------------- upcasting

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _run_started_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """run.started v1 -> v2: the top-level ``host`` moves into ``environment.host``."""
    out = dict(payload)
    if "host" in out:
        environment = dict(out.get("environment") or {})
        environment["host"] = out.pop("host")
        out["environment"] = environment
    return out


def _only_adds_optional_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A version that only adds optional fields: the old payload is valid as it is.

    run.started v2 -> v3 (command line, working directory, diff, reproduces) and
    dataset.version.created v1 -> v2 (source); an old run lacks them, and `studbook reproduce`
    says so.
    """
    return dict(payload)


# Keyed by (type, from_version); each is a pure function from payload v to payload v + 1.
UPCASTERS: Mapping[tuple[str, int], Upcaster] = MappingProxyType(
    {
        ("run.started", 1): _run_started_v1_to_v2,
        ("run.started", 2): _only_adds_optional_fields,
        ("dataset.version.created", 1): _only_adds_optional_fields,
    }
)


def upcast(event: dict[str, Any]) -> dict[str, Any]:
    """Return ``event`` (a valid wire envelope) at the current schema version of its type.

    Registered upcasters are applied in sequence (v1 -> v2 -> ...). The input is never
    mutated; when it is already current it is returned as is, not copied.
    """
    event_type: str = event["type"]
    version = int(event["schema_version"])
    current = CURRENT_VERSIONS[event_type]
    if version == current:
        return event
    if version > current:
        raise ValueError(f"{event_type} v{version} is newer than the current v{current}")
    payload: dict[str, Any] = event["payload"]
    while version < current:
        try:
            step = UPCASTERS[(event_type, version)]
        except KeyError:
            raise LookupError(f"no upcaster for {event_type} v{version}") from None
        payload = step(payload)
        version += 1
    return {**event, "schema_version": version, "payload": payload}


# --------------------------------------------------------------------------- integers

# Path steps that stand for "every array item" and "every value of a free-form object".
_ITEMS = "\x00items"
_VALUES = "\x00values"
_Path = tuple[str, ...]


def _walk_integers(schema: Mapping[str, Any], prefix: _Path) -> Iterator[_Path]:
    types = schema.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        yield prefix
    for key, sub in schema.get("properties", {}).items():
        yield from _walk_integers(sub, (*prefix, key))
    if isinstance(schema.get("items"), Mapping):
        yield from _walk_integers(schema["items"], (*prefix, _ITEMS))
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _walk_integers(schema["additionalProperties"], (*prefix, _VALUES))


@functools.cache
def _integer_paths(name: str) -> tuple[_Path, ...]:
    """Where the payload schema ``name`` expects integers."""
    return tuple(_walk_integers(_load_schema(name), ()))


def _integral_floats_to_int(root: Any, path: _Path) -> None:
    """Turn ``1.0`` into ``1`` wherever ``path`` leads in ``root``, in place.

    JSON Schema counts 1.0 as an integer, so validation lets it through; the read models want a
    Python int (asyncpg refuses a float for a bigint column). Breadth-first over plain lists,
    because a metrics batch holds up to 10,000 items and this runs for every event.
    """
    nodes: list[Any] = [root]
    for step in path[:-1]:
        below: list[Any] = []
        for node in nodes:
            if step == _ITEMS:
                if isinstance(node, list):
                    below.extend(node)
            elif step == _VALUES:
                if isinstance(node, dict):
                    below.extend(node.values())
            elif isinstance(node, dict) and step in node:
                below.append(node[step])
        nodes = below
    last = path[-1]
    for node in nodes:
        if last == _ITEMS:
            if isinstance(node, list):
                for position, value in enumerate(node):
                    if type(value) is float:
                        node[position] = int(value)
        elif last == _VALUES:
            if isinstance(node, dict):
                for key, value in node.items():
                    if type(value) is float:
                        node[key] = int(value)  # replaces a value: safe while iterating
        elif isinstance(node, dict):
            value = node.get(last)
            if type(value) is float:
                node[last] = int(value)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event at the current schema version of its type.

    ``occurred_at`` is timezone-aware; ``payload`` follows the current payload schema.
    """

    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    actor: str
    project: str
    subject: str
    payload: dict[str, Any]
    correlation_id: str | None = None
    causation_id: str | None = None
    producer: dict[str, str] | None = None

    @property
    def subject_kind(self) -> str:
        """The aggregate kind of the subject: ``run`` for ``run:abc``."""
        return self.subject.partition(":")[0]

    @property
    def subject_key(self) -> str:
        """The aggregate id within its kind: ``abc`` for ``run:abc``."""
        return self.subject.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        """Return the wire envelope: JSON-ready, optional fields left out when unset."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "schema_version": self.schema_version,
            "occurred_at": _format_datetime(self.occurred_at),
            "actor": self.actor,
            "project": self.project,
            "subject": self.subject,
            "payload": self.payload,
        }
        if self.correlation_id is not None:
            out["correlation_id"] = self.correlation_id
        if self.causation_id is not None:
            out["causation_id"] = self.causation_id
        if self.producer is not None:
            out["producer"] = self.producer
        return out


def _format_datetime(value: datetime) -> str:
    text = value.isoformat()
    # RFC 3339 spells UTC `Z`; isoformat spells it +00:00.
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def event_from_dict(raw: object, index: int = 0) -> Event:
    """Validate and upcast an event parsed from JSON; raise :class:`InvalidEvent` if invalid.

    The event shares its payload with ``raw``, whose integral floats in integer fields
    (``"step": 1.0``) are turned into ints in place: the same JSON value, the Python type the
    read models need.
    """
    violations = validate_event(raw, index)
    if violations:
        raise InvalidEvent(violations)
    doc = cast(dict[str, Any], raw)
    version = doc["schema_version"] = int(doc["schema_version"])
    for path in _integer_paths(f"{doc['type']}.v{version}"):
        _integral_floats_to_int(doc["payload"], path)
    doc = upcast(doc)
    return Event(
        event_id=doc["event_id"],
        type=doc["type"],
        schema_version=doc["schema_version"],
        # Normalised to UTC; validation has checked that it has a UTC value.
        occurred_at=datetime.fromisoformat(doc["occurred_at"]).astimezone(UTC),
        actor=doc["actor"],
        project=doc["project"],
        subject=doc["subject"],
        payload=doc["payload"],
        correlation_id=doc.get("correlation_id"),
        causation_id=doc.get("causation_id"),
        producer=doc.get("producer"),
    )


def decode_event(data: bytes | bytearray | memoryview | str, index: int = 0) -> Event:
    """Parse, validate and upcast one JSON-encoded event; raise :class:`InvalidEvent` if invalid."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent([Violation(index, "", f"not valid JSON: {exc}")]) from None
    return event_from_dict(raw, index)


def encode_event(event: Event) -> bytes:
    """Encode an event as its JSON wire envelope."""
    return orjson.dumps(event.to_dict())

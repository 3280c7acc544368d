"""The OpenLineage spec (vendored in `spec/`, see its README) and validation against it.

An event is checked against the core spec's definition for its kind (RunEvent, DatasetEvent or
JobEvent, told apart by the fields it has, so that a problem is reported as the field it is
rather than as "matches none of three definitions"), then each facet Studbook maps onto its own
fields is checked against that facet's schema. Problems are :class:`Violation` records naming
the field by JSON Pointer, in the words the event contract uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import fastjsonschema
import orjson

from studbook_server.domain.contract import Violation, schema_violations

SPEC_VERSION = "2-0-2"
CORE_URL = f"https://openlineage.io/spec/{SPEC_VERSION}/OpenLineage.json"
SPEC_DIR = Path(__file__).with_name("spec")
KINDS = ("RunEvent", "DatasetEvent", "JobEvent")

# The facets the mapping reads, per place in an event, each validated by its own schema file.
RUN_FACETS = ("ParentRunFacet", "ErrorMessageRunFacet", "TagsRunFacet")
JOB_FACETS = ("SourceCodeLocationJobFacet", "SourceCodeJobFacet", "JobTypeJobFacet", "TagsJobFacet")
DATASET_FACETS = ("SchemaDatasetFacet", "DatasetVersionDatasetFacet", "DocumentationDatasetFacet")
OUTPUT_FACETS = ("OutputStatisticsOutputDatasetFacet",)

_Validator = Callable[[Any], Any]


@functools.cache
def _document(name: str) -> Mapping[str, Any]:
    doc = orjson.loads((SPEC_DIR / f"{name}.json").read_bytes())
    if not isinstance(doc, dict):  # pragma: no cover - the vendored files are objects
        raise TypeError(f"{SPEC_DIR / name}.json does not hold a JSON object")
    return cast(Mapping[str, Any], _inline_single_any_of(doc))


def _inline_single_any_of(node: Any) -> Any:
    """Copy a schema with every one-element ``anyOf`` merged into its parent.

    The spec wraps each facets object in ``anyOf: [{additionalProperties: <Facet>}]``; the
    meaning is the same without the wrapper, but fastjsonschema then names the field inside a
    bad facet instead of saying only that the facets object matches no alternative.
    """
    if isinstance(node, list):
        return [_inline_single_any_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _inline_single_any_of(value) for key, value in node.items()}
    alternatives = out.get("anyOf")
    if isinstance(alternatives, list) and len(alternatives) == 1:
        only = alternatives[0]
        if isinstance(only, dict) and not (set(only) - {"type"}) & set(out):
            del out["anyOf"]
            out.update(only)
    return out


def _resolve(uri: str) -> Mapping[str, Any]:
    """Remote references resolve to the vendored files only: validation never goes online."""
    if uri.partition("#")[0] == CORE_URL:
        return _document("OpenLineage")
    raise fastjsonschema.JsonSchemaDefinitionException(f"unknown schema reference {uri}")


def _compile(schema: Mapping[str, Any]) -> _Validator:
    return cast(
        _Validator,
        fastjsonschema.compile(
            dict(schema),
            handlers={"https": _resolve},
            use_default=False,
            fast_fail=False,
        ),
    )


@functools.cache
def _event_validator(kind: str) -> _Validator:
    core = _document("OpenLineage")
    return _compile({"$schema": core["$schema"], "$defs": core["$defs"], "$ref": f"#/$defs/{kind}"})


@functools.cache
def _facet_validator(name: str) -> _Validator:
    return _compile(_document(name))


def kind_of(event: Mapping[str, Any]) -> str:
    """RunEvent (it has a run or an eventType), DatasetEvent (a dataset) or JobEvent."""
    if "run" in event or "eventType" in event:
        return "RunEvent"
    if "dataset" in event:
        return "DatasetEvent"
    return "JobEvent"


def _facet_places(
    kind: str, event: Mapping[str, Any]
) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    """(pointer, facets object, the facet schemas that apply) for every facets object."""
    if kind == "RunEvent":
        yield "/run/facets", (event.get("run") or {}).get("facets"), RUN_FACETS
    if kind in ("RunEvent", "JobEvent"):
        yield "/job/facets", (event.get("job") or {}).get("facets"), JOB_FACETS
        for side in ("inputs", "outputs"):
            for i, dataset in enumerate(event.get(side) or []):
                yield f"/{side}/{i}/facets", dataset.get("facets"), DATASET_FACETS
                if side == "outputs":
                    yield f"/{side}/{i}/outputFacets", dataset.get("outputFacets"), OUTPUT_FACETS
    if kind == "DatasetEvent":
        yield "/dataset/facets", (event.get("dataset") or {}).get("facets"), DATASET_FACETS


def _live(facets: Mapping[str, Any]) -> dict[str, Any]:
    """The facets not being deleted: a `_deleted` facet carries no fields to check."""
    return {
        name: facet
        for name, facet in facets.items()
        if not (isinstance(facet, Mapping) and facet.get("_deleted") is True)
    }


def violations(event: object) -> list[Violation]:
    """Where ``event`` (parsed JSON) breaks the OpenLineage spec; [] when it does not."""
    if not isinstance(event, dict):
        return [Violation(0, "", "an OpenLineage event must be a JSON object")]
    kind = kind_of(event)
    try:
        _event_validator(kind)(event)
    except fastjsonschema.JsonSchemaException as exc:
        found = schema_violations(exc, event)
        return [Violation(v.index, v.path, f"{v.message} ({kind} {SPEC_VERSION})") for v in found]
    out: list[Violation] = []
    for pointer, facets, schemas in _facet_places(kind, event):
        if not isinstance(facets, dict):
            continue
        live = _live(facets)
        for name in schemas:
            try:
                _facet_validator(name)(live)
            except fastjsonschema.JsonSchemaException as exc:
                out += schema_violations(exc, live, pointer)
    return out

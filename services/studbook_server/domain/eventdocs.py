"""The event reference (`docs/events.md`), generated from `schema/events/`.

    python -m studbook_server.domain.eventdocs > docs/events.md

A test fails when the checked-in file differs from what this renders.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from studbook_server.domain.contract import CURRENT_VERSIONS, known_versions, schema_path


def _type_of(node: Mapping[str, Any]) -> str:
    t = node.get("type")
    if isinstance(t, list):
        return " or ".join(str(x) for x in t)
    if t == "array":
        items = node.get("items", {})
        return f"array of {_type_of(items)}" if isinstance(items, Mapping) else "array"
    if t is None and "oneOf" in node:
        return " or ".join(_type_of(o) for o in node["oneOf"])
    return str(t or "any")


def _rules(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, word in (("minimum", ">="), ("maximum", "<=")):
        if key in node and not (key == "maximum" and node[key] >= 2**31 - 1):
            parts.append(f"{word} {node[key]}")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if "default" in node:
        parts.append(f"default `{json.dumps(node['default'])}`")
    return "; ".join(parts)


def _rows(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        desc = " ".join(str(prop.get("description", "")).split())
        rules = _rules(prop)
        cell = f"{desc} ({rules})" if rules else desc
        req = "yes" if name in required else ""
        yield f"| `{path}` | {_type_of(prop)} | {req} | {cell.replace('|', '/')} |"
        if prop.get("type") == "object" and "properties" in prop:
            yield from _rows(prop, f"{path}.")
        items = prop.get("items")
        if isinstance(items, Mapping) and "properties" in items:
            yield from _rows(items, f"{path}[].")


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(schema_path(name).read_text())
    return data


def render() -> str:
    out = [
        "# Event reference",
        "",
        "Generated from `schema/events/` by `python -m studbook_server.domain.eventdocs`; do not "
        "edit by hand.",
        "",
        "## Envelope",
        "",
    ]
    env = _load("envelope")
    out += [
        str(env.get("description", "")),
        "",
        "| field | type | required | meaning |",
        "|---|---|---|---|",
    ]
    out += list(_rows(env))
    for event_type in CURRENT_VERSIONS:
        current = CURRENT_VERSIONS[event_type]
        schema = _load(f"{event_type}.v{current}")
        versions = ", ".join(f"v{v}" for v in known_versions(event_type))
        out += ["", f"## `{event_type}` (v{current}; accepted: {versions})", ""]
        out += [str(schema.get("description", "")), ""]
        rows = list(_rows(schema))
        if rows:
            out += ["| field | type | required | meaning |", "|---|---|---|---|", *rows]
        else:
            out += ["No payload fields."]
        for example in schema.get("examples", [])[:1]:
            out += ["", "```json", json.dumps(example, indent=2), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

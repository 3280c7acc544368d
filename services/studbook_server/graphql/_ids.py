"""Global ids (`<project>/<kind>:<key>`) and opaque pagination cursors.

Every entity's `id` names its project, so one id is enough to find it and to check access:
`churn/run:run-1`, `churn/dataset_version:events@v1`, `churn/model_version:churn-clf@2`,
`churn/deployment:churn-clf/prod`, `churn/model:churn-clf`, `churn/dataset:events`,
`churn/project:churn`. The part after the project is the read models' lineage node id (or the
event store's subject), so ids read the same everywhere.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import orjson

from studbook_server.graphql._errors import BadInput

KINDS = ("project", "dataset", "dataset_version", "run", "model", "model_version", "deployment")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
EXAMPLES = {
    "project": "churn/project:churn",
    "dataset": "churn/dataset:events",
    "dataset_version": "churn/dataset_version:events@v1",
    "run": "churn/run:run-1",
    "model": "churn/model:churn-clf",
    "model_version": "churn/model_version:churn-clf@2",
    "deployment": "churn/deployment:churn-clf/prod",
}


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed global id."""

    project: str
    kind: str
    key: str

    @property
    def node(self) -> str:
        """The id within the project: the lineage node id or event subject."""
        return f"{self.kind}:{self.key}"

    @property
    def id(self) -> str:
        return f"{self.project}/{self.kind}:{self.key}"

    def split(self, sep: str) -> tuple[str, str]:
        """``key`` cut at the last ``sep``: (dataset, version), (model, number), (model, env)."""
        head, _, tail = self.key.rpartition(sep)
        return head, tail

    @property
    def number(self) -> int:
        """The version number of a model_version id."""
        return int(self.split("@")[1])


def gid(project: str, node: str) -> str:
    return f"{project}/{node}"


def parse(text: str, *kinds: str, what: str = "id") -> Ref:
    """Parse a global id, requiring one of ``kinds`` (any kind when none are given)."""
    allowed = kinds or KINDS
    project, slash, node = text.partition("/")
    kind, colon, key = node.partition(":")
    example = " or ".join(f"`{EXAMPLES[k]}`" for k in allowed[:3])
    if not (slash and colon and key and _PROJECT.match(project)) or kind not in KINDS:
        raise BadInput(
            f"{what} `{text}` is not an id: expected `<project>/<kind>:<key>`, e.g. {example}"
        )
    if kind not in allowed:
        raise BadInput(f"{what} `{text}` names a {kind}; expected {example}")
    ref = Ref(project, kind, key)
    if kind in ("dataset_version", "model_version"):
        head, tail = ref.split("@")
        if not head or not tail or (kind == "model_version" and not tail.isdigit()):
            raise BadInput(f"{what} `{text}` is not a {kind} id, e.g. `{EXAMPLES[kind]}`")
    elif kind == "deployment":
        head, tail = ref.split("/")
        if not head or not tail:
            raise BadInput(f"{what} `{text}` is not a deployment id, e.g. `{EXAMPLES[kind]}`")
    return ref


def node_kind(node: str) -> str:
    return node.partition(":")[0]


# ----------------------------------------------------------------------------------- cursors


def cursor(*values: Any) -> str:
    """An opaque cursor holding a sort key (JSON-encodable values)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def uncursor(text: str | None, *types: type | tuple[type, ...]) -> list[Any] | None:
    """Decode a cursor made by :func:`cursor`, checking its shape against ``types``."""
    if text is None:
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadInput(f"`after` is not a cursor from this API: {text!r}") from exc
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(isinstance(v, t) for v, t in zip(values, types, strict=True))
    ):
        raise BadInput(f"`after` is not a cursor for this list: {text!r}")
    return values

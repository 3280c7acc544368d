"""MLflow's search filter grammar, parsed with lark, translated to parameterised SQL.

`metrics.auc > 0.9 AND params.model = 'cnn' AND tags.\\`team name\\` LIKE 'vis%'
AND attributes.status IN ('FINISHED', 'FAILED') AND datasets.digest = 'abc'`: comparisons joined
by AND; keys are `<entity>.<name>` (entities `metrics`/`metric`, `params`/`param`, `tags`/`tag`,
`attributes`/`attribute`/`attr`/`run`, `datasets`/`dataset`), names bare, backquoted or
double-quoted; a bare name is an attribute; values are strings ('...' or "...") or numbers.
Nothing of the filter text reaches SQL except through parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedInput, VisitError

from studbook_server.mlflow._errors import MlflowError, invalid

_GRAMMAR = r"""
start: cond (AND cond)*

cond: key CMP value                         -> compare
    | key LIKE value                        -> compare
    | key ILIKE value                       -> compare
    | key NOT? IN "(" value ("," value)* ","? ")" -> in_list
    | key IS NOT? NULL                      -> is_null

key: KEY
value: STRING | NUMBER

AND.3: /and(?![A-Za-z0-9_.])/i
OR.3: /or(?![A-Za-z0-9_.])/i
NOT.3: /not(?![A-Za-z0-9_.])/i
IN.3: /in(?![A-Za-z0-9_.])/i
IS.3: /is(?![A-Za-z0-9_.])/i
NULL.3: /null(?![A-Za-z0-9_.])/i
LIKE.3: /like(?![A-Za-z0-9_.])/i
ILIKE.3: /ilike(?![A-Za-z0-9_.])/i
CMP: "<=" | ">=" | "!=" | "<>" | "==" | "=" | "<" | ">"
KEY: /[A-Za-z_][A-Za-z0-9_]*(\.(`[^`]+`|"[^"]+"|[^\s=!<>(),'"`]+))?/
   | /`[^`]+`/
STRING: /'(?:[^'\\]|\\.|'')*'/ | /"(?:[^"\\]|\\.)*"/
NUMBER: /[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/

%ignore /\s+/
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="contextual")
_OR = re.compile(r"or(?![A-Za-z0-9_.])", re.IGNORECASE)
_ORDER_KEY = re.compile(_PARSER.get_terminal("KEY").pattern.to_regexp())

ENTITIES = {
    "metrics": "metric", "metric": "metric",
    "params": "param", "param": "param", "parameters": "param", "parameter": "param",
    "tags": "tag", "tag": "tag",
    "attributes": "attribute", "attribute": "attribute", "attr": "attribute", "run": "attribute",
    "datasets": "dataset", "dataset": "dataset",
}  # fmt: skip
NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL")


@dataclass(frozen=True)
class Comparison:
    entity: str  # metric | param | tag | attribute | dataset
    key: str
    op: str  # =, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN, IS NULL, IS NOT NULL
    value: Any = None  # str | float | list of those | None


def _unquote_name(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in '`"':
        return name[1:-1]
    return name


def _key(text: str) -> tuple[str, str]:
    if text.startswith("`"):
        text = text[1:-1]  # a whole backquoted key: `metrics.train loss`
    head, dot, rest = text.partition(".")
    if not dot:
        return "attribute", head
    entity = ENTITIES.get(head.lower())
    if entity is None:
        raise invalid(
            f"Invalid entity type '{head}' in filter key '{text}': expected one of metrics, "
            "params, tags, attributes, datasets"
        )
    return entity, _unquote_name(rest)


def _value(token: Token) -> str | float:
    text = str(token)
    if token.type == "NUMBER":
        return float(text)
    body = text[1:-1]
    if text[0] == "'":
        body = body.replace("''", "'")
    return body.replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")


class _Build(Transformer[Token, list[Comparison]]):
    def start(self, items: list[Any]) -> list[Comparison]:
        return [i for i in items if isinstance(i, Comparison)]

    def key(self, items: list[Token]) -> tuple[str, str]:
        return _key(str(items[0]))

    def value(self, items: list[Token]) -> str | float:
        return _value(items[0])

    def compare(self, items: list[Any]) -> Comparison:
        (entity, key), op, value = items
        op_text = str(op).upper()
        op_text = {"==": "=", "<>": "!="}.get(op_text, op_text)
        return Comparison(entity, key, op_text, value)

    def in_list(self, items: list[Any]) -> Comparison:
        (entity, key), *rest = items
        negated = any(isinstance(t, Token) and t.type == "NOT" for t in rest)
        values = [v for v in rest if not isinstance(v, Token)]
        return Comparison(entity, key, "NOT IN" if negated else "IN", values)

    def is_null(self, items: list[Any]) -> Comparison:
        (entity, key), *rest = items
        negated = any(isinstance(t, Token) and t.type == "NOT" for t in rest)
        return Comparison(entity, key, "IS NOT NULL" if negated else "IS NULL")


def parse(text: str | None) -> list[Comparison]:
    """The comparisons of a filter (all must hold); a clear 400 for anything else."""
    if text is None or not text.strip():
        return []
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        at = exc.pos_in_stream or 0
        if _OR.match(text, at):
            raise invalid(
                f"Invalid filter '{text}': OR is not supported; join comparisons with AND"
            ) from None
        where = exc.get_context(text, 30).rstrip()
        raise invalid(
            f"Invalid filter '{text}' at position {exc.column}: expected "
            "`<entity>.<key> <operator> <value>` joined by AND, e.g. "
            f"\"metrics.acc > 0.9 AND params.model = 'cnn'\"\n{where}"
        ) from None
    except LarkError as exc:
        raise invalid(f"Invalid filter '{text}': {exc}") from None
    try:
        comparisons = _Build().transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, MlflowError):
            raise exc.orig_exc from None
        raise
    for c in comparisons:
        _check(c)
    return comparisons


def _check(c: Comparison) -> None:
    values = c.value if isinstance(c.value, list) else [c.value]
    if c.entity == "metric":
        if c.op not in (*NUMERIC_OPS, "IS NULL", "IS NOT NULL"):
            raise invalid(f"Invalid comparator '{c.op}' for metric '{c.key}': use one of "
                          f"{', '.join(NUMERIC_OPS)}")  # fmt: skip
        if c.op in NUMERIC_OPS and not isinstance(c.value, float):
            raise invalid(f"Expected a number for metric '{c.key}'; got {c.value!r}")
        return
    if c.entity in ("param", "tag", "dataset") or c.key not in NUMERIC_ATTRIBUTES:
        if c.op not in STRING_OPS:
            raise invalid(f"Invalid comparator '{c.op}' for {c.entity} '{c.key}': use one of "
                          f"{', '.join(STRING_OPS)}")  # fmt: skip
        if c.op not in ("IS NULL", "IS NOT NULL") and not all(isinstance(v, str) for v in values):
            raise invalid(
                f"Expected a quoted string value for {c.entity} '{c.key}'; got {c.value!r}"
            )
    elif c.op not in (*NUMERIC_OPS, "IS NULL", "IS NOT NULL") or (
        c.op in NUMERIC_OPS and not isinstance(c.value, float)
    ):
        raise invalid(f"Expected a numeric comparison for attribute '{c.key}'; got "
                      f"{c.op} {c.value!r}")  # fmt: skip


NUMERIC_ATTRIBUTES = frozenset({"start_time", "end_time", "creation_time", "last_update_time"})


# ----------------------------------------------------------------------------- to SQL


@dataclass
class Sql:
    """Parameter list of a query being built: ``add`` returns the placeholder."""

    args: list[Any] = field(default_factory=list)

    def add(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


_STATUS = (
    "(CASE r.status WHEN 'running' THEN 'RUNNING' WHEN 'completed' THEN 'FINISHED' "
    "WHEN 'failed' THEN 'FAILED' WHEN 'killed' THEN 'KILLED' ELSE upper(r.status) END)"
)


def _tag_value(key: str, sql: Sql) -> str:
    return (
        f"(SELECT t.value FROM rm.run_tags t WHERE t.project = r.project AND t.run_id = r.run_id "
        f"AND t.key = {sql.add(key)})"
    )


def run_attribute(key: str, sql: Sql) -> str:
    """The SQL expression of a run attribute over `rm.runs r`."""
    if key in ("run_id", "run_uuid", "id"):
        return "r.run_id"
    if key in ("run_name", "name"):
        return f"coalesce({_tag_value('mlflow.runName', sql)}, r.name)"
    if key == "status":
        return _STATUS
    if key in ("user_id", "user"):
        return f"coalesce({_tag_value('mlflow.user', sql)}, r.actor)"
    if key in ("start_time", "created"):
        return "(extract(epoch FROM r.started_at) * 1000)::bigint"
    if key == "end_time":
        return "(extract(epoch FROM r.finished_at) * 1000)::bigint"
    if key == "lifecycle_stage":
        return (
            "coalesce((SELECT l.lifecycle_stage FROM rm.run_lifecycle l WHERE l.project = "
            "r.project AND l.run_id = r.run_id), 'active')"
        )
    if key == "experiment_id":
        return "coalesce(r.experiment, '0')"
    if key == "artifact_uri":
        return (
            "('mlflow-artifacts:/' || coalesce(r.experiment, '0') || '/' || r.run_id "
            "|| '/artifacts')"
        )
    raise invalid(
        f"Invalid attribute key '{key}': expected one of run_id, run_name, status, user_id, "
        "start_time, end_time, lifecycle_stage, artifact_uri"
    )


def op_sql(expr: str, c: Comparison, sql: Sql) -> str:
    if c.op == "IS NULL":
        return f"{expr} IS NULL"
    if c.op == "IS NOT NULL":
        return f"{expr} IS NOT NULL"
    if c.op in ("IN", "NOT IN"):
        values = c.value if isinstance(c.value, list) else [c.value]
        kind = "float8" if values and isinstance(values[0], float) else "text"
        placeholder = sql.add(values)
        neg = "NOT " if c.op == "NOT IN" else ""
        return f"{neg}({expr} = ANY({placeholder}::{kind}[]))"
    if c.op == "LIKE":
        return f"{expr} LIKE {sql.add(c.value)}"
    if c.op == "ILIKE":
        return f"{expr} ILIKE {sql.add(c.value)}"
    value = sql.add(c.value)
    return f"{expr} {c.op} {value}"


def _exists(table: str, column: str, c: Comparison, sql: Sql) -> str:
    key = sql.add(c.key)
    base = (f"SELECT 1 FROM rm.{table} x WHERE x.project = r.project AND x.run_id = r.run_id "
            f"AND x.key = {key}")  # fmt: skip
    if c.op == "IS NULL":
        return f"NOT EXISTS ({base})"
    if c.op == "IS NOT NULL":
        return f"EXISTS ({base})"
    return f"EXISTS ({base} AND {op_sql(column, c, sql)})"


_DATASET_FIELDS = {"name": "name", "digest": "digest", "context": "context"}


def _dataset(c: Comparison, sql: Sql) -> str:
    if c.key not in _DATASET_FIELDS:
        raise invalid(f"Invalid dataset key '{c.key}': expected one of name, digest, context")
    expr = f"(v.schema -> 'mlflow' ->> '{_DATASET_FIELDS[c.key]}')"
    base = (
        "SELECT 1 FROM rm.lineage_edges e JOIN rm.dataset_versions v ON v.project = e.project "
        "AND e.src = 'dataset_version:' || v.dataset || '@' || v.version "
        "WHERE e.project = r.project AND e.edge_type = 'input' AND e.dst = 'run:' || r.run_id"
    )
    if c.op == "IS NULL":
        return f"NOT EXISTS ({base} AND {expr} IS NOT NULL)"
    if c.op == "IS NOT NULL":
        return f"EXISTS ({base} AND {expr} IS NOT NULL)"
    return f"EXISTS ({base} AND {op_sql(expr, c, sql)})"


def run_condition(c: Comparison, sql: Sql) -> str:
    """SQL over `rm.runs r` that holds for the runs ``c`` selects."""
    if c.entity == "metric":
        return _exists("run_metrics", "x.value", c, sql)
    if c.entity == "param":
        return _exists("run_params", "(x.value #>> '{}')", c, sql)
    if c.entity == "tag":
        return _exists("run_tags", "x.value", c, sql)
    if c.entity == "dataset":
        return _dataset(c, sql)
    return op_sql(run_attribute(c.key, sql), c, sql)


def run_where(text: str | None, sql: Sql) -> list[str]:
    return [run_condition(c, sql) for c in parse(text)]


# ----------------------------------------------------------------------------- order_by


@dataclass(frozen=True)
class Order:
    entity: str
    key: str
    descending: bool


def parse_order(text: str) -> Order:
    """`metrics.auc DESC`, `attributes.start_time`, `params.lr ASC`, `tags.\\`a b\\``."""
    body = text.strip()
    descending = False
    upper = body.upper()
    if upper.endswith(" DESC"):
        descending, body = True, body[:-5].rstrip()
    elif upper.endswith(" ASC"):
        body = body[:-4].rstrip()
    if not body:
        raise invalid(f"Invalid order_by clause '{text}'")
    if not _ORDER_KEY.fullmatch(body):
        raise invalid(f"Invalid order_by clause '{text}': expected `<entity>.<key> [ASC|DESC]`")
    entity, key = _key(body)
    return Order(entity, key, descending)


def run_order_expr(o: Order, sql: Sql) -> str:
    if o.entity == "metric":
        return (f"(SELECT x.value FROM rm.run_metrics x WHERE x.project = r.project "
                f"AND x.run_id = r.run_id AND x.key = {sql.add(o.key)})")  # fmt: skip
    if o.entity == "param":
        return (f"(SELECT x.value #>> '{{}}' FROM rm.run_params x WHERE x.project = r.project "
                f"AND x.run_id = r.run_id AND x.key = {sql.add(o.key)})")  # fmt: skip
    if o.entity == "tag":
        return _tag_value(o.key, sql)
    if o.entity == "dataset":
        raise invalid("order_by on datasets is not supported")
    return run_attribute(o.key, sql)

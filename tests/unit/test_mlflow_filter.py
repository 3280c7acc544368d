"""MLflow's search filter grammar (studbook_server/mlflow/_filter.py): parsing, refusals, SQL."""

from __future__ import annotations

import pytest

from studbook_server.mlflow._errors import MlflowError
from studbook_server.mlflow._filter import (
    Comparison,
    Order,
    Sql,
    parse,
    parse_order,
    run_order_expr,
    run_where,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.auc > 0.9", [Comparison("metric", "auc", ">", 0.9)]),
        ("metric.loss <= -1e-3", [Comparison("metric", "loss", "<=", -0.001)]),
        ("params.model = 'cnn'", [Comparison("param", "model", "=", "cnn")]),
        ('param.model != "rnn"', [Comparison("param", "model", "!=", "rnn")]),
        ("tags.`team name` LIKE 'vis%'", [Comparison("tag", "team name", "LIKE", "vis%")]),
        ("tag.\"a b\" ilike '%X%'", [Comparison("tag", "a b", "ILIKE", "%X%")]),
        ("`metrics.train loss` < 2", [Comparison("metric", "train loss", "<", 2.0)]),
        ("metrics.val.loss < 2", [Comparison("metric", "val.loss", "<", 2.0)]),
        (
            "attributes.status IN ('FINISHED', 'FAILED')",
            [Comparison("attribute", "status", "IN", ["FINISHED", "FAILED"])],
        ),
        ("attribute.run_id NOT IN ('a')", [Comparison("attribute", "run_id", "NOT IN", ["a"])]),
        ("run_name = 'x'", [Comparison("attribute", "run_name", "=", "x")]),
        ("params.lr IS NULL", [Comparison("param", "lr", "IS NULL")]),
        ("tags.t is not null", [Comparison("tag", "t", "IS NOT NULL")]),
        ("datasets.digest = 'abc'", [Comparison("dataset", "digest", "=", "abc")]),
        ("params.q = 'it''s'", [Comparison("param", "q", "=", "it's")]),
        (
            "metrics.a >= 1 AND params.b = 'x' and tags.c != 'y'",
            [
                Comparison("metric", "a", ">=", 1.0),
                Comparison("param", "b", "=", "x"),
                Comparison("tag", "c", "!=", "y"),
            ],
        ),
        # What search_registered_models always sends.
        (
            "tag.`mlflow.prompt.is_prompt` != 'true'",
            [Comparison("tag", "mlflow.prompt.is_prompt", "!=", "true")],
        ),
        # Keywords inside names are names.
        ("params.android = 'x'", [Comparison("param", "android", "=", "x")]),
        ("", []),
        (None, []),
    ],
)
def test_parse(text: str | None, expected: list[Comparison]) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics.a > 1 OR metrics.b < 2", "OR is not supported"),
        ("metrics.a = 'x'", "Expected a number for metric 'a'"),
        ("metrics.a LIKE 'x%'", "Invalid comparator 'LIKE' for metric 'a'"),
        ("params.a > 'b'", "Invalid comparator '>' for param 'a'"),
        ("params.a = 1", "Expected a quoted string value for param 'a'"),
        ("foo.a = 1", "Invalid entity type 'foo'"),
        ("metrics.a >", "at position"),
        ("metrics.a > 1 AND", "at position"),
        ("params.a = 'x'; DROP TABLE rm.runs", "at position"),
        ("attributes.start_time = 'now'", "numeric comparison for attribute 'start_time'"),
    ],
)
def test_refusals_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(MlflowError) as refused:
        parse(text)
    assert refused.value.code == "INVALID_PARAMETER_VALUE"
    assert refused.value.status == 400
    assert message in refused.value.message


def test_values_reach_sql_only_as_parameters() -> None:
    sql = Sql()
    sql.add("churn")
    where = run_where("params.model = 'x'' OR 1=1 --' AND metrics.`a b` > 0.5", sql)
    assert where == [
        "EXISTS (SELECT 1 FROM rm.run_params x WHERE x.project = r.project "
        "AND x.run_id = r.run_id AND x.key = $2 AND (x.value #>> '{}') = $3)",
        "EXISTS (SELECT 1 FROM rm.run_metrics x WHERE x.project = r.project "
        "AND x.run_id = r.run_id AND x.key = $4 AND x.value > $5)",
    ]
    assert sql.args == ["churn", "model", "x' OR 1=1 --", "a b", 0.5]


def test_attributes_and_lists() -> None:
    sql = Sql()
    where = run_where(
        "attributes.status IN ('FINISHED') AND attribute.start_time >= 1000 "
        "AND run_name LIKE 'trial-%' AND params.k IS NULL",
        sql,
    )
    assert where[0].endswith("= ANY($1::text[]))")
    assert "'completed' THEN 'FINISHED'" in where[0]
    assert where[1] == "(extract(epoch FROM r.started_at) * 1000)::bigint >= $2"
    assert "LIKE $4" in where[2]
    assert where[3].startswith("NOT EXISTS (SELECT 1 FROM rm.run_params")
    assert sql.args == [["FINISHED"], 1000.0, "mlflow.runName", "trial-%", "k"]


def test_unknown_attribute_is_refused_when_translated() -> None:
    with pytest.raises(MlflowError) as refused:
        run_where("attributes.colour = 'red'", Sql())
    assert "Invalid attribute key 'colour'" in refused.value.message


def test_datasets_read_the_lineage() -> None:
    sql = Sql()
    [where] = run_where("datasets.name IN ('a', 'b')", sql)
    assert "rm.lineage_edges" in where
    assert "(v.schema -> 'mlflow' ->> 'name') = ANY($1::text[])" in where
    with pytest.raises(MlflowError):
        run_where("datasets.size = 'x'", Sql())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.auc DESC", Order("metric", "auc", True)),
        ("metrics.auc desc", Order("metric", "auc", True)),
        ("attributes.start_time", Order("attribute", "start_time", False)),
        ("params.lr ASC", Order("param", "lr", False)),
        ("tags.`a b` DESC", Order("tag", "a b", True)),
    ],
)
def test_order_by(text: str, expected: Order) -> None:
    assert parse_order(text) == expected


def test_order_by_refusals_and_sql() -> None:
    with pytest.raises(MlflowError):
        parse_order("metrics.auc; DROP TABLE x")
    with pytest.raises(MlflowError):
        parse_order("   ")
    with pytest.raises(MlflowError):
        run_order_expr(parse_order("DESC"), Sql())  # a bare name: an attribute, unknown
    sql = Sql()
    expr = run_order_expr(parse_order("metrics.auc DESC"), sql)
    assert expr.startswith("(SELECT x.value FROM rm.run_metrics x")
    assert sql.args == ["auc"]

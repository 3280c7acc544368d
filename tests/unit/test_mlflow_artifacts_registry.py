"""Pure logic of the MLflow artifact proxy and registry: paths, subjects, manifest digests and the
search filters the mlflow client sends."""

from __future__ import annotations

import hashlib

import pytest

from studbook_server.mlflow._artifacts import clean_path, manifest_digest, subject_of
from studbook_server.mlflow._errors import MlflowError
from studbook_server.mlflow._models import Clause, apply_filter, matches, parse_filter


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1/r/artifacts/model/MLmodel", "1/r/artifacts/model/MLmodel"),
        ("1//r/./artifacts/x.txt", "1/r/artifacts/x.txt"),
        ("a/b/", "a/b"),
        ("..data/x", "..data/x"),  # a name that starts with dots is a name
    ],
)
def test_paths_are_normalised(raw: str, clean: str) -> None:
    assert clean_path(raw) == clean


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("../etc/passwd", ".."),
        ("1/r/artifacts/../../../x", ".."),
        ("/etc/passwd", "absolute"),
        ("s3://bucket/x", "absolute"),
        ("file:///etc/passwd", "absolute"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("", "required"),
        (".", "names no file"),
        ("x" * 2049, "at most 2048"),
    ],
)
def test_paths_that_could_leave_the_root_are_refused(raw: str, why: str) -> None:
    with pytest.raises(MlflowError) as refused:
        clean_path(raw)
    assert refused.value.status == 400
    assert refused.value.code == "INVALID_PARAMETER_VALUE"
    assert why in refused.value.message


def test_a_listing_may_name_the_root() -> None:
    assert clean_path(None, allow_empty=True) == ""
    assert clean_path("", allow_empty=True) == ""


def test_an_artifact_belongs_to_the_run_or_logged_model_its_path_names() -> None:
    assert subject_of("churn", "1/abc/artifacts/model/MLmodel") == ("run:abc", {"run": "abc"})
    assert subject_of("churn", "1/models/m-1f/artifacts/MLmodel") == (
        "logged_model:m-1f",
        {"logged_model": "m-1f"},
    )
    assert subject_of("churn", "loose/file.txt") == ("project:churn", {})
    assert subject_of("churn", "1/abc/artifacts") == ("project:churn", {})  # no file under it


def test_the_manifest_digest_is_order_free_and_covers_paths_digests_and_sizes() -> None:
    a = ("MLmodel", "sha256:" + "a" * 64, 10)
    b = ("model.skops", "sha256:" + "b" * 64, 2000)
    expected = hashlib.sha256(f"{a[0]}\t{a[1]}\t{a[2]}\n{b[0]}\t{b[1]}\t{b[2]}\n".encode())
    assert manifest_digest([b, a]) == manifest_digest([a, b]) == "sha256:" + expected.hexdigest()
    assert manifest_digest([a, (b[0], b[1], 2001)]) != manifest_digest([a, b])
    assert manifest_digest([a, ("renamed", b[1], b[2])]) != manifest_digest([a, b])


def test_the_filter_the_client_injects_into_registered_model_searches() -> None:
    assert parse_filter("tag.`mlflow.prompt.is_prompt` != 'true'") == [
        Clause("tag.mlflow.prompt.is_prompt", "!=", "true")
    ]
    both = parse_filter("name LIKE 'churn%' AND tag.`mlflow.prompt.is_prompt` != 'true'")
    assert [c.key for c in both] == ["name", "tag.mlflow.prompt.is_prompt"]


@pytest.mark.parametrize(
    ("text", "clauses"),
    [
        ("", []),
        ("name = 'model'", [Clause("name", "=", "model")]),
        ("name='x'", [Clause("name", "=", "x")]),
        ('name = "x"', [Clause("name", "=", "x")]),
        ("version_number >= 2", [Clause("version_number", ">=", 2)]),
        ("run_id IN ('a', 'b')", [Clause("run_id", "IN", ["a", "b"])]),
        ("name ilike '%Churn%'", [Clause("name", "ILIKE", "%Churn%")]),
        ("tags.team = 'it''s'", [Clause("tags.team", "=", "it's")]),
        ("attributes.status != 'LOGGED_MODEL_PENDING'",
         [Clause("attributes.status", "!=", "LOGGED_MODEL_PENDING")]),
    ],
)  # fmt: skip
def test_filters_parse(text: str, clauses: list[Clause]) -> None:
    assert parse_filter(text) == clauses


@pytest.mark.parametrize(
    "text", ["name =", "name 'x'", "name = 'x' AND", "name = x", "name = 'x' OR name = 'y'"]
)
def test_filters_that_cannot_be_read_are_a_400_naming_the_filter(text: str) -> None:
    with pytest.raises(MlflowError) as refused:
        parse_filter(text)
    assert refused.value.status == 400
    assert text in refused.value.message


def test_clauses_match_like_mlflow() -> None:
    assert matches(Clause("name", "LIKE", "churn%"), "churn-clf")
    assert not matches(Clause("name", "LIKE", "Churn%"), "churn-clf")
    assert matches(Clause("name", "ILIKE", "Churn%"), "churn-clf")
    assert matches(Clause("name", "LIKE", "c_urn"), "churn")
    assert matches(Clause("version_number", ">", 1), 2)
    assert matches(Clause("tag.x", "!=", "true"), None)  # an absent tag is not 'true'
    assert not matches(Clause("tag.x", "=", "true"), None)
    assert matches(Clause("run_id", "NOT IN", ["a"]), "b")
    rows = [{"name": "a"}, {"name": "b"}]
    assert apply_filter(rows, parse_filter("name != 'a'"), lambda r, k: r[k]) == [{"name": "b"}]

"""The pure parts of `studbook reproduce`: the plan made from a run's record, the verdict made
from `compareRuns`; and the local steps that need no server: finding and verifying data,
checking an environment's packages, naming the run."""

from __future__ import annotations

import base64
import copy
import hashlib
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from studbook._cli import main
from studbook._digest import digest_path
from studbook._environment import packages_digest
from studbook._reproduce import data, environment, plan, verdict
from studbook._reproduce.errors import DigestMismatch, EnvironmentMismatch, ReproduceError
from studbook._reproduce.runner import run_id_of

DIFF = b"diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"
DIFF_DIGEST = "sha256:" + hashlib.sha256(DIFF).hexdigest()
PACKAGES = ["orjson==3.10.0", "studbook==0.1.0", "urllib3==2.2.0"]
D1 = "sha256:" + "a" * 64

RECORD: dict[str, Any] = {
    "id": "churn/run:r1",
    "project": "churn",
    "runId": "r1",
    "name": "fit",
    "status": "COMPLETED",
    "code": {
        "git_commit": "4e1c2a9",
        "git_repo": "https://git.example.com/churn.git",
        "git_dirty": True,
        "entry_point": "train/fit.py",
        "argv": ["--lr", "0.1", "--data", "data/train.csv"],
        "working_dir": "train",
        "diff": {"digest": DIFF_DIGEST, "size_bytes": len(DIFF), "stored": True},
    },
    "environment": {
        "python_version": "3.11.7",
        "packages": PACKAGES,
        "packages_digest": packages_digest(PACKAGES),
    },
    "params": [{"key": "lr", "value": 0.1}],
    "inputs": [
        {
            "id": "churn/dataset_version:train@aaaaaaaaaaaa",
            "dataset": "train",
            "version": "aaaaaaaaaaaa",
            "role": "train",
            "datasetVersion": {
                "uri": "s3://bucket/train.csv",
                "digest": D1,
                "sizeBytes": 10,
                "source": {"uri": "file:///home/ada/churn/data/train.csv", "repoPath": "data/train.csv"},
            },
        }
    ],
    "codeDiff": {"digest": DIFF_DIGEST, "sizeBytes": len(DIFF), "encoding": "utf-8",
                 "text": DIFF.decode()},
}  # fmt: skip


def record(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(RECORD)
    for key, value in changes.items():
        if key.startswith("code_"):
            out["code"][key[5:]] = value
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------- the plan


def test_a_complete_record_plans_everything_without_gaps() -> None:
    p = plan.build(RECORD)
    assert (p.blockers, p.gaps, p.notes) == ([], [], [])
    assert p.commit == "4e1c2a9"
    assert p.remote == "https://git.example.com/churn.git"
    assert p.command() == ["train/fit.py", "--lr", "0.1", "--data", "data/train.csv"]
    assert p.working_dir == "train"
    assert p.diff == plan.Diff(DIFF_DIGEST, len(DIFF), DIFF)
    assert p.environment.complete
    assert p.environment.packages == tuple(PACKAGES)
    (inp,) = p.inputs
    # The local copy the code read first, then where the data lives; placed where it was read.
    assert inp.locations == ("file:///home/ada/churn/data/train.csv", "s3://bucket/train.csv")
    assert inp.repo_path == "data/train.csv"
    assert inp.digest == D1
    assert not p.derived
    text = plan.render(p, workdir="/w", code_from="/src/churn", python="/usr/bin/python3.11",
                       installer="uv", server="http://sb")  # fmt: skip
    assert "commit 4e1c2a9 from /src/churn" in text
    assert f"+ the recorded uncommitted changes ({len(DIFF)} bytes, {DIFF_DIGEST})" in text
    assert "3 packages installed with uv" in text
    assert "put at data/train.csv in the worktree" in text
    assert "python train/fit.py --lr 0.1 --data data/train.csv   (in train)" in text
    assert "as a reproduction of churn/run:r1" in text
    assert "Missing from the record" not in text


def test_a_module_run_is_re_run_as_a_module() -> None:
    p = plan.build(record(code_module="pkg.train"))
    assert p.command()[:2] == ["-m", "pkg.train"]


def test_a_base64_diff_is_decoded() -> None:
    binary = b"\x00\xffbinary"
    p = plan.build(
        record(
            code_diff={"digest": "sha256:" + hashlib.sha256(binary).hexdigest(), "size_bytes": 8,
                       "stored": True},
            codeDiff={"digest": "x", "sizeBytes": 8, "encoding": "base64",
                      "text": base64.b64encode(binary).decode()},
        )
    )  # fmt: skip
    assert p.diff is not None
    assert p.diff.data == binary


def test_an_old_record_re_runs_as_far_as_it_allows_and_says_what_is_missing() -> None:
    old = record(codeDiff=None, status="RUNNING")
    for field in ("argv", "working_dir", "diff"):
        del old["code"][field]
    old["environment"]["packages"] = PACKAGES[:2]  # cut short: no longer matches its digest
    p = plan.build(old)
    assert p.blockers == []
    assert p.argv == []
    assert p.working_dir == "."
    assert p.diff is None
    assert not p.environment.complete
    joined = "\n".join(p.gaps)
    for words in ("has not finished", "uncommitted changes", "were not recorded",
                  "command line was not recorded", "working directory was not recorded",
                  "does not match its recorded digest"):  # fmt: skip
        assert words in joined


@pytest.mark.parametrize(
    ("meta", "diff", "gap"),
    [
        ({"digest": DIFF_DIGEST, "size_bytes": 10**6, "stored": False}, None, "over the SDK's size cap"),
        ({"digest": DIFF_DIGEST, "size_bytes": 5, "stored": True}, None, "not available"),
        ({"digest": DIFF_DIGEST, "size_bytes": 5, "stored": True},
         {"digest": DIFF_DIGEST, "sizeBytes": 5, "encoding": "utf-8", "text": None}, "not available"),
    ],
)  # fmt: skip
def test_a_recorded_diff_that_cannot_be_had_is_a_gap(
    meta: dict[str, Any], diff: dict[str, Any] | None, gap: str
) -> None:
    p = plan.build(record(code_diff=meta, codeDiff=diff))
    assert p.diff is None
    assert p.blockers == []
    assert any(gap in g for g in p.gaps), p.gaps


def test_what_cannot_be_re_run_is_a_blocker() -> None:
    bare = record(code={}, codeDiff=None)
    bare["inputs"][0]["datasetVersion"] = None
    blockers = "\n".join(plan.build(bare).blockers)
    assert "no git commit" in blockers
    assert "no entry point" in blockers
    assert "input train@aaaaaaaaaaaa: its dataset version was never recorded" in blockers


def test_a_masked_argument_must_be_given_again() -> None:
    masked = record(code_argv=["--lr", "0.1", "--token", "***", "--url=https://u:***@h/x"])
    blockers = plan.build(masked).blockers
    assert len(blockers) == 2
    assert "argument 3 (`***`) was masked" in blockers[0]
    assert "--arg 3=VALUE" in blockers[0]
    given = plan.build(masked, args={3: "tok", 4: "--url=https://u:pw@h/x"})
    assert given.blockers == []
    assert given.argv == ["--lr", "0.1", "--token", "tok", "--url=https://u:pw@h/x"]
    # What the command prints keeps them masked.
    assert plan.shown_command(given) == "train/fit.py --lr 0.1 --token *** --url=https://u:***@h/x"
    assert plan.build(masked, args={3: "t", 4: "u", 9: "x"}).blockers == [
        "--arg 9: the recorded command line has 5 arguments"
    ]


def test_set_makes_a_derived_run_with_the_param_changed_on_the_command_line() -> None:
    p = plan.build(RECORD, changes={"lr": "0.5", "seed": "7"})
    assert p.derived
    assert p.argv == ["--lr", "0.5", "--data", "data/train.csv", "--seed=7"]
    assert any("`seed` is not a recorded param" in n for n in p.notes)
    text = plan.render(p, workdir="/w", code_from="/r", python="py", installer="uv", server="s")
    assert "as a derived run (params changed)" in text
    assert "changed: lr=0.5, seed=7" in text


def test_an_input_reported_without_a_digest_is_a_gap_not_a_blocker() -> None:
    reported = record()
    reported["inputs"][0]["datasetVersion"]["digest"] = None
    p = plan.build(reported)
    assert p.blockers == []
    assert p.inputs[0].digest is None
    assert "reported without a content digest" in p.gaps[0]


@pytest.mark.parametrize("path", ["../outside.csv", "/etc/passwd", "data/../../x", ".."])
def test_a_recorded_path_never_leads_out_of_the_worktree(path: str) -> None:
    escaping = record()
    escaping["inputs"][0]["datasetVersion"]["source"]["repoPath"] = path
    escaping["code"]["working_dir"] = path
    p = plan.build(escaping)
    assert p.inputs[0].repo_path is None
    assert p.working_dir == "."
    assert p.blockers == []
    escaping["code"]["entry_point"] = path
    assert "is not a path inside the repository" in plan.build(escaping).blockers[0]
    escaping["code"]["module"] = "os; rm"
    assert "is not a module name" in plan.build(escaping).blockers[0]


# ------------------------------------------------------------------------------- the verdict


def comparison(
    old: float | None = 0.9, new: float | None = 0.9, params: tuple[Any, Any] = (0.1, 0.1)
) -> dict[str, Any]:
    env = {"python_version": "3.11.7", "packages_digest": D1, "host": "a"}
    return {
        "metrics": [
            {"key": "acc", "last": [old, new], "differs": old != new},
            {"key": "loss", "last": [0.25, 0.25], "differs": False},
        ],
        "params": [{"key": "lr", "values": list(params), "differs": params[0] != params[1]}],
        "datasets": [{"label": "train@a", "present": [True, True], "differs": False}],
        "code": {"gitCommit": ["4e1c2a9", "4e1c2a9"], "gitDirty": [False, True], "differs": True},
        "environments": [env, {**env, "host": "b"}],  # another host is no difference
    }


def test_metrics_within_the_tolerance_reproduce() -> None:
    v = verdict.judge(comparison(0.9, 0.9 * (1 + 1e-7)), status="COMPLETED", rtol=1e-6)
    assert v.outcome == verdict.REPRODUCED
    assert v.exit_code == 0
    assert v.reasons == []
    assert [m.within for m in v.metrics] == [True, True]
    text = verdict.render(v, original="a", rerun="b", rtol=1e-6, atol=0)
    assert text.endswith("verdict: REPRODUCED: 2 of 2 metrics within rtol 1e-06")


def test_a_metric_outside_the_tolerance_is_a_difference() -> None:
    v = verdict.judge(comparison(0.9, 0.8), status="COMPLETED", rtol=1e-3)
    assert v.outcome == verdict.DIFFERENT
    assert v.exit_code == 1
    assert v.reasons == ["metric acc: 0.9 -> 0.8"]
    assert v.metrics[0].relative == pytest.approx(0.1111, rel=1e-3)
    assert verdict.judge(comparison(0.9, 0.8), status="COMPLETED", rtol=0.2).outcome == (
        verdict.REPRODUCED
    )
    assert verdict.judge(
        comparison(0.0, 1e-9), status="COMPLETED", rtol=1e-6, atol=1e-8
    ).outcome == (verdict.REPRODUCED)


def test_a_missing_metric_a_changed_param_or_other_packages_are_differences() -> None:
    assert verdict.judge(comparison(0.9, None), status="COMPLETED", rtol=1e-6).reasons == [
        "metric acc: 0.9 -> missing"
    ]
    assert verdict.judge(comparison(params=(0.1, 0.2)), status="COMPLETED", rtol=1).reasons == [
        "param lr: 0.1 -> 0.2"
    ]
    other = comparison()
    other["environments"][1] = {"python_version": "3.11.9", "packages_digest": "sha256:" + "b" * 64}
    v = verdict.judge(other, status="COMPLETED", rtol=1e-6)
    assert v.outcome == verdict.DIFFERENT
    assert v.reasons[0].startswith("environment: packages ")
    assert v.notes == ["environment: Python 3.11.7 -> 3.11.9"]
    only_new = comparison()
    only_new["metrics"].append({"key": "extra", "last": [None, 1.0], "differs": True})
    assert verdict.judge(only_new, status="COMPLETED", rtol=1e-6).outcome == verdict.REPRODUCED


def test_a_re_run_that_fails_fails_unless_the_original_failed_too() -> None:
    v = verdict.judge(comparison(), status="FAILED", rtol=1e-6)
    assert v.outcome == verdict.FAILED
    assert v.exit_code == 1
    assert "did not complete" in v.reasons[0]
    again = verdict.judge(comparison(), status="FAILED", rtol=1e-6, original_status="FAILED")
    assert again.outcome == verdict.REPRODUCED


def test_a_derived_run_is_judged_for_information_and_checks_its_changed_param() -> None:
    taken = verdict.judge(comparison(0.9, 0.7, params=(0.1, 0.5)), status="COMPLETED", rtol=1e-6,
                          changes={"lr": "0.5"})  # fmt: skip
    assert taken.outcome == verdict.DERIVED
    assert taken.exit_code == 0
    assert taken.reasons == []
    assert taken.notes == ["metric acc: 0.9 -> 0.7"]
    ignored = verdict.judge(comparison(params=(0.1, 0.1)), status="COMPLETED", rtol=1e-6,
                            changes={"lr": "0.5"})  # fmt: skip
    assert "the re-run logged 0.1, not the --set value 0.5" in ignored.notes[0]
    text = verdict.render(taken, original="a", rerun="b", rtol=1e-6, atol=0)
    assert "verdict: DERIVED run (params changed): 1 of 2 metrics within rtol 1e-06" in text


# ------------------------------------------------------------------------------- local steps


def _input(tmp: Path, locations: list[str], repo_path: str | None, digest: str) -> plan.Input:
    return plan.Input("churn/dataset_version:t@x", "t@x", "train", digest, None,
                      tuple(locations), repo_path)  # fmt: skip


def test_data_is_taken_from_the_first_copy_with_the_recorded_digest(tmp_path: Path) -> None:
    changed, kept = tmp_path / "changed.csv", tmp_path / "kept" / "train.csv"
    changed.write_text("2\n")
    kept.parent.mkdir()
    kept.write_text("1\n")
    want = digest_path(kept, use_cache=False)[0]
    worktree = tmp_path / "code"
    worktree.mkdir()
    inp = _input(tmp_path, [str(tmp_path / "gone.csv"), changed.as_uri(), kept.as_uri()],
                 "data/train.csv", want)  # fmt: skip
    got = data.fetch(inp, worktree=worktree, downloads=tmp_path / "dl")
    assert got.found_at == kept.as_uri()
    assert got.placed_at == worktree / "data" / "train.csv"
    assert (worktree / "data" / "train.csv").read_text() == "1\n"
    # Now the worktree has it: found there first, nothing else read.
    again = data.fetch(_input(tmp_path, [], "data/train.csv", want), worktree=worktree,
                       downloads=tmp_path / "dl")  # fmt: skip
    assert again.found_at == "data/train.csv at the recorded commit"


def test_no_copy_with_the_recorded_digest_names_expected_and_found(tmp_path: Path) -> None:
    changed = tmp_path / "changed.csv"
    changed.write_text("2\n")
    found = digest_path(changed, use_cache=False)[0]
    inp = _input(tmp_path, [changed.as_uri(), str(tmp_path / "gone")], None, D1)
    with pytest.raises(DigestMismatch) as info:
        data.fetch(inp, worktree=tmp_path, downloads=tmp_path / "dl")
    message = str(info.value)
    assert f"dataset version t@x: expected {D1}, but found {found} at {changed.as_uri()}" in message
    assert f"nothing at {tmp_path / 'gone'}" in message


def test_a_directory_version_is_verified_and_copied_whole(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    want = digest_path(tree, use_cache=False)[0]
    worktree = tmp_path / "code"
    worktree.mkdir()
    data.fetch(_input(tmp_path, [str(tree)], "data", want), worktree=worktree,
               downloads=tmp_path / "dl")  # fmt: skip
    assert digest_path(worktree / "data", use_cache=False)[0] == want


def test_a_scheme_without_fsspec_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` raises ImportError
    inp = _input(tmp_path, ["s3://bucket/train.csv"], None, D1)
    with pytest.raises(ReproduceError, match=r"fetching s3:// needs fsspec \(pip install fsspec"):
        data.fetch(inp, worktree=tmp_path, downloads=tmp_path / "dl")


class _LocalFileSystem:
    """What data.py uses of an fsspec file system, over a local folder standing for a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def isdir(self, path: str) -> bool:
        return (self.root / path).is_dir()

    def get(self, src: str, dst: str, recursive: bool = False) -> None:
        if recursive:
            shutil.copytree(self.root / src, dst)
        else:
            shutil.copyfile(self.root / src, dst)


def test_other_schemes_are_downloaded_with_fsspec_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "features").mkdir(parents=True)
    (bucket / "train.csv").write_text("1\n")
    (bucket / "features" / "part-0").write_text("x")
    fs = _LocalFileSystem(bucket)
    fake = types.ModuleType("fsspec")
    fake.core = types.SimpleNamespace(url_to_fs=lambda url: (fs, url.removeprefix("mem://")))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fsspec", fake)
    worktree = tmp_path / "code"
    worktree.mkdir()
    for name, place in (("train.csv", "data/train.csv"), ("features", "data/features")):
        want = digest_path(bucket / name, use_cache=False)[0]
        got = data.fetch(_input(tmp_path, [f"mem://{name}"], place, want), worktree=worktree,
                         downloads=tmp_path / "dl" / name)  # fmt: skip
        assert got.found_at == f"mem://{name}"
        assert digest_path(worktree / place, use_cache=False)[0] == want
    with pytest.raises(DigestMismatch, match="found sha256:"):
        data.fetch(_input(tmp_path, ["mem://train.csv"], None, D1), worktree=worktree,
                   downloads=tmp_path / "dl" / "again")  # fmt: skip


def test_an_environment_is_checked_against_the_recorded_packages() -> None:
    recorded = plan.Environment("3.11.7", tuple(PACKAGES), packages_digest(PACKAGES), True)
    assert environment.verify(list(PACKAGES), recorded) == packages_digest(PACKAGES)
    with pytest.raises(EnvironmentMismatch) as info:
        environment.verify(["orjson==3.10.0", "pip==24.0", "studbook==0.1.0"], recorded)
    assert "missing urllib3==2.2.0; not recorded pip==24.0" in str(info.value)
    partial = plan.Environment("3.11.7", tuple(PACKAGES[:2]), packages_digest(PACKAGES), False)
    assert environment.verify(PACKAGES[:2], partial) == packages_digest(PACKAGES[:2])


@pytest.mark.parametrize(
    ("text", "project", "expected"),
    [
        ("churn/run:abc", None, "churn/run:abc"),
        ("churn/abc", None, "churn/run:abc"),
        ("run:abc", "fraud", "fraud/run:abc"),
        ("abc-1.2_x", "fraud", "fraud/run:abc-1.2_x"),
    ],
)
def test_a_run_is_named_by_its_global_id_or_its_id_and_project(
    text: str, project: str | None, expected: str
) -> None:
    assert run_id_of(text, project) == expected


def test_a_run_without_a_project_or_of_a_bad_shape_is_refused() -> None:
    with pytest.raises(ReproduceError, match="names no project"):
        run_id_of("abc", None)
    with pytest.raises(ReproduceError, match="is not a run id"):
        run_id_of("Churn/run:a b", None)


def test_the_command_says_why_it_cannot_reproduce(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "churn/run:r1", "--url", "http://127.0.0.1:9", "--yes"]) == 2
    assert (
        "studbook reproduce: cannot reach Studbook's GraphQL API at http://127.0.0.1:9/graphql"
        in (capsys.readouterr().err)
    )

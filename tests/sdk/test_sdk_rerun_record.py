"""What a run records for a re-run: the command line with secrets masked, the working
directory, the uncommitted diff (size-capped, in its own event), where a dataset version was
read from, and, in a process started by `studbook reproduce`, the run it re-runs."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import studbook
from studbook import _gitinfo, _rerun
from studbook._client import Client
from studbook._commandline import MASK, masked, masked_positions, secret_name, with_params
from studbook._gitinfo import capture_diff, snapshot
from studbook._transport import MemoryTransport
from studbook_server.domain.contract import validate_event


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@x", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "train.py").write_text("A = 1\n")
    (root / "blob.bin").write_bytes(bytes(range(256)))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


# ------------------------------------------------------------------------- secrets in argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "0.1", "--epochs=3"], ["--lr", "0.1", "--epochs=3"]),
        (["--api-token", "abc123", "--lr", "0.1"], ["--api-token", MASK, "--lr", "0.1"]),
        (["--password=hunter2"], [f"--password={MASK}"]),
        (["--db_password", "x", "-v"], ["--db_password", MASK, "-v"]),
        (["--api-key", "k"], ["--api-key", MASK]),
        (["--access_key=k", "--client-secret", "s"], [f"--access_key={MASK}", "--client-secret", MASK]),
        (["db.password=pw", "+trainer.lr=1"], [f"db.password={MASK}", "+trainer.lr=1"]),
        (["--token", "--verbose"], ["--token", "--verbose"]),  # a flag, no value to mask
        (["--max-tokens", "512", "--key-column", "id"], ["--max-tokens", "512", "--key-column", "id"]),
        (["sbk_0123456789ab_SECRETSECRETSECRET"], [MASK]),
        (["--hub=hf_abcdefghijklmnopqrstuvwx"], [f"--hub={MASK}"]),
        (["AKIAABCDEFGHIJKLMNOP"], [MASK]),
        (["--model", "sk-learn"], ["--model", "sk-learn"]),  # too short for a key
        (["https://ada:s3cret@git.example.com/x.git"], [f"https://ada:{MASK}@git.example.com/x.git"]),
        (["https://git.example.com/x.git"], ["https://git.example.com/x.git"]),
        (["--db=postgres://app:pw@db:5432/x"], [f"--db=postgres://app:{MASK}@db:5432/x"]),
    ],
)  # fmt: skip
def test_secrets_are_masked_on_the_recorded_command_line(
    argv: list[str], expected: list[str]
) -> None:
    assert masked(argv) == expected
    hidden = [i for i, (a, b) in enumerate(zip(argv, expected, strict=True)) if a != b]
    assert masked_positions(expected) == hidden


def test_secret_names_are_whole_words() -> None:
    assert all(map(secret_name, ["api-token", "AUTH_TOKEN", "passwd", "private.key"]))
    assert not any(map(secret_name, ["tokenizer", "keyframes", "max-tokens", "key"]))


# ------------------------------------------------------------------------- --set on argv


@pytest.mark.parametrize(
    ("argv", "changes", "expected"),
    [
        (["--lr", "0.1", "--x"], {"lr": "0.5"}, ["--lr", "0.5", "--x"]),
        (["--lr=0.1"], {"lr": "0.5"}, ["--lr=0.5"]),
        (["--learning-rate", "1"], {"learning_rate": "2"}, ["--learning-rate", "2"]),
        (["trainer.lr=0.1", "+seed=1"], {"trainer.lr": "3", "seed": "2"}, ["trainer.lr=3", "+seed=2"]),
        (["--epochs", "3"], {"lr": "0.5"}, ["--epochs", "3", "--lr=0.5"]),
        (["--lr"], {"lr": "0.5"}, ["--lr", "0.5"]),
    ],
)  # fmt: skip
def test_set_replaces_a_param_on_the_command_line_or_appends_it(
    argv: list[str], changes: dict[str, str], expected: list[str]
) -> None:
    out, notes = with_params(argv, changes)
    assert out == expected
    assert len(notes) == len(changes)
    assert argv != out  # the recorded list is not changed in place


# ------------------------------------------------------------------------- the diff


def test_a_clean_tree_has_no_diff_and_a_dirty_one_is_recorded_whole(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "diff" not in snapshot(repo).code
    (repo / "train.py").write_text("A = 2\n")
    monkeypatch.chdir(repo / "src")
    taken = snapshot(repo)
    expected = subprocess.run(["git", "diff", "--binary", "HEAD"], cwd=repo, capture_output=True,
                              check=True).stdout  # fmt: skip
    assert taken.diff is not None
    assert taken.diff.data == expected
    assert taken.code["diff"] == {
        "digest": "sha256:" + hashlib.sha256(expected).hexdigest(),
        "size_bytes": len(expected),
        "stored": True,
    }
    assert taken.code["working_dir"] == "src"
    assert taken.root == repo.resolve()
    payload = taken.diff.payload()
    assert payload is not None
    assert payload["encoding"] == "utf-8"
    assert payload["diff"].encode() == expected


def test_a_diff_over_the_cap_is_recorded_by_digest_and_size_only(repo: Path) -> None:
    (repo / "train.py").write_text("A = 2\n" * 2000)
    whole = capture_diff(repo)
    capped = capture_diff(repo, cap=1024)
    assert whole is not None
    assert capped is not None
    assert whole.data is not None
    assert capped.size_bytes == whole.size_bytes == len(whole.data) > 1024
    assert capped.digest == whole.digest
    assert capped.data is None
    assert capped.payload() is None
    assert capped.meta()["stored"] is False
    exact = capture_diff(repo, cap=whole.size_bytes)
    assert exact is not None
    assert exact.data == whole.data  # at the cap still fits


def test_a_binary_diff_that_is_not_utf8_is_sent_as_base64(repo: Path) -> None:
    (repo / "notes.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "latin-1")
    (repo / "notes.txt").write_bytes("th\xe9\n".encode("latin-1"))
    diff = capture_diff(repo)
    assert diff is not None
    payload = diff.payload()
    assert payload is not None
    assert payload["encoding"] == "base64"
    assert base64.b64decode(payload["diff"]) == diff.data
    assert validate_event(
        {"event_id": "3f2b1c9e-8d4a-4e6b-9f1a-2c3d4e5f6a7b", "type": "run.diff.recorded",
         "schema_version": 1, "occurred_at": "2026-03-01T12:00:00Z", "actor": "a",
         "project": "p", "subject": "run:r", "payload": payload}
    ) == []  # fmt: skip


def test_a_slow_git_diff_is_not_waited_for(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "git").write_text("#!/bin/sh\nexec sleep 30\n")
    (slow / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:/usr/bin:/bin")
    started = time.monotonic()
    assert capture_diff(repo, timeout=0.2) is None
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------- events


@pytest.fixture
def memory(install: Callable[..., Client]) -> MemoryTransport:
    transport = MemoryTransport()
    install(transport)
    return transport


def test_the_command_line_is_recorded_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--lr", "0.1", "--token", "abc"])
    code = _gitinfo.snapshot().code
    assert code["argv"] == ["--lr", "0.1", "--token", MASK]
    monkeypatch.setattr(sys, "argv", ["train.py", "x" * 5000])
    assert "argv" not in _gitinfo.snapshot().code  # cut short it would re-run something else


def test_a_dirty_run_sends_its_diff_in_its_own_event(
    memory: MemoryTransport, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "train.py").write_text("A = 3\n")
    monkeypatch.setattr(_gitinfo, "process_snapshot", lambda: snapshot(repo))
    with studbook.start_run("dirty") as run:
        pass
    studbook.flush()
    mine = [e for e in memory.events if e["subject"] == run.subject]
    assert [e["type"] for e in mine][:2] == ["run.started", "run.diff.recorded"]
    started, diff = mine[0], mine[1]
    assert started["schema_version"] == 3
    assert "diff" not in started["payload"]["code"]["diff"]  # only its digest, in the hot path
    assert started["payload"]["code"]["diff"]["digest"] == diff["payload"]["digest"]
    assert "+A = 3" in diff["payload"]["diff"]
    for event in mine:
        assert validate_event(event) == []


def test_a_dataset_version_records_where_it_was_read_from(
    memory: MemoryTransport, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gitinfo, "process_snapshot", lambda: snapshot(repo))
    (repo / "data").mkdir()
    (repo / "data" / "train.csv").write_text("1\n2\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("3\n")
    monkeypatch.chdir(repo)
    inside = studbook.dataset_version("train", path="data/train.csv", uri="s3://b/train.csv")
    studbook.dataset_version("other", path=outside)
    studbook.flush()
    first, second = [e for e in memory.events if e["type"] == "dataset.version.created"]
    assert first["schema_version"] == 2
    assert first["payload"]["uri"] == inside.uri == "s3://b/train.csv"
    assert first["payload"]["source"] == {
        "uri": (repo / "data" / "train.csv").resolve().as_uri(),
        "repo_path": "data/train.csv",
    }
    assert second["payload"]["source"] == {"uri": outside.resolve().as_uri()}  # not in the repo
    assert validate_event(first) == validate_event(second) == []


def test_the_first_run_of_a_reproduce_process_claims_the_re_run(
    memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _rerun.environment(_rerun.Rerun("orig-1", "new-1", False)).items():
        monkeypatch.setenv(key, value)
    with studbook.start_run("again", run_id="orig-1") as first:  # the script names its run
        pass
    with studbook.start_run("later") as second:
        pass
    studbook.flush()
    started = [e for e in memory.events if e["type"] == "run.started"]
    assert first.id == "new-1"  # never the original's own id
    assert started[0]["payload"]["reproduces"] == {"run": "orig-1", "derived": False}
    assert second.id != "new-1"
    assert "reproduces" not in started[1]["payload"]
    assert _rerun.ENV_OF not in os.environ  # a child process would not claim it


def test_a_derived_re_run_says_so(memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _rerun.environment(_rerun.Rerun("orig-2", None, True)).items():
        monkeypatch.setenv(key, value)
    with studbook.start_run("changed"):
        pass
    studbook.flush()
    (started,) = [e for e in memory.events if e["type"] == "run.started"]
    assert started["payload"]["reproduces"] == {"run": "orig-2", "derived": True}

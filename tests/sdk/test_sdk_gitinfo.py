"""Code and environment capture for run.started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from studbook._environment import environment_info, packages, packages_digest
from studbook._gitinfo import capture, strip_credentials


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@x", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "train.py").write_text("print('hi')\n")
    git(root, "add", "train.py")
    git(root, "commit", "-q", "-m", "first")
    git(root, "remote", "add", "origin", "https://user:tok3n@git.example.com/churn.git")
    return root


def test_capture_in_a_repository(repo: Path) -> None:
    code = capture(repo)
    assert code["git_commit"] == git(repo, "rev-parse", "HEAD")
    assert code["git_branch"] == "main"
    assert code["git_dirty"] is False
    assert code["git_repo"] == "https://git.example.com/churn.git"  # no credentials
    (repo / "train.py").write_text("print('changed')\n")
    assert capture(repo)["git_dirty"] is True


def test_capture_without_a_repository_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not {"git_commit", "git_repo"} & set(capture(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert not {"git_commit", "git_repo"} & set(capture(tmp_path))


def test_strip_credentials() -> None:
    assert strip_credentials("https://u:p@h/x.git") == "https://h/x.git"
    assert strip_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_environment() -> None:
    env = environment_info()
    assert env == environment_info()  # computed once
    listing = packages()
    assert env["packages"] == listing
    assert env["packages_digest"] == packages_digest(listing)
    assert all("==" in p for p in listing)

"""Code and environment capture for run.started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from studbook import _environment, _gitinfo
from studbook._environment import environment_info, packages, packages_digest
from studbook._gitinfo import cached_snapshot, capture, find_git_dir, strip_credentials


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


# --------------------------------------------------------------------------- per-process caches


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The git commands the capture runs (and a fresh cache)."""
    calls: list[list[str]] = []
    real = _gitinfo._git

    def counting(args: list[str], cwd: Path) -> str | None:
        calls.append(args)
        return real(args, cwd)

    monkeypatch.setattr(_gitinfo, "_git", counting)
    monkeypatch.setattr(_gitinfo, "_cached", None)
    return calls


def test_the_capture_is_cached_until_a_commit_a_stage_or_a_checkout(
    repo: Path, git_calls: list[list[str]]
) -> None:
    first = cached_snapshot(repo)
    assert git_calls  # the first run captures with git
    git_calls.clear()
    assert cached_snapshot(repo) is first  # the next ones do not run git at all
    assert git_calls == []

    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "-am", "second")
    after_commit = cached_snapshot(repo)
    assert after_commit.code["git_commit"] == git(repo, "rev-parse", "HEAD")
    assert after_commit.code["git_commit"] != first.code["git_commit"]
    assert after_commit.code["git_dirty"] is False

    (repo / "train.py").write_text("print('v3')\n")
    git(repo, "add", "train.py")  # staged: the index changes
    staged = cached_snapshot(repo)
    assert staged.code["git_dirty"] is True
    assert staged.diff is not None
    assert staged.diff.data is not None
    assert b"v3" in staged.diff.data

    git(repo, "checkout", "-q", "-b", "experiment")
    assert cached_snapshot(repo).code["git_branch"] == "experiment"

    git(repo, "remote", "set-url", "origin", "https://git.example.com/moved.git")
    assert cached_snapshot(repo).code["git_repo"] == "https://git.example.com/moved.git"
    git_calls.clear()
    cached_snapshot(repo)
    assert git_calls == []


def test_the_cache_follows_a_commit_in_a_linked_worktree(
    repo: Path, tmp_path: Path, git_calls: list[list[str]]
) -> None:
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", "-b", "side", str(linked))
    assert find_git_dir(linked) is not None
    first = cached_snapshot(linked)
    assert first.code["git_branch"] == "side"
    assert first.root == linked.resolve()
    (linked / "train.py").write_text("print('side')\n")
    git(linked, "commit", "-q", "-am", "on the side")
    assert cached_snapshot(linked).code["git_commit"] == git(linked, "rev-parse", "HEAD")
    assert cached_snapshot(linked).code["git_commit"] != first.code["git_commit"]


def test_the_cache_is_per_directory_and_outside_a_repository(
    repo: Path, tmp_path: Path, git_calls: list[list[str]]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    assert "git_commit" not in cached_snapshot(outside).code
    assert cached_snapshot(repo).code["git_commit"] == git(repo, "rev-parse", "HEAD")
    assert "git_commit" not in cached_snapshot(outside).code
    git_calls.clear()
    cached_snapshot(outside)
    assert git_calls == []


def test_an_unstaged_edit_keeps_the_cached_capture(repo: Path, git_calls: list[list[str]]) -> None:
    """As documented: only HEAD, the index, refs and config are watched, not the work tree."""
    first = cached_snapshot(repo)
    (repo / "train.py").write_text("print('unstaged')\n")
    assert cached_snapshot(repo) is first


def test_the_package_list_is_cached_until_a_sys_path_entry_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(_environment, "_cached", None)
    scanned: list[str] = []
    real = _environment._entry_packages

    def counting(entry: str) -> frozenset[str]:
        scanned.append(entry)
        return real(entry)

    monkeypatch.setattr(_environment, "_entry_packages", counting)
    before = environment_info()
    assert before["packages"] == packages()
    assert not any(p.startswith("sweep-extra==") for p in before["packages"])
    scanned.clear()
    assert environment_info() is before
    assert scanned == []  # nothing read again

    dist = site / "sweep_extra-1.2.dist-info"  # what `pip install sweep-extra` leaves
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sweep-extra\nVersion: 1.2\n")
    after = environment_info()
    assert "sweep-extra==1.2" in after["packages"]
    assert after["packages"] == packages()
    assert after["packages_digest"] == packages_digest(after["packages"])
    assert after["packages_digest"] != before["packages_digest"]
    assert scanned == [str(site)]  # only the entry that changed was read again

"""The code of a re-run: the recorded commit in a fresh worktree, with the recorded diff applied.

The commit is taken from a local repository that has it (``--repo``, else the one around the
current directory), as a detached ``git worktree`` (the repository lists it in ``git worktree
list``; ``git worktree remove`` drops it), or else from a clone of the recorded remote.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from studbook._reproduce.errors import DigestMismatch, NotReproducible
from studbook._reproduce.plan import Diff


def _git(
    args: list[str], cwd: Path, *, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, input=stdin, capture_output=True, check=False
        )
    except OSError as exc:
        raise NotReproducible(f"cannot run git ({exc}): install git") from exc


def toplevel(where: Path) -> Path | None:
    """The root of the git repository around ``where``, if any."""
    done = _git(["rev-parse", "--show-toplevel"], where)
    return Path(done.stdout.decode().strip()) if done.returncode == 0 else None


def has_commit(repo: Path, commit: str) -> bool:
    return _git(["cat-file", "-e", f"{commit}^{{commit}}"], repo).returncode == 0


def source(repo: Path | None, commit: str, remote: str | None) -> str:
    """Where the commit comes from: a local repository path, or the remote url to clone.

    Raises :class:`NotReproducible` when neither has it (the remote is only tried at checkout).
    """
    if repo is not None and has_commit(repo, commit):
        return str(repo)
    if remote:
        return remote
    where = f"not in {repo}" if repo is not None else "no local repository was given"
    raise NotReproducible(
        f"commit {commit} cannot be found: {where}, and the run recorded no remote to clone; "
        "run `studbook reproduce` inside a clone that has it, or pass --repo PATH"
    )


def check_out(origin: str, commit: str, into: Path) -> None:
    """A fresh checkout of ``commit`` at ``into``: a worktree of a local repository, or a clone."""
    if Path(origin).is_dir():
        done = _git(["worktree", "add", "--detach", str(into), commit], Path(origin))
        if done.returncode != 0:
            raise NotReproducible(
                f"git worktree add of {commit} failed: {done.stderr.decode(errors='replace').strip()}"
            )
        return
    done = _git(["clone", "--quiet", "--no-checkout", origin, str(into)], into.parent)
    if done.returncode != 0:
        raise NotReproducible(
            f"cloning {origin} failed: {done.stderr.decode(errors='replace').strip()}"
        )
    done = _git(["checkout", "--quiet", "--detach", commit], into)
    if done.returncode != 0:
        raise NotReproducible(
            f"commit {commit} cannot be found in {origin} (was it pushed?): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )


def apply_diff(worktree: Path, diff: Diff) -> None:
    """Apply the recorded uncommitted changes, after checking their digest."""
    assert diff.data is not None
    found = "sha256:" + hashlib.sha256(diff.data).hexdigest()
    if found != diff.digest:
        raise DigestMismatch(
            f"the recorded diff's content has digest {found}, not the {diff.digest} the run "
            "recorded: it was changed after it was recorded"
        )
    if not diff.data:
        return  # dirty in a way `git diff` does not show (nothing to apply)
    done = _git(["apply", "--binary", "--whitespace=nowarn", "-"], worktree, stdin=diff.data)
    if done.returncode != 0:
        raise NotReproducible(
            "the recorded uncommitted changes do not apply to the commit: "
            f"{done.stderr.decode(errors='replace').strip()}"
        )

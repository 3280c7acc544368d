"""What code a run executes: git commit, branch, dirtiness, remote and entry point.

Captured with ``git`` subprocesses (each with a short timeout) the first time a run starts,
then cached for the process. Anything that fails is left out: no git, not a repository, a
repository without commits, a slow file system.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TIMEOUT_S = 2.0
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


def _git(args: list[str], cwd: Path) -> str | None:
    import subprocess  # lazily: only the first run of a process needs it

    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def strip_credentials(remote: str) -> str:
    """Drop a user name and password from a remote url (``https://user:tok@host/x``)."""
    parts = urlsplit(remote)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return remote


def _entry_script() -> Path | None:
    main = sys.modules.get("__main__")
    candidate = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv else "")
    if not candidate or candidate in ("-c", "-m"):
        return None
    path = Path(candidate)
    return path.resolve() if path.is_file() else None


def capture(where: Path | None = None) -> dict[str, Any]:
    """Return the ``code`` payload of run.started for the repository around the entry point."""
    script = _entry_script()
    cwd = where or (script.parent if script is not None else Path.cwd())
    code: dict[str, Any] = {}
    head = _git(["rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"], cwd)
    if head is not None:
        lines = head.splitlines()
        if len(lines) >= 3:
            toplevel, commit, branch = lines[0], lines[1].strip().lower(), lines[2].strip()
            if _COMMIT.fullmatch(commit):
                code["git_commit"] = commit
            if branch and branch != "HEAD":
                code["git_branch"] = branch[:255]
            remote = _git(["remote", "get-url", "origin"], cwd)
            if remote and remote.strip():
                code["git_repo"] = strip_credentials(remote.strip())[:2048]
            status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
            if status is not None:
                code["git_dirty"] = bool(status.strip())
            if script is not None:
                try:
                    entry = script.relative_to(Path(toplevel).resolve()).as_posix()
                except ValueError:
                    entry = script.name
                code["entry_point"] = entry[:1024]
    if "entry_point" not in code:
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main_spec is not None and main_spec.name and main_spec.name != "__main__":
            code["entry_point"] = main_spec.name[:1024]
        elif script is not None:
            code["entry_point"] = script.name[:1024]
    return code


@functools.cache
def code_info() -> dict[str, Any]:
    """:func:`capture`, once per process."""
    return capture()

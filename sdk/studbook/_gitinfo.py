"""What code a run executes: git commit, branch, dirtiness, remote, entry point, command line,
working directory, and the uncommitted changes of a dirty tree.

Captured with ``git`` subprocesses (each with a short timeout) when the first run of a process
starts, then cached for the process (:func:`process_snapshot`): a later run costs a few ``stat``
calls, and captures again when what it can see changed: the directory it starts from, the
working directory, the command line, the repository root, or the ``stat`` of ``.git/HEAD``,
``.git/index``, the branch's ref, ``packed-refs`` and ``.git/config`` (a commit, a checkout, a
``git add``, a new remote between two runs). An edit of a tracked file that is not staged does
not change those, so a run started after it in the same process records the tree as the
previous capture saw it. Anything that fails is left out: no git, not a repository, a
repository without commits, a slow file system.

The uncommitted changes (``git diff --binary HEAD``: staged and unstaged changes to tracked
files; untracked files are not part of it, as they do not make ``git_dirty`` either) are
streamed through SHA-256; at most :data:`MAX_DIFF_BYTES` of them are kept, to be sent in their
own ``run.diff.recorded`` event. A larger diff is recorded by digest and size only.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from studbook._commandline import masked

TIMEOUT_S = 2.0
DIFF_TIMEOUT_S = 5.0
MAX_DIFF_BYTES = 256 * 1024
MAX_ARGS = 1000
MAX_ARG_LENGTH = 4096
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
# Flags that make the diff independent of the user's git configuration (prefixes, colours,
# external diff drivers, text conversion), so that `git apply` takes it anywhere.
_DIFF = ["diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv",
         "--src-prefix=a/", "--dst-prefix=b/", "HEAD", "--"]  # fmt: skip


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def _git(args: list[str], cwd: Path) -> str | None:
    import subprocess  # lazily: only the first run of a process needs it

    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_git_env(),
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


@dataclass(frozen=True, slots=True)
class Diff:
    """Uncommitted changes of a working tree: their digest and size, and their bytes when they
    fit under the cap (``data`` is None when they do not)."""

    digest: str
    size_bytes: int
    data: bytes | None

    def meta(self) -> dict[str, Any]:
        """The ``code.diff`` field of run.started (v3)."""
        return {
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "stored": self.data is not None,
        }

    def payload(self) -> dict[str, Any] | None:
        """The ``run.diff.recorded`` payload, or None when the diff is over the cap."""
        if self.data is None:
            return None
        try:
            text, encoding = self.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(self.data).decode("ascii"), "base64"
        return {
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "encoding": encoding,
            "diff": text,
        }


def capture_diff(
    toplevel: Path, *, cap: int = MAX_DIFF_BYTES, timeout: float = DIFF_TIMEOUT_S
) -> Diff | None:
    """The uncommitted changes of the repository at ``toplevel`` against HEAD, streamed (a diff
    of a huge binary file is hashed, not held in memory); None if git fails or is too slow."""
    import hashlib
    import subprocess
    import threading

    try:
        proc = subprocess.Popen(
            ["git", *_DIFF],
            cwd=toplevel,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    h = hashlib.sha256()
    kept = bytearray()
    size = 0
    try:
        assert proc.stdout is not None
        with proc.stdout:
            while chunk := proc.stdout.read(1 << 16):
                h.update(chunk)
                size += len(chunk)
                if len(kept) <= cap:
                    kept += chunk[: cap + 1 - len(kept)]
        code = proc.wait()
    finally:
        watchdog.cancel()
    if code != 0:  # failed, or killed by the watchdog
        return None
    data = bytes(kept) if size <= cap else None
    return Diff("sha256:" + h.hexdigest(), size, data)


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


def _main_module() -> str | None:
    """The module named on `python -m <module>`, if the process was started so."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)
    return None


def _command_line() -> list[str] | None:
    """The arguments after the script or module, masked; None if too long to record whole."""
    args = sys.argv[1:]
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_LENGTH for a in args):
        return None  # cut short, it would re-run something else
    return masked(args)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The ``code`` payload of run.started, the repository root, and the uncommitted changes."""

    code: dict[str, Any]
    root: Path | None
    diff: Diff | None


def snapshot(where: Path | None = None) -> Snapshot:
    """Capture the repository around the entry point (or ``where``) and the command line."""
    script = _entry_script()
    cwd = where or (script.parent if script is not None else Path.cwd())
    code: dict[str, Any] = {}
    root: Path | None = None
    diff: Diff | None = None
    head = _git(["rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"], cwd)
    if head is not None:
        lines = head.splitlines()
        if len(lines) >= 3:
            toplevel, commit, branch = lines[0], lines[1].strip().lower(), lines[2].strip()
            root = Path(toplevel).resolve()
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
                if code["git_dirty"] and "git_commit" in code:
                    diff = capture_diff(root)
                    if diff is not None:
                        code["diff"] = diff.meta()
            if script is not None:
                try:
                    entry = script.relative_to(root).as_posix()
                except ValueError:
                    entry = script.name
                code["entry_point"] = entry[:1024]
            try:
                here = Path.cwd().resolve().relative_to(root).as_posix()
            except (OSError, ValueError):
                here = None  # the working directory is outside the repository
            if here is not None and len(here) <= 1024:
                code["working_dir"] = here
    module = _main_module()
    if module is not None and len(module) <= 1024:
        code["module"] = module
    if "entry_point" not in code:
        if module is not None:
            code["entry_point"] = module[:1024]
        elif script is not None:
            code["entry_point"] = script.name[:1024]
    if script is not None or module is not None:
        argv = _command_line()
        if argv is not None:
            code["argv"] = argv
    return Snapshot(code, root, diff)


def capture(where: Path | None = None) -> dict[str, Any]:
    """Return the ``code`` payload of run.started for the repository around the entry point."""
    return snapshot(where).code


def _start_dir() -> Path:
    script = _entry_script()
    return script.parent if script is not None else Path.cwd()


def find_git_dir(start: Path) -> tuple[Path, Path] | None:
    """(work tree root, git directory) of the repository around ``start``, found without running
    git: the nearest ``.git`` directory, or ``.git`` file (``gitdir: ...``: a linked worktree, a
    submodule) above it."""
    found = _find(str(start))
    return None if found is None else (Path(found[0]), Path(found[2]))


_Stamp = tuple[int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


# Small file contents read by the key, by (path, stat): read again only when the stat changes.
_contents: dict[tuple[str, _Stamp], str | None] = {}


def _read_cached(path: str, stamp: _Stamp) -> str | None:
    key = (path, stamp)
    if key not in _contents:
        if len(_contents) > 256:
            _contents.clear()
        _contents[key] = _read(path) if stamp is not None else None
    return _contents[key]


def _find(start: str) -> tuple[str, _Stamp, str, str] | None:
    """(root, stat of its .git, git directory, common directory) around ``start``."""
    where = os.path.abspath(start)
    while True:
        dotgit = os.path.join(where, ".git")
        try:
            st = os.stat(dotgit)
        except OSError:
            parent = os.path.dirname(where)
            if parent == where:
                return None
            where = parent
            continue
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            return where, stamp, dotgit, dotgit
        text = _read_cached(dotgit, stamp)
        if text is None or not text.startswith("gitdir:"):
            return None
        gitdir = os.path.join(where, text[len("gitdir:") :].strip())  # kept if absolute
        shared = _read_cached(os.path.join(gitdir, "commondir"), _stamp(gitdir))
        common = os.path.join(gitdir, shared) if shared else gitdir
        return where, stamp, gitdir, common


def snapshot_key(where: Path | None = None) -> tuple[object, ...]:
    """What a capture depends on, cheaply (a few ``stat`` calls): equal keys, equal captures
    (but for edits that are not staged)."""
    start = str(where or _start_dir())
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    env = tuple(os.environ.get(k) for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"))
    base: tuple[object, ...] = (start, cwd, tuple(sys.argv), _main_module(), env)
    found = _find(start)
    if found is None:
        return (*base, None)
    root, dotgit, gitdir, common = found
    head_path = os.path.join(gitdir, "HEAD")
    head_stamp = _stamp(head_path)
    head = _read_cached(head_path, head_stamp) or ""
    files = [os.path.join(gitdir, "index"), os.path.join(common, "packed-refs")]
    files.append(os.path.join(common, "config"))
    if head.startswith("ref:"):
        files.append(os.path.join(common, head[len("ref:") :].strip()))  # the branch's ref
    return (*base, root, dotgit, head, head_stamp, tuple(_stamp(f) for f in files))


_cached: tuple[tuple[object, ...], Snapshot] | None = None
_cache_lock = threading.Lock()


def process_snapshot() -> Snapshot:
    """:func:`snapshot` of this process, cached: taken again only when :func:`snapshot_key`
    changes (a commit, a checkout, a staged change, another working directory)."""
    return cached_snapshot()


def cached_snapshot(where: Path | None = None) -> Snapshot:
    """:func:`snapshot` of ``where`` (default: around the entry point), cached per process by
    :func:`snapshot_key`."""
    global _cached
    key = snapshot_key(where)
    with _cache_lock:
        hit = _cached
        if hit is not None and hit[0] == key:
            return hit[1]
        taken = snapshot(where)
        # Keyed by what was seen before the capture: a change during it is seen next time.
        _cached = (key, taken)
        return taken


def code_info() -> dict[str, Any]:
    """:func:`capture`, once per process."""
    return process_snapshot().code

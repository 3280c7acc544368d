"""The data of a re-run: every input dataset version found and verified before the run starts.

Each input is looked for, in order, in the fresh worktree (a version the commit itself holds,
at the path the code read it from), at the local path it was hashed from, and at its uri. Local
paths and ``file://`` uris are read in place; other schemes (``s3://``, ``gs://``, ...) are
downloaded with fsspec, when it is installed, into the re-run's folder. A copy counts only if
its digest (computed as the SDK computes it: :func:`studbook._digest.digest_path`, without the
digest cache) is the recorded one; it is then copied to where the code reads it, when that is
inside the repository. No matching copy stops the re-run with the expected and found digests.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from studbook._digest import digest_path
from studbook._reproduce.errors import DigestMismatch, ReproduceError
from studbook._reproduce.plan import Input


@dataclass(frozen=True, slots=True)
class Fetched:
    """Where a verified copy was found, and where the code will read it (None: where it is)."""

    input: Input
    found_at: str
    placed_at: Path | None


def local_path(location: str) -> Path | None:
    """The local path a location names (a plain path or a ``file://`` uri), or None."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(url2pathname(unquote(parts.path)))
    if not parts.scheme or (len(parts.scheme) == 1 and location[1:3] in (":\\", ":/")):
        return Path(location).expanduser()  # no scheme, or a Windows drive letter
    return None


def _download(location: str, into: Path) -> Path:
    """Download a non-local location with fsspec into ``into``; return the local copy."""
    try:
        fsspec = importlib.import_module("fsspec")
    except ImportError:
        raise ReproduceError(
            f"{location}: fetching {urlsplit(location).scheme}:// needs fsspec "
            "(pip install fsspec, plus e.g. s3fs or gcsfs for the scheme)"
        ) from None
    fs, path = fsspec.core.url_to_fs(location)
    into.mkdir(parents=True, exist_ok=True)
    target = into / (Path(path.rstrip("/")).name or "data")
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
    else:
        fs.get(path, str(target))
    return target


def _place(copy: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy.is_dir():
        shutil.copytree(copy, dest)
    else:
        shutil.copy2(copy, dest)


def fetch(inp: Input, *, worktree: Path, downloads: Path) -> Fetched:
    """Find a copy of ``inp`` with its recorded digest and put it where the code reads it."""
    assert inp.digest is not None
    dest = (worktree / inp.repo_path) if inp.repo_path else None
    if dest is not None and worktree.resolve() not in dest.resolve().parents:
        dest = None  # a recorded path that leads out of the worktree: never written to
    tried: list[str] = []
    if dest is not None and dest.exists():
        found, _size = digest_path(dest, use_cache=False)
        if found == inp.digest:
            return Fetched(inp, f"{inp.repo_path} at the recorded commit", dest)
        tried.append(f"found {found} at {inp.repo_path} in the worktree (the commit's copy)")
    for n, location in enumerate(inp.locations):
        path = local_path(location)
        try:
            if path is None:
                path = _download(location, downloads / f"{n}")
            elif not path.exists():
                tried.append(f"nothing at {location}")
                continue
            found, _size = digest_path(path, use_cache=False)
        except OSError as exc:
            tried.append(f"cannot read {location}: {exc}")
            continue
        if found != inp.digest:
            tried.append(f"found {found} at {location}")
            continue
        if dest is not None:
            _place(path, dest)
        return Fetched(inp, location, dest)
    raise DigestMismatch(
        f"dataset version {inp.label}: expected {inp.digest}, but "
        + "; ".join(tried or ["no location was recorded"])
        + ". The data changed since the run (or was removed), and no other copy is known: "
        "restore it at one of these locations to reproduce the run"
    )

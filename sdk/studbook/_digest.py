"""Content digests of files and directories, for dataset versions and outputs.

* A file: ``sha256:`` + the SHA-256 of its bytes (what ``sha256sum`` prints).
* A directory: every regular file below it (symlinks to files followed, symlinked directories
  not), in the order of their relative POSIX paths, contributes the line
  ``<relative path>\\0<size>\\0<sha256 hex of content>\\n``; the digest is the SHA-256 of those
  lines. Renaming, adding, removing or changing a file changes it; the order in which the file
  system lists entries, timestamps and permissions do not.

Files are read in 1 MiB chunks, several at a time (hashlib releases the GIL). Per-file digests
are cached by (path, size, mtime_ns) in ``$STUDBOOK_CACHE_DIR/digests/`` (default
``~/.cache/studbook/digests/``), one small NDJSON file per hashed root, so hashing an unchanged
tree again reads no file content. A file modified in the last two seconds is not cached: its
mtime may not yet tell a later change of the same size apart (the "racy git" problem).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from studbook._config import cache_root

CHUNK = 1 << 20
RACY_NS = 2_000_000_000
_PARALLEL_MIN_FILES = 4
_local = threading.local()

# (relative posix path, absolute path, size, mtime_ns)
_Entry = tuple[str, str, int, int]


def file_sha256(path: str) -> str:
    """SHA-256 hex of a file's content, read in 1 MiB chunks."""
    import hashlib  # lazily: loading OpenSSL costs megabytes of RSS

    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf: bytearray | None = getattr(_local, "buf", None)
        if buf is None:
            buf = _local.buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _walk(root: str, prefix: str = "") -> Iterator[_Entry]:
    with os.scandir(root) as it:
        entries = list(it)
    for entry in entries:
        rel = prefix + entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=True):
                st = entry.stat(follow_symlinks=True)
                yield rel, entry.path, st.st_size, st.st_mtime_ns
        except FileNotFoundError:  # removed while walking (or a dangling symlink)
            continue


def _cache_file(cache_dir: Path, root: str) -> Path:
    import hashlib

    return cache_dir / (hashlib.sha256(root.encode()).hexdigest()[:24] + ".ndjson")


def _load_cache(path: Path) -> dict[str, tuple[int, int, str]]:
    out: dict[str, tuple[int, int, str]] = {}
    try:
        raw = path.read_bytes()
    except OSError:
        return out
    for line in raw.splitlines():
        try:
            doc = orjson.loads(line)
            out[doc["p"]] = (int(doc["s"]), int(doc["m"]), str(doc["d"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a damaged line only costs a re-read
    return out


def _store_cache(path: Path, entries: dict[str, tuple[int, int, str]]) -> None:
    data = b"".join(
        orjson.dumps({"p": p, "s": s, "m": m, "d": d}) + b"\n" for p, (s, m, d) in entries.items()
    )
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written only costs time
        with contextlib.suppress(OSError):
            tmp.unlink()


def _hash_all(paths: list[str]) -> list[str]:
    if len(paths) < _PARALLEL_MIN_FILES:
        return [file_sha256(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    workers = min(8, (os.cpu_count() or 2), len(paths))
    with ThreadPoolExecutor(workers, thread_name_prefix="studbook-digest") as pool:
        return list(pool.map(file_sha256, paths))


def digest_path(
    path: str | os.PathLike[str], *, cache_dir: Path | None = None, use_cache: bool = True
) -> tuple[str, int]:
    """Return (``sha256:<hex>``, total size in bytes) of a file or a directory tree."""
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise FileNotFoundError(f"no such file or directory: {os.fspath(path)!r}")
    started = time.time_ns()
    single = not os.path.isdir(root)
    if single:
        st = os.stat(root)
        entries: list[_Entry] = [("", root, st.st_size, st.st_mtime_ns)]
    else:
        entries = sorted(_walk(root))
    cache_path = _cache_file(cache_dir or cache_root() / "digests", root) if use_cache else None
    cached = _load_cache(cache_path) if cache_path is not None else {}
    digests: dict[str, str] = {}
    misses: list[_Entry] = []
    for entry in entries:
        rel, _abs, size, mtime = entry
        hit = cached.get(rel)
        if hit is not None and hit[0] == size and hit[1] == mtime:
            digests[rel] = hit[2]
        else:
            misses.append(entry)
    for entry, hexdigest in zip(misses, _hash_all([e[1] for e in misses]), strict=True):
        digests[entry[0]] = hexdigest
    if cache_path is not None:
        fresh = {
            rel: (size, mtime, digests[rel])
            for rel, _abs, size, mtime in entries
            if mtime < started - RACY_NS
        }
        if fresh != cached:
            _store_cache(cache_path, fresh)
    total = sum(e[2] for e in entries)
    import hashlib

    if single:
        return "sha256:" + digests[""], total
    tree = hashlib.sha256()
    for rel, _abs, size, _mtime in entries:
        tree.update(f"{rel}\0{size}\0{digests[rel]}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + tree.hexdigest(), total


def locate(
    where: str | os.PathLike[str], *, hash_local: bool
) -> tuple[str, str | None, int | None]:
    """Return (uri, digest or None, size or None) for a uri or a local path.

    A string with a scheme (``s3://...``, ``file://...``) is taken as is; a local path that
    exists becomes a ``file://`` uri and, if ``hash_local``, is hashed.
    """
    text = os.fspath(where)
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a uri or a path, got {where!r}")
    scheme = text.partition("://")[0] if "://" in text else ""
    if scheme and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        if len(text) > 2048:
            raise ValueError("a uri must be at most 2048 characters")
        return text, None, None
    path = Path(text).expanduser()
    if not path.exists():
        if isinstance(where, os.PathLike):
            raise FileNotFoundError(f"no such file or directory: {text!r}")
        return text, None, None  # a uri of a kind we do not know: keep it as given
    uri = path.resolve().as_uri()
    if not hash_local:
        return uri, None, None
    digest, size = digest_path(path)
    return uri, digest, size

"""The software environment of a run: Python version, installed packages and their digest, host.

Listing the installed packages reads every ``*.dist-info`` directory on ``sys.path``: it is done
when the first run of a process starts, and cached per ``sys.path`` entry, keyed by the entry's
``stat``. Installing, upgrading or removing a package changes the modification time of the
directory it is installed in, so a run started after a ``pip install`` in the same process
(a notebook) lists it; entries that did not change are not read again.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
from typing import Any

MAX_PACKAGES = 5000

# sys.path entry -> (its stat, the requirements found there)
_by_entry: dict[str, tuple[tuple[int, int, int, int] | None, frozenset[str]]] = {}
# (the stat of every entry, in order) -> the environment payload built from them
_cached: tuple[tuple[object, ...], dict[str, Any]] | None = None
_lock = threading.Lock()


def _entry_packages(entry: str) -> frozenset[str]:
    import importlib.metadata  # lazily: it weighs more than the rest of the SDK

    found = set()
    for dist in importlib.metadata.distributions(path=[entry]):
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except (KeyError, OSError, ValueError):
            continue
        if name and version:
            found.add(f"{name}=={version}"[:500])
    return frozenset(found)


def packages() -> list[str]:
    """Installed distributions as sorted, de-duplicated ``name==version`` strings."""
    import importlib.metadata

    found = set()
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except (KeyError, OSError, ValueError):
            continue
        if name and version:
            found.add(f"{name}=={version}"[:500])
    return sorted(found, key=str.casefold)


def packages_digest(listing: list[str]) -> str:
    """``sha256:`` of the package list, one requirement per line."""
    import hashlib

    return "sha256:" + hashlib.sha256("\n".join(listing).encode()).hexdigest()


def _stamp(entry: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(entry or ".")
    except OSError:
        return None
    # A new *.dist-info directory also adds a link to its parent (its "..").
    return st.st_mtime_ns, st.st_nlink, st.st_size, st.st_ino


def cached_packages(path: list[str] | None = None) -> list[str]:
    """:func:`packages`, from the per-entry cache: only entries whose ``stat`` changed (or new
    ones) are read again."""
    found: set[str] = set()
    for entry in sys.path if path is None else path:
        stamp = _stamp(entry)
        hit = _by_entry.get(entry)
        if hit is None or hit[0] != stamp or stamp is None:
            listed = _entry_packages(entry) if stamp is not None else frozenset()
            _by_entry[entry] = (stamp, listed)
        else:
            listed = hit[1]
        found |= listed
    return sorted(found, key=str.casefold)


def environment_info() -> dict[str, Any]:
    """The ``environment`` payload of run.started (v2): computed when the first run starts, and
    again only when a ``sys.path`` entry changed (see the module's docstring)."""
    global _cached
    entries = list(sys.path)
    key = (tuple(entries), tuple(_stamp(e) for e in entries), socket.gethostname())
    with _lock:
        hit = _cached
        if hit is not None and hit[0] == key:
            return hit[1]
        listing = cached_packages(entries)
        info = {
            "python_version": platform.python_version(),
            "packages_digest": packages_digest(listing),
            "packages": listing[:MAX_PACKAGES],
            "host": key[2][:255],
        }
        _cached = (key, info)
        return info


if __name__ == "__main__":
    # `studbook reproduce` runs this file with a new environment's interpreter (`python -I`: no
    # script directory on sys.path) to list what it holds, the same way a run records it.
    import json

    print(json.dumps(packages()))

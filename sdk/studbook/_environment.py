"""The software environment of a run: Python version, installed packages and their digest, host."""

from __future__ import annotations

import functools
import platform
import socket
from typing import Any

MAX_PACKAGES = 5000


def packages() -> list[str]:
    """Installed distributions as sorted, de-duplicated ``name==version`` strings."""
    import importlib.metadata  # lazily: it weighs more than the rest of the SDK

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


@functools.cache
def environment_info() -> dict[str, Any]:
    """The ``environment`` payload of run.started (v2), computed once per process."""
    listing = packages()
    return {
        "python_version": platform.python_version(),
        "packages_digest": packages_digest(listing),
        "packages": listing[:MAX_PACKAGES],
        "host": socket.gethostname()[:255],
    }


if __name__ == "__main__":
    # `studbook reproduce` runs this file with a new environment's interpreter (`python -I`: no
    # script directory on sys.path) to list what it holds, the same way a run records it.
    import json

    print(json.dumps(packages()))

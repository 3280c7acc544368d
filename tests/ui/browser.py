"""Headless Chromium from Debian (`/usr/bin/chromium`), driven by Playwright on that executable:
nothing here downloads a browser. `scripts/test` installs the `chromium` and `chromium-driver`
packages when they are missing; without them the tests fail saying how to get them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("STUDBOOK_CHROMIUM", "/usr/bin/chromium")

# What this machine needs: no sandbox as root, and no background connections (the network is
# closed; Chromium's own update, sync and safe-browsing calls would be refused many at a time).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(
            f"no Chromium at {CHROMIUM}: install Debian's packages (as root: apt-get update && "
            "apt-get install -y chromium chromium-driver; scripts/test does this), or point "
            "STUDBOOK_CHROMIUM at a Chromium executable"
        )
    return CHROMIUM


@contextlib.contextmanager
def browser(**context: Any) -> Iterator[Any]:
    """A Playwright browser context on Debian's Chromium with a new empty profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="studbook-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile,
                executable_path=chromium(),
                headless=True,
                args=FLAGS,
                viewport=context.pop("viewport", {"width": 1400, "height": 900}),
                **context,
            )
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

"""The committed bundle (studbook_server/ui/static) is exactly what web/ builds, and the front
end's own checks pass: vitest's unit tests and svelte-check's types.

Users get the UI with Python only, so the built files are committed; this keeps them honest. A
build is deterministic (content-hashed names, no timestamps or source maps), so a fresh build
into a temporary folder must match byte for byte. `npm ci` runs when web/node_modules does not
match web/package-lock.json (a stamp file remembers the lockfile it installed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from studbook_server.ui import STATIC

WEB = Path(__file__).resolve().parents[2] / "web"
STAMP = WEB / "node_modules" / ".studbook-package-lock.sha256"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise AssertionError(
            "npm (Node.js 20+) is needed to check the web UI's bundle against web/: install "
            "Node.js (Debian: apt-get install -y nodejs npm)"
        )
    return npm


def _run(*argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        argv, cwd=WEB, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "CI": "1", "NO_COLOR": "1", **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{' '.join(argv)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _node_modules() -> None:
    want = hashlib.sha256((WEB / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    _run(_npm(), "ci", "--no-audit", "--no-fund", "--loglevel=error")
    STAMP.write_text(want + "\n")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_committed_bundle_is_what_the_sources_build(tmp_path: Path) -> None:
    _node_modules()
    out = tmp_path / "static"
    _run(_npm(), "run", "build", "--silent", env={"STUDBOOK_UI_OUT": str(out)})
    built, committed = _files(out), _files(STATIC)
    stale = sorted(
        name for name in built.keys() | committed.keys() if built.get(name) != committed.get(name)
    )
    assert not stale, (
        "services/studbook_server/ui/static is not what web/ builds; rebuild and commit it "
        f"(cd web && npm ci && npm run build). Differing files: {stale}"
    )


def test_front_end_unit_tests() -> None:
    _node_modules()
    _run(_npm(), "test", "--silent")


def test_front_end_types() -> None:
    _node_modules()
    _run(_npm(), "run", "check", "--silent")

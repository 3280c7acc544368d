"""The environment of a re-run: a fresh virtual environment with exactly the recorded packages.

The interpreter is the recorded Python version's: ``--python`` if given, else this interpreter,
``uv python find`` or ``pythonX.Y`` / ``python3`` on PATH, whichever has exactly that version
(one of the same minor version is used when none has it, and the plan says so; uv never
downloads one). The packages are installed with uv (the ``uv`` on PATH, or the one the ``uv``
package installed beside this interpreter) without their dependencies (``--no-deps``: the
recorded list is the whole environment), else with ``python -m venv --without-pip`` and this
interpreter's pip. The result is listed the way the SDK lists a run's packages and checked
against the recorded list and its digest.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from studbook import _environment
from studbook._reproduce.errors import EnvironmentMismatch, NotReproducible, ReproduceError
from studbook._reproduce.plan import Environment

# uv must find interpreters, never fetch one.
_UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}


@dataclass(frozen=True, slots=True)
class Installer:
    """``uv`` (its executable) or ``pip`` (this interpreter's)."""

    kind: str
    executable: str

    def __str__(self) -> str:
        return "uv" if self.kind == "uv" else "pip (uv was not found)"


@dataclass(frozen=True, slots=True)
class Interpreter:
    path: str
    version: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Index:
    """Where packages come from: pip/uv's own defaults unless given."""

    find_links: tuple[str, ...] = ()
    index_url: str | None = None
    no_index: bool = False

    def options(self) -> list[str]:
        out = [f"--find-links={f}" for f in self.find_links]
        if self.index_url:
            out.append(f"--index-url={self.index_url}")
        if self.no_index:
            out.append("--no-index")
        return out


def _run(cmd: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            env={**os.environ, **_UV_ENV},
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ReproduceError(f"cannot run {cmd[0]}: {exc}") from exc


def find_installer() -> Installer:
    """uv if there is one, else pip; :class:`ReproduceError` when there is neither."""
    found = shutil.which("uv")
    if found is None:
        try:  # the `uv` package (e.g. the dev extra) puts its binary beside the interpreter
            found = str(importlib.import_module("uv").find_uv_bin())
        except (ImportError, FileNotFoundError):
            found = None
    if found is not None:
        return Installer("uv", found)
    if _run([sys.executable, "-m", "pip", "--version"]).returncode == 0:
        return Installer("pip", sys.executable)
    raise ReproduceError(
        "neither uv nor pip is available to install the environment: pip install uv"
    )


def _version_of(python: str) -> str | None:
    done = _run([python, "-c", "import platform; print(platform.python_version())"])
    return done.stdout.strip() if done.returncode == 0 else None


def _candidates(version: str, installer: Installer) -> list[str]:
    out = [sys.executable]
    if installer.kind == "uv":
        done = _run([installer.executable, "python", "find", f"=={version}"])
        if done.returncode == 0 and done.stdout.strip():
            out.append(done.stdout.strip())
    minor = ".".join(version.split(".")[:2])
    for name in (f"python{minor}", "python3", "python"):
        found = shutil.which(name)
        if found:
            out.append(found)
    return list(dict.fromkeys(out))


def find_python(version: str | None, installer: Installer, explicit: str | None) -> Interpreter:
    """The interpreter for the recorded ``version`` (see the module docstring)."""
    if explicit is not None:
        actual = _version_of(explicit)
        if actual is None:
            raise NotReproducible(f"--python {explicit}: not a working Python interpreter")
        note = None if version in (None, actual) else f"Python {actual} (--python), not {version}"
        return Interpreter(explicit, actual, note)
    if version is None:
        return Interpreter(sys.executable, _version_of(sys.executable) or "?", None)
    same_minor: Interpreter | None = None
    minor = version.split(".")[:2]
    for candidate in _candidates(version, installer):
        actual = _version_of(candidate)
        if actual == version:
            return Interpreter(candidate, actual)
        if actual is not None and actual.split(".")[:2] == minor and same_minor is None:
            note = f"Python {version} is not installed here: using {actual} ({candidate})"
            same_minor = Interpreter(candidate, actual, note)
    if same_minor is not None:
        return same_minor
    raise NotReproducible(
        f"the run used Python {version}, and no Python {'.'.join(minor)} was found: install it "
        "(e.g. uv python install " + version + ") or pass --python PATH"
    )


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def create(venv: Path, python: Interpreter, installer: Installer, packages: tuple[str, ...],
           index: Index) -> None:  # fmt: skip
    """A new virtual environment at ``venv`` holding exactly ``packages``."""
    if installer.kind == "uv":
        made = _run([installer.executable, "venv", "--quiet", "--python", python.path, str(venv)],
                    cwd=venv.parent)  # fmt: skip
    else:
        made = _run([python.path, "-m", "venv", "--without-pip", str(venv)])
    if made.returncode != 0:
        raise ReproduceError(f"creating the virtual environment failed: {made.stderr.strip()}")
    if not packages:
        return
    requirements = venv.parent / "requirements.txt"
    requirements.write_text("".join(f"{p}\n" for p in packages))
    target = str(venv_python(venv))
    if installer.kind == "uv":
        cmd = [installer.executable, "pip", "install", "--quiet", "--python", target]
    else:
        cmd = [installer.executable, "-m", "pip", "--python", target, "install", "--quiet",
               "--disable-pip-version-check", "--no-input"]  # fmt: skip
    done = _run([*cmd, "--no-deps", *index.options(), "-r", str(requirements)])
    if done.returncode != 0:
        raise EnvironmentMismatch(
            f"installing the recorded packages with {installer.kind} failed (is each one on the "
            "index? pass --find-links DIR or --index-url URL for private ones):\n"
            + (done.stderr or done.stdout).strip()
        )


def listing(venv: Path) -> list[str]:
    """The environment's packages, listed by the same code that lists a run's (the SDK's
    ``_environment.py``, run as a script in isolated mode so its folder is not on sys.path)."""
    done = _run([str(venv_python(venv)), "-I", _environment.__file__])
    if done.returncode != 0:
        raise ReproduceError(f"listing the new environment failed: {done.stderr.strip()}")
    found: list[str] = json.loads(done.stdout)
    return found


def verify(found: list[str], recorded: Environment) -> str:
    """Check ``found`` against the record; return its digest."""
    digest = _environment.packages_digest(found)
    if recorded.complete and digest == recorded.packages_digest:
        return digest
    want = set(recorded.packages)
    have = set(found)
    if not recorded.complete and want == have:
        return digest
    missing, extra = sorted(want - have, key=str.casefold), sorted(have - want, key=str.casefold)
    raise EnvironmentMismatch(
        f"the new environment's packages ({digest}) are not the recorded ones "
        f"({recorded.packages_digest}): missing {', '.join(missing) or 'none'}; "
        f"not recorded {', '.join(extra) or 'none'}"
    )

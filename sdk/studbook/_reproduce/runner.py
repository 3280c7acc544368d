"""`studbook reproduce`: the steps, in order, and what each prints.

1. read the run's record from the GraphQL API and build the plan; find the commit, an installer
   and the interpreter; print the plan and ask (unless ``--yes``);
2. code: a fresh worktree (or clone) at the recorded commit, the recorded diff applied;
3. data: every input dataset version found and verified (a mismatch stops here, before
   anything runs);
4. environment: a fresh virtual environment with exactly the recorded packages, verified;
5. run: the recorded command line (with ``--set`` changes) in that worktree and environment,
   reporting to Studbook as a new run that records which run it re-runs;
6. compare the new run with the original (``compareRuns``) and print the verdict.

Everything stays in the work folder (printed at the end) for inspection.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from studbook import _rerun
from studbook._config import cache_root
from studbook._events import uuid7
from studbook._reproduce import code, data, environment
from studbook._reproduce import plan as planning
from studbook._reproduce import verdict as judging
from studbook._reproduce.api import Api, endpoint
from studbook._reproduce.errors import NotReproducible, ReproduceError

_PROJECT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Variables of the caller's Python that must not leak into the new environment's.
_DROPPED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")


@dataclass(slots=True)
class Options:
    """What the command line asked for (see ``studbook reproduce --help``)."""

    run: str
    project: str | None = None
    url: str | None = None
    repo: Path | None = None
    workdir: Path | None = None
    changes: dict[str, str] = field(default_factory=dict)
    args: dict[int, str] = field(default_factory=dict)
    rtol: float = 1e-6
    atol: float = 0.0
    python: str | None = None
    index: environment.Index = field(default_factory=environment.Index)
    yes: bool = False
    dry_run: bool = False
    timeout_s: float = 60.0


def run_id_of(text: str, project: str | None) -> str:
    """The global id of a run given as ``<project>/run:<id>``, ``run:<id>`` or ``<id>``."""
    head, slash, rest = text.partition("/")
    if slash:
        given_project, key = head, rest.removeprefix("run:")
    else:
        given_project, key = project or os.environ.get("STUDBOOK_PROJECT") or "", text
        key = key.removeprefix("run:")
        if not given_project:
            raise ReproduceError(
                f"run {text!r} names no project: give `<project>/run:<id>`, --project or "
                "STUDBOOK_PROJECT"
            )
    if not _PROJECT.fullmatch(given_project) or not _RUN_ID.fullmatch(key):
        raise ReproduceError(f"{text!r} is not a run id, e.g. churn/run:0190f1c2-... or a run id")
    return f"{given_project}/run:{key}"


def _workdir(options: Options, run_id: str) -> Path:
    if options.workdir is not None:
        where = options.workdir.expanduser().resolve()
    else:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        where = cache_root() / "reproductions" / f"{run_id}-{stamp}"
    if where.exists() and any(where.iterdir()):
        raise ReproduceError(f"the work folder {where} is not empty: give another with --workdir")
    return where


def _confirm(ask: Callable[[str], str]) -> bool:
    if not sys.stdin.isatty():
        raise ReproduceError("not asking without a terminal: pass --yes to go ahead")
    return ask("Go ahead? [y/N] ").strip().lower() in ("y", "yes")


def reproduce(
    options: Options, *, out: TextIO | None = None, ask: Callable[[str], str] = input
) -> int:
    """Re-run ``options.run``; return the exit code (0 reproduced, 1 not; errors raise)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    graphql_url, server = endpoint(options.url)
    api = Api(graphql_url, os.environ.get("STUDBOOK_TOKEN") or None)
    original = run_id_of(options.run, options.project)
    record = api.record(original)
    plan = planning.build(record, changes=options.changes, args=options.args)
    workdir = _workdir(options, plan.run_id)
    if plan.blockers:
        say(planning.render(plan, workdir=str(workdir), code_from="-", python="-",
                            installer="-", server=server))  # fmt: skip
        raise NotReproducible(f"{original} cannot be re-run: " + "; ".join(plan.blockers))
    assert plan.commit is not None
    repo = options.repo.expanduser().resolve() if options.repo else code.toplevel(Path.cwd())
    origin = code.source(repo, plan.commit, plan.remote)
    installer = environment.find_installer()
    python = environment.find_python(plan.environment.python_version, installer, options.python)
    if python.note:
        plan.gaps.append(python.note)
    say(planning.render(plan, workdir=str(workdir), code_from=origin, python=python.path,
                        installer=str(installer), server=server))  # fmt: skip
    if options.dry_run:
        return 0
    if not options.yes and not _confirm(ask):
        raise ReproduceError("not confirmed: nothing was done")

    workdir.mkdir(parents=True, exist_ok=True)
    worktree = workdir / "code"
    code.check_out(origin, plan.commit, worktree)
    say(f"code: commit {plan.commit} checked out into {worktree}")
    if plan.diff is not None:
        code.apply_diff(worktree, plan.diff)
        say(f"code: applied the recorded uncommitted changes ({plan.diff.digest})")
    for inp in plan.inputs:
        if inp.digest is None:
            say(f"data: {inp.label}: no digest was recorded, not checked")
            continue
        folder = re.sub(r"[^A-Za-z0-9._@-]", "_", inp.label)
        got = data.fetch(inp, worktree=worktree, downloads=workdir / "downloads" / folder)
        where = f", put at {inp.repo_path}" if got.placed_at is not None else ""
        say(f"data: {inp.label}: {inp.digest} verified, from {got.found_at}{where}")
    venv = workdir / "venv"
    environment.create(venv, python, installer, plan.environment.packages, options.index)
    digest = environment.verify(environment.listing(venv), plan.environment)
    say(f"environment: {venv} with Python {python.version}, packages {digest}")

    rerun_id = uuid7()
    rerun = f"{plan.project}/run:{rerun_id}"
    cwd = (worktree / plan.working_dir).resolve()
    if not cwd.is_dir():
        raise NotReproducible(f"the working directory {plan.working_dir} is not in the commit")
    command = plan.command()
    if plan.module is None:
        command[0] = str(worktree / command[0])
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    bin_dir = environment.venv_python(venv).parent
    env |= {
        "VIRTUAL_ENV": str(venv),
        "PATH": str(bin_dir) + os.pathsep + env.get("PATH", ""),
        "STUDBOOK_URL": server,
        "STUDBOOK_PROJECT": plan.project,
        **_rerun.environment(_rerun.Rerun(plan.run_id, rerun_id, plan.derived)),
    }
    say(f"run: {rerun} (python {planning.shown_command(plan)})")
    try:
        finished = subprocess.run(
            [str(environment.venv_python(venv)), *command], cwd=cwd, env=env, check=False
        )
    except OSError as exc:
        raise ReproduceError(f"cannot start the re-run: {exc}") from exc
    wait_s = options.timeout_s
    if finished.returncode != 0:
        say(f"run: the command exited with status {finished.returncode}")
        wait_s = min(wait_s, 10.0)  # it may have failed before it started a run at all
    status = api.wait_finished(rerun, wait_s)
    link = status.get("derivedFrom" if plan.derived else "reproducedFrom")
    comparison = api.compare(original, rerun)
    verdict = judging.judge(comparison, status=status["status"], rtol=options.rtol,
                            atol=options.atol, changes=plan.changes,
                            original_status=plan.status)  # fmt: skip
    if link is None or link.get("id") != original:
        verdict.notes.append(
            "the re-run did not record which run it re-runs (does the environment's SDK "
            "predate `studbook reproduce`?)"
        )
    say(judging.render(verdict, original=original, rerun=rerun, rtol=options.rtol,
                       atol=options.atol))  # fmt: skip
    if link is not None and link.get("id") == original:
        kind = "derived from" if plan.derived else "a reproduction of"
        say(f"lineage: {rerun} is {kind} {original}")
    remove = (
        f" (the worktree: git -C {origin} worktree remove --force {worktree})"
        if Path(origin).is_dir()
        else ""
    )
    say(f"kept: {workdir}{remove}")
    return verdict.exit_code

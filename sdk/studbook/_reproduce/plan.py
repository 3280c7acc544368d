"""The plan of a re-run, made from a run's record alone: pure, no I/O.

:func:`build` reads the record the GraphQL API returns for a run (``code``, ``environment``,
``params``, ``inputs`` with their dataset versions, ``codeDiff``) and decides what will be
checked out, installed, fetched and run. What the record lacks is a *gap* (the re-run goes on,
and the plan says what is missing: a run recorded before the SDK kept command lines, say); what
makes a re-run impossible is a *blocker* (no commit, no entry point, a masked argument not
given again with ``--arg``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from studbook._commandline import masked, masked_positions, with_params
from studbook._environment import packages_digest

_REPO_PATH = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$)).+$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class Input:
    """An input dataset version: where to look for it, and where the code reads it."""

    id: str
    label: str
    role: str | None
    digest: str | None
    size_bytes: int | None
    locations: tuple[str, ...]
    repo_path: str | None


@dataclass(frozen=True, slots=True)
class Diff:
    """The recorded uncommitted changes: digest and size; ``data`` when they were stored."""

    digest: str
    size_bytes: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Environment:
    """The recorded environment: Python version and packages (``complete``: the list matches
    its recorded digest, i.e. it was not cut short)."""

    python_version: str | None
    packages: tuple[str, ...]
    packages_digest: str | None
    complete: bool


@dataclass(slots=True)
class Plan:
    """What a re-run of ``run`` does; :attr:`blockers` empty means it can go ahead."""

    run: str
    project: str
    run_id: str
    name: str | None
    status: str
    commit: str | None
    remote: str | None
    diff: Diff | None
    working_dir: str
    entry_point: str | None
    module: str | None
    argv: list[str]
    params: dict[str, Any]
    changes: dict[str, str]
    inputs: list[Input]
    environment: Environment
    notes: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    @property
    def derived(self) -> bool:
        """Params change (``--set``): the re-run is a derived run, not a reproduction."""
        return bool(self.changes)

    def command(self) -> list[str]:
        """The interpreter's arguments: the module or the script, then the command line."""
        if self.module is not None:
            return ["-m", self.module, *self.argv]
        assert self.entry_point is not None
        return [self.entry_point, *self.argv]


def _diff(code: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> tuple[Diff | None, str]:
    """The recorded diff, or None with the gap to report ("" when the tree was clean)."""
    meta = code.get("diff")
    if not code.get("git_dirty"):
        return None, ""
    if meta is None:
        return None, (
            "the working tree had uncommitted changes, and they were not recorded (the run "
            "predates recorded diffs, or git was too slow): the code is the commit without them"
        )
    if not meta.get("stored"):
        return None, (
            f"the uncommitted changes ({meta['size_bytes']} bytes) were over the SDK's size cap "
            "and not recorded: the code is the commit without them"
        )
    if recorded is None or recorded.get("text") is None:
        return None, (
            "the uncommitted changes were recorded, but their text is not available (erased by "
            "a redaction, or its event was refused): the code is the commit without them"
        )
    text = recorded["text"]
    data = base64.b64decode(text) if recorded.get("encoding") == "base64" else text.encode()
    return Diff(meta["digest"], meta["size_bytes"], data), ""


def _input(ref: Mapping[str, Any]) -> tuple[Input, str | None, str | None]:
    """An input, and the blocker or the gap it makes, if any."""
    label = f"{ref['dataset']}@{ref['version']}"
    version = ref.get("datasetVersion")
    if version is None:
        blocker = (
            f"input {label}: its dataset version was never recorded (no digest to check the "
            "data against)"
        )
        return Input(ref["id"], label, ref.get("role"), None, None, (), None), blocker, None
    if version.get("digest") is None:
        gap = (
            f"input {label} was reported without a content digest (by a pipeline): it cannot "
            "be checked, and the code reads it from wherever it does"
        )
        return Input(ref["id"], label, ref.get("role"), None, None, (), None), None, gap
    source = version.get("source") or {}
    repo_path = source.get("repoPath")
    if repo_path is not None and not _REPO_PATH.match(repo_path):
        repo_path = None  # never outside the worktree
    # Cheapest first: the copy the code read (a local path), then where the data lives.
    locations = tuple(dict.fromkeys(u for u in (source.get("uri"), version["uri"]) if u))
    return Input(
        ref["id"], label, ref.get("role"), version["digest"], version.get("sizeBytes"),
        locations, repo_path,
    ), None, None  # fmt: skip


def build(
    run: Mapping[str, Any],
    *,
    changes: Mapping[str, str] | None = None,
    args: Mapping[int, str] | None = None,
) -> Plan:
    """The plan for re-running ``run`` (the GraphQL ``run`` object), with ``changes`` to its
    params (``--set``) and values for arguments that were masked when recorded (``--arg``)."""
    changes = dict(changes or {})
    args = dict(args or {})
    code: Mapping[str, Any] = run.get("code") or {}
    env: Mapping[str, Any] = run.get("environment") or {}
    gaps: list[str] = []
    blockers: list[str] = []
    notes: list[str] = []

    status = run.get("status") or "RUNNING"
    if status == "RUNNING":
        gaps.append("the run has not finished: its metrics may still change")
    commit = code.get("git_commit")
    if commit is None:
        blockers.append("the run recorded no git commit: there is no code to check out")
    entry_point, module = code.get("entry_point"), code.get("module")
    if module is None and entry_point is None:
        blockers.append(
            "the run recorded no entry point (was it started from a notebook or an interactive "
            "session?): there is nothing to run"
        )
    elif module is not None and not _MODULE.match(module):
        blockers.append(f"the recorded module `{module}` is not a module name")
    elif module is None and not _REPO_PATH.match(str(entry_point)):
        blockers.append(
            f"the recorded entry point `{entry_point}` is not a path inside the repository"
        )
    diff, gap = _diff(code, run.get("codeDiff"))
    if gap:
        gaps.append(gap)

    recorded_argv: Sequence[str] | None = code.get("argv")
    if recorded_argv is None:
        gaps.append(
            "the command line was not recorded (the run predates recorded command lines): "
            "running the entry point without arguments"
        )
        recorded_argv = []
    argv = list(recorded_argv)
    for index, value in sorted(args.items()):
        if not 0 <= index < len(argv):
            blockers.append(f"--arg {index}: the recorded command line has {len(argv)} arguments")
        else:
            argv[index] = value
            notes.append(f"--arg {index}: argument {index} given on the command line")
    for index in masked_positions(recorded_argv):
        if index not in args:
            blockers.append(
                f"argument {index} (`{recorded_argv[index]}`) was masked when recorded (it looked "
                f"like a secret): give it with --arg {index}=VALUE (the whole argument)"
            )
    params = {p["key"]: p["value"] for p in run.get("params") or []}
    if changes:
        argv, changed = with_params(argv, changes)
        notes.extend(changed)
        notes.extend(
            f"--set {key}: `{key}` is not a recorded param of the run"
            for key in changes
            if key not in params
        )
    working_dir = code.get("working_dir")
    if working_dir is None or not _REPO_PATH.match(working_dir):
        if commit is not None:
            gaps.append("the working directory was not recorded: running from the repository root")
        working_dir = "."

    inputs = []
    for ref in run.get("inputs") or []:
        found, blocker, unverifiable = _input(ref)
        inputs.append(found)
        if blocker:
            blockers.append(blocker)
        if unverifiable:
            gaps.append(unverifiable)

    listed = tuple(env.get("packages") or ())
    digest = env.get("packages_digest")
    complete = bool(listed) and digest is not None and packages_digest(list(listed)) == digest
    if not listed:
        gaps.append("no package list was recorded: the new environment holds no packages")
    elif not complete:
        gaps.append(
            "the recorded package list does not match its recorded digest (it was cut short): "
            "installing the packages listed, checked against the list rather than the digest"
        )
    if env.get("python_version") is None:
        gaps.append("no Python version was recorded: using this interpreter's")
    return Plan(
        run=run["id"],
        project=run["project"],
        run_id=run["runId"],
        name=run.get("name"),
        status=status,
        commit=commit,
        remote=code.get("git_repo"),
        diff=diff,
        working_dir=working_dir,
        entry_point=entry_point,
        module=module,
        argv=argv,
        params=params,
        changes=changes,
        inputs=inputs,
        environment=Environment(env.get("python_version"), listed, digest, complete),
        notes=notes,
        gaps=gaps,
        blockers=blockers,
    )


def shown_command(plan: Plan) -> str:
    """The command as printed: secrets given with ``--arg`` stay masked."""
    return " ".join(masked(plan.command()))


def render(
    plan: Plan,
    *,
    workdir: str,
    code_from: str,
    python: str,
    installer: str,
    server: str,
) -> str:
    """The plan as the command prints it before asking."""
    kind = "a derived run (params changed)" if plan.derived else "a reproduction"
    title = f"{plan.run}" + (f" ({plan.name})" if plan.name else "")
    lines = [f"Re-run {title} as {kind}:"]
    lines.append(f"  code:         commit {plan.commit} from {code_from}")
    lines.append(f"                checked out into {workdir}/code (a fresh worktree)")
    if plan.diff is not None:
        lines.append(
            f"                + the recorded uncommitted changes ({plan.diff.size_bytes} bytes, "
            f"{plan.diff.digest})"
        )
    env = plan.environment
    lines.append(
        f"  environment:  {workdir}/venv: Python {env.python_version or '(not recorded)'} "
        f"({python}), {len(env.packages)} packages installed with {installer}"
    )
    if env.packages_digest:
        lines.append(f"                checked against {env.packages_digest}")
    if not plan.inputs:
        lines.append("  data:         no input dataset versions were recorded")
    for inp in plan.inputs:
        if inp.digest is None:
            lines.append(f"  data:         {inp.label} ({inp.role or 'input'}): not checked")
            continue
        lines.append(f"  data:         {inp.label} ({inp.role or 'input'}): {inp.digest}")
        for where in inp.locations:
            lines.append(f"                  looked for at {where}")
        if inp.repo_path:
            lines.append(f"                  put at {inp.repo_path} in the worktree")
    where = plan.working_dir if plan.working_dir != "." else "the repository root"
    lines.append(f"  run:          python {shown_command(plan)}   (in {where})")
    if plan.params:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(plan.params.items()))
        lines.append(f"  params:       recorded: {shown}")
    if plan.changes:
        shown = ", ".join(f"{k}={v}" for k, v in plan.changes.items())
        lines.append(f"                changed: {shown}")
    for note in plan.notes:
        lines.append(f"                {note}")
    lines.append(f"  reports to:   {server}, as {kind} of {plan.run}")
    lines.append("  then:         compares the new run's metrics with the original's")
    if plan.gaps:
        lines.append("Missing from the record:")
        lines.extend(f"  - {gap}" for gap in plan.gaps)
    if plan.blockers:
        lines.append("Cannot re-run:")
        lines.extend(f"  - {blocker}" for blocker in plan.blockers)
    return "\n".join(lines)

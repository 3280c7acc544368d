"""The verdict on a re-run, from the `compareRuns` answer for [original, re-run]: pure.

A reproduction is **reproduced** when the re-run completed, every metric of the original has a
latest value in the re-run within the tolerance (``math.isclose(new, old, rel_tol=rtol,
abs_tol=atol)``), and the params, the input dataset versions, the commit and the packages are
the same. Otherwise it is **different**, and the verdict says which of those differ. A derived
run (``--set``) is expected to differ: its verdict is **derived**, with the same comparison
shown for information, and a warning when a changed param did not reach the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

REPRODUCED = "reproduced"
DIFFERENT = "different"
DERIVED = "derived"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MetricCheck:
    """One metric: the original's and the re-run's latest values, and whether they agree."""

    key: str
    original: float | None
    rerun: float | None
    within: bool

    @property
    def relative(self) -> float | None:
        """|rerun - original| / |original| (None when either is missing or original is 0)."""
        if self.original is None or self.rerun is None or self.original == 0:
            return None
        return abs(self.rerun - self.original) / abs(self.original)


@dataclass(slots=True)
class Verdict:
    outcome: str
    metrics: list[MetricCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when reproduced (or a derived run completed), 1 otherwise."""
        return 0 if self.outcome in (REPRODUCED, DERIVED) else 1


def _same_param(logged: Any, given: str) -> bool:
    """Whether a param the run logged is the value given with ``--set``."""
    if isinstance(logged, bool) or logged is None:
        return str(logged).lower() == given.lower() or orjson.dumps(logged).decode() == given
    if isinstance(logged, int | float):
        try:
            return float(given) == float(logged)
        except ValueError:
            return False
    return str(logged) == given


def _show(value: Any) -> str:
    return orjson.dumps(value).decode()


def judge(
    comparison: Mapping[str, Any],
    *,
    status: str,
    rtol: float,
    atol: float = 0.0,
    changes: Mapping[str, str] | None = None,
    original_status: str = "COMPLETED",
) -> Verdict:
    """Judge column 1 (the re-run, finished as ``status``) of ``comparison`` against column 0
    (the original, ``original_status``): a failed run reproduces as a failed run."""
    changes = dict(changes or {})
    derived = bool(changes)
    verdict = Verdict(DERIVED if derived else REPRODUCED)
    differences: list[str] = []
    if status != original_status:
        verdict.reasons.append(
            f"the re-run is {status}, the original {original_status}"
            if status == "COMPLETED"
            else f"the re-run did not complete: it is {status} (the original: {original_status})"
        )
    for m in comparison.get("metrics", []):
        old, new = m["last"][0], m["last"][1]
        if old is None:
            verdict.notes.append(f"metric {m['key']}: only the re-run has it ({new})")
            continue
        within = new is not None and math.isclose(new, old, rel_tol=rtol, abs_tol=atol)
        verdict.metrics.append(MetricCheck(m["key"], old, new, within))
        if not within:
            differences.append(
                f"metric {m['key']}: {old} -> {new if new is not None else 'missing'}"
            )
    for p in comparison.get("params", []):
        old, new = p["values"][0], p["values"][1]
        key = p["key"]
        if key in changes:
            if not _same_param(new, changes[key]):
                verdict.notes.append(
                    f"param {key}: the re-run logged {_show(new)}, not the --set value "
                    f"{changes[key]}: does the script read it from its command line?"
                )
        elif p["differs"]:
            differences.append(f"param {key}: {_show(old)} -> {_show(new)}")
    for d in comparison.get("datasets", []):
        if d["differs"]:
            side = "only the original" if d["present"][0] else "only the re-run"
            differences.append(f"input {d['label']}: used by {side}")
    code = comparison.get("code") or {}
    commits = code.get("gitCommit") or [None, None]
    if commits[0] != commits[1]:
        differences.append(f"code: commit {commits[0]} -> {commits[1]}")
    envs = comparison.get("environments") or [None, None]
    old_env, new_env = envs[0] or {}, envs[1] or {}
    if old_env.get("packages_digest") != new_env.get("packages_digest"):
        differences.append(
            f"environment: packages {old_env.get('packages_digest')} -> "
            f"{new_env.get('packages_digest')}"
        )
    if old_env.get("python_version") != new_env.get("python_version"):
        verdict.notes.append(
            f"environment: Python {old_env.get('python_version')} -> "
            f"{new_env.get('python_version')}"
        )
    if derived:
        verdict.notes.extend(differences)
    else:
        verdict.reasons.extend(differences)
    if verdict.reasons:
        verdict.outcome = FAILED if status not in ("COMPLETED", original_status) else DIFFERENT
    return verdict


def render(verdict: Verdict, *, original: str, rerun: str, rtol: float, atol: float) -> str:
    """The comparison table and the verdict line."""
    lines = [f"Metrics (latest values), {original} -> {rerun}:"]
    if not verdict.metrics:
        lines.append("  (the original run has no metrics)")
    width = max((len(m.key) for m in verdict.metrics), default=0)
    for m in verdict.metrics:
        rel = m.relative
        mark = "ok" if m.within else "DIFFERS"
        delta = f"rel. diff {rel:.3g}" if rel is not None else ""
        lines.append(
            f"  {m.key:<{width}}  {m.original!r:>14} -> {m.rerun!r:<14} {delta:<18} {mark}"
        )
    for reason in verdict.reasons:
        lines.append(f"  - {reason}")
    for note in verdict.notes:
        lines.append(f"  note: {note}")
    tolerance = f"rtol {rtol:g}" + (f", atol {atol:g}" if atol else "")
    within = sum(m.within for m in verdict.metrics)
    summary = {
        REPRODUCED: f"REPRODUCED: {within} of {len(verdict.metrics)} metrics within {tolerance}",
        DIFFERENT: f"DIFFERENT: {len(verdict.reasons)} difference(s) ({tolerance})",
        FAILED: "FAILED: " + "; ".join(verdict.reasons),
        DERIVED: (
            f"DERIVED run (params changed): {within} of {len(verdict.metrics)} metrics within "
            f"{tolerance} of the original"
        ),
    }[verdict.outcome]
    lines.append(f"verdict: {summary}")
    return "\n".join(lines)

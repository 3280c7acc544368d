"""How `studbook reproduce` tells the re-run process which run it re-runs.

The command sets three environment variables for the process it starts; the first run that
process starts claims them (:func:`claim`) and removes them from ``os.environ``, so that a child
process the script starts, or a second run, is not taken for the reproduction too.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

ENV_OF = "STUDBOOK_REPRODUCES"
ENV_RUN_ID = "STUDBOOK_REPRODUCTION_RUN_ID"
ENV_DERIVED = "STUDBOOK_REPRODUCTION_DERIVED"

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Rerun:
    """The run being re-run (``of``), the id chosen for the re-run, and whether params changed."""

    of: str
    run_id: str | None
    derived: bool


def environment(rerun: Rerun) -> dict[str, str]:
    """The variables that hand ``rerun`` to the process about to start."""
    out = {ENV_OF: rerun.of, ENV_DERIVED: "1" if rerun.derived else "0"}
    if rerun.run_id is not None:
        out[ENV_RUN_ID] = rerun.run_id
    return out


def claim() -> Rerun | None:
    """The re-run this process was started for, once; None afterwards and in other processes."""
    with _lock:
        of = os.environ.pop(ENV_OF, None)
        run_id = os.environ.pop(ENV_RUN_ID, None)
        derived = os.environ.pop(ENV_DERIVED, "0")
    if not of:
        return None
    return Rerun(of, run_id or None, derived == "1")

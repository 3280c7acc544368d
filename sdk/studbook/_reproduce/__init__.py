"""`studbook reproduce <run>`: re-run a recorded run from its record, and judge the result.

Read top-down: :mod:`.plan` turns the run's record (from the GraphQL API, :mod:`.api`) into a
plan, purely; :mod:`.code` checks the commit out into a fresh worktree and applies the recorded
diff; :mod:`.data` finds every input dataset version and verifies its digest; :mod:`.environment`
builds a virtual environment with exactly the recorded packages (uv, else venv and pip) and
verifies it; :mod:`.runner` runs the command with those and waits for the new run; and
:mod:`.verdict` compares its metrics with the original's, purely. The command line is in
``studbook._cli``. Nothing here is imported by ``import studbook``.

Exceptions (all :class:`~studbook.StudbookError`)::

    ReproduceError          cannot reproduce; the message says what to do
    ├── NotReproducible     the record lacks what a re-run needs, or the commit is gone
    ├── DigestMismatch      an input's data (or the diff) is not what was recorded
    └── EnvironmentMismatch the new environment does not hold the recorded packages
"""

from __future__ import annotations

"""The exceptions of `studbook reproduce` (see the package docstring for the tree)."""

from __future__ import annotations

from studbook._errors import StudbookError


class ReproduceError(StudbookError):
    """A run cannot be reproduced; the message says why and what to do."""


class NotReproducible(ReproduceError):
    """The record lacks what a re-run needs (a commit, an entry point), or it cannot be found."""


class DigestMismatch(ReproduceError):
    """Data found for an input dataset version (or a recorded diff) has another digest."""


class EnvironmentMismatch(ReproduceError):
    """The new environment's packages are not the recorded ones."""

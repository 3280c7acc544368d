"""Studbook's server-side error tree.

StudbookError
 ├── ConfigError        a setting is missing or wrong; the message names it
 ├── StoreError         the event store refused or could not be read
 │    └── ChainBroken   `verify` found a row whose hash does not match
 └── ProjectionError    an event is valid but cannot be applied (it is dead-lettered)
"""

from __future__ import annotations


class StudbookError(Exception):
    """Base of every error Studbook raises on purpose."""


class ConfigError(StudbookError):
    pass


class StoreError(StudbookError):
    pass


class ChainBroken(StoreError):
    def __init__(self, position: int, detail: str) -> None:
        super().__init__(f"hash chain broken at position {position}: {detail}")
        self.position = position


class ProjectionError(StudbookError):
    pass

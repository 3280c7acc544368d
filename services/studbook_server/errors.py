"""Studbook's server-side error tree.

StudbookError
 ├── ConfigError        a setting is missing or wrong; the message names it
 ├── StoreError         the event store refused or could not be read
 │    └── ChainBroken   `verify` found a row whose hash does not match
 ├── EmbeddedPostgresError   (embedded_pg.py) the local PostgreSQL would not start
 └── PublishUnavailable, PublishTooLarge   (adapters/publish.py) the transport refused events

An event that is valid but cannot be applied is not an exception: the projection rejects it
(domain/projection.py `Rejected`) and it is dead-lettered.
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

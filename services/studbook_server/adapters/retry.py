"""The one retry policy for transient failures of PostgreSQL (and the broker behind it).

What counts as transient is :func:`studbook_server.adapters.postgres.failure_kind`'s `retry`:
the connection, a restart, a lock or statement timeout, a serialisation conflict. Anything else
is raised at once (the caller dead-letters the record at fault, or fails loudly). The wait
doubles from 0.5 s to 30 s; a stop request ends the wait early and the last failure is raised, so
the caller can leave its work for the next start (nothing was committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from studbook_server.adapters.postgres import failure_kind

log = logging.getLogger(__name__)


def transient(exc: BaseException) -> bool:
    return failure_kind(exc) == "retry"


def retrying(
    stopping: asyncio.Event, what: str, on_retry: Callable[[], None] | None = None
) -> AsyncRetrying:
    """Retry transient failures of ``what`` until they pass or ``stopping`` is set; ``on_retry``
    is called before each retry (for counters)."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=seconds)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry()
        failure = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (%s); retrying in %.1fs", what, failure, wait)

    return AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential(multiplier=0.5, min=0.5, max=30),
        stop=lambda state: stopping.is_set(),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

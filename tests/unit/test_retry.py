"""The retry policy: transient failures are retried with back-off, others raised at once, and a
stop request ends the waiting."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from studbook_server.adapters.retry import retrying


async def test_transient_failures_are_retried_until_they_pass() -> None:
    calls, retries = [], []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("PostgreSQL is restarting")
        return "stored"

    async for attempt in retrying(asyncio.Event(), "test", lambda: retries.append(1)):
        with attempt:
            result = await flaky()
    assert result == "stored"
    assert (len(calls), len(retries)) == (3, 2)


async def _always(failure: BaseException, stopping: asyncio.Event, calls: list[int]) -> None:
    async for attempt in retrying(stopping, "test"):
        with attempt:
            calls.append(1)
            raise failure


async def test_a_data_error_or_a_unique_violation_is_raised_at_once() -> None:
    for failure in (asyncpg.UniqueViolationError("dup"), OverflowError("date"), ValueError("x")):
        calls: list[int] = []
        with pytest.raises(type(failure)):
            await _always(failure, asyncio.Event(), calls)
        assert calls == [1]


async def test_a_stop_request_ends_the_wait_and_raises_the_last_failure() -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stopping.set)
    calls: list[int] = []
    # Without the stop, a transient failure is retried for ever (this would time out).
    with pytest.raises(TimeoutError, match="lock timeout"):
        await asyncio.wait_for(_always(TimeoutError("lock timeout"), stopping, calls), 20)
    # The first wait (0.5 s) was cut short by the stop: no third attempt.
    assert calls == [1, 1]

"""Subscriptions (graphql-transport-ws): new metric points of a run as they are projected.

The read models' checkpoint says how far projection has got; each poll reads the run's points
between the last position sent and the checkpoint (an index on each chunk's last position keeps
that to the newest chunks of the run's series), so nothing is sent before it is projected and
nothing is sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import strawberry

from studbook_server.adapters.postgres import Pool
from studbook_server.graphql import _typed as typed
from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput
from studbook_server.graphql._ids import parse
from studbook_server.graphql._types import MetricPoint

POLL_S = 0.2
# Positions per read when catching up from far behind, so one read stays small.
WINDOW = 1000
# Open subscriptions one WebSocket connection may hold.
MAX_PER_CONNECTION = 10

_CHECKPOINT = "SELECT position FROM rm.checkpoint"
_POINTS = """
SELECT s.key, u.step, u.value, u.at, u.position
FROM rm.metric_series s
JOIN rm.metric_chunks c ON c.series_id = s.id AND c.position_max > $3 AND c.position_min <= $4
CROSS JOIN LATERAL unnest(c.steps, c.vals, c.ats, c.positions) AS u(step, value, at, position)
WHERE s.project = $1 AND s.run_id = $2 AND ($5::text[] IS NULL OR s.key = ANY($5::text[]))
  AND u.position > $3 AND u.position <= $4
ORDER BY u.position, s.key, u.step
"""


class CheckpointWatch:
    """One poll of the read models' checkpoint per process, however many subscriptions wait
    on it: each subscription reads its own points only when projection has moved on."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.position = -1
        self.changed = asyncio.Condition()
        self.waiting = 0
        self.task: asyncio.Task[None] | None = None

    async def beyond(self, last: int) -> int:
        """Wait until the checkpoint is past ``last``; return it."""
        self.waiting += 1
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._poll(), name="studbook-checkpoint-watch")
        try:
            async with self.changed:
                await self.changed.wait_for(lambda: self.position > last)
                return self.position
        finally:
            self.waiting -= 1

    async def _poll(self) -> None:
        while self.waiting > 0:
            position: int = await self.pool.fetchval(_CHECKPOINT)
            if position != self.position:
                async with self.changed:
                    self.position = position
                    self.changed.notify_all()
            await asyncio.sleep(POLL_S)


_watches: dict[int, CheckpointWatch] = {}
_open: dict[int, int] = {}  # id(connection) -> open subscriptions


def _watch(pool: Pool) -> CheckpointWatch:
    watch = _watches.get(id(pool))
    if watch is None or watch.pool is not pool:
        watch = _watches[id(pool)] = CheckpointWatch(pool)
    return watch


@strawberry.type
class Subscription:
    @typed.subscription(
        description="Metric points of a run as they are projected, in store order. "
        "`afterPosition` replays from an earlier store position (default: from now). At most "
        f"{MAX_PER_CONNECTION} subscriptions per connection."
    )
    async def metric_points(
        self,
        info: Info,
        run: strawberry.ID,
        keys: list[str] | None = None,
        after_position: int | None = None,
    ) -> AsyncGenerator[MetricPoint, None]:
        ref = parse(run, "run", what="run")
        await info.context.reader(ref.project)
        connection = id(info.context.request)
        if _open.get(connection, 0) >= MAX_PER_CONNECTION:
            raise BadInput(
                f"at most {MAX_PER_CONNECTION} subscriptions per connection: close one first"
            )
        _open[connection] = _open.get(connection, 0) + 1
        try:
            pool = info.context.pool
            watch = _watch(pool)
            last: int = (
                after_position if after_position is not None else await pool.fetchval(_CHECKPOINT)
            )
            while True:
                head = await watch.beyond(last)
                while last < head:
                    upto = min(head, last + WINDOW)
                    for r in await pool.fetch(_POINTS, ref.project, ref.key, last, upto, keys):
                        yield MetricPoint(
                            key=r["key"], step=r["step"], value=r["value"], at=r["at"],
                            position=r["position"],
                        )  # fmt: skip
                    last = upto
        finally:
            _open[connection] -= 1
            if not _open[connection]:
                del _open[connection]

"""Subscriptions (graphql-transport-ws): new metric points of a run as they are projected.

The read models' checkpoint says how far projection has got; each poll reads the run's points
between the last position sent and the checkpoint (a BRIN index on position keeps that to the
newest blocks), so nothing is sent before it is projected and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import strawberry

from studbook_server.graphql import _typed as typed
from studbook_server.graphql._context import Info
from studbook_server.graphql._ids import parse
from studbook_server.graphql._types import MetricPoint

POLL_S = 0.2
# Positions per read when catching up from far behind, so one read stays small.
WINDOW = 1000

_CHECKPOINT = "SELECT position FROM rm.checkpoint"
_POINTS = """
SELECT key, step, value, at, position FROM rm.run_metric_points
WHERE project = $1 AND run_id = $2 AND position > $3 AND position <= $4
  AND ($5::text[] IS NULL OR key = ANY($5::text[]))
ORDER BY position, key, step
"""


@strawberry.type
class Subscription:
    @typed.subscription(
        description="Metric points of a run as they are projected, in store order. "
        "`afterPosition` replays from an earlier store position (default: from now)."
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
        pool = info.context.pool
        last: int = (
            after_position if after_position is not None else await pool.fetchval(_CHECKPOINT)
        )
        while True:
            head: int = await pool.fetchval(_CHECKPOINT)
            while last < head:
                upto = min(head, last + WINDOW)
                for r in await pool.fetch(_POINTS, ref.project, ref.key, last, upto, keys):
                    yield MetricPoint(
                        key=r["key"], step=r["step"], value=r["value"], at=r["at"],
                        position=r["position"],
                    )  # fmt: skip
                last = upto
            await asyncio.sleep(POLL_S)

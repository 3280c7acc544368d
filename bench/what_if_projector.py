"""Diagnosis only: `studbook-server projector` with candidate fixes patched in at runtime.

Lets the benchmark measure what a proposed change to the projector would buy without editing
services/: run it as

    .venv/bin/python bench/projector_throughput.py \
        --projector-cmd ".venv/bin/python bench/what_if_projector.py"

with any of these set in the environment (unset means: as the real projector):

* STUDBOOK_WHATIF_FETCH_MAX_BYTES / STUDBOOK_WHATIF_PARTITION_FETCH_BYTES: the consumer's
  `fetch_max_bytes` / `max_partition_fetch_bytes` (KafkaProjector.__init__ hard-codes 64 MiB and
  16 MiB);
* STUDBOOK_WHATIF_ONE_VALIDATION=1: validate each record once. `decode_record` used to validate
  the document, then `event_from_dict` validated the same document again; this makes the second
  call a no-op. Since commit `fe82f20` `decode_record` calls only `event_from_dict`, so the
  patch would switch validation off altogether: it is refused then.

Never use this outside the benchmark: it changes the projector's behaviour.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

import studbook_server.domain.contract as contract
import studbook_server.projector as projector
from studbook_server.config import Settings


def _patch_fetch_sizes(fetch_max: int, partition_max: int) -> None:
    original = projector.KafkaProjector.__init__

    def init(self: projector.KafkaProjector, settings: Settings, pool: Any, **kw: Any) -> None:
        original(self, settings, pool, **kw)
        # The consumer the original made was never started; replace it with a smaller-fetch one.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max_records,
            fetch_max_bytes=fetch_max,
            max_partition_fetch_bytes=partition_max,
        )

    projector.KafkaProjector.__init__ = init  # type: ignore[method-assign]


def main() -> int:
    fetch_max = os.environ.get("STUDBOOK_WHATIF_FETCH_MAX_BYTES")
    partition_max = os.environ.get("STUDBOOK_WHATIF_PARTITION_FETCH_BYTES")
    if fetch_max or partition_max:
        _patch_fetch_sizes(int(fetch_max or 64 << 20), int(partition_max or 16 << 20))
    if os.environ.get("STUDBOOK_WHATIF_ONE_VALIDATION") == "1":
        if not hasattr(projector, "validate_event"):
            sys.exit(
                "STUDBOOK_WHATIF_ONE_VALIDATION: this projector validates each record once "
                "already (decode_record calls only event_from_dict); the patch would skip "
                "validation altogether, so it is refused"
            )
        # event_from_dict looks validate_event up in its module; decode_record holds its own
        # reference, so records are still validated exactly once.
        contract.validate_event = lambda raw, index=0: []
    code: int = asyncio.run(projector.run_projector())
    return code


if __name__ == "__main__":
    sys.exit(main())

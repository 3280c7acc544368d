"""`studbook-server status`: how far projection has got, and what was dead-lettered, for an operator.

Read from the database (and Kafka, when configured), not from a projector's memory, so it answers
for every projector of a group and after they stopped: the store's head, the read models'
checkpoint, per Kafka partition the end offset, the offset the projectors stored and the lag,
and the dead letters by kind.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from studbook_server.adapters import postgres
from studbook_server.config import Settings, load_settings
from studbook_server.errors import StoreError
from studbook_server.locate import resolve_database_url

# A dead letter's kind, from the start of its reason (projector.py and readmodels.py write them).
_KINDS = (
    ("not valid JSON", "invalid"),
    ("invalid event", "invalid"),
    ("contains a NUL", "invalid"),
    ("needs a sender authenticated", "unauthenticated decision"),
    ("event id ", "conflict"),
    ("could not be applied", "failed"),
)


def dead_letter_kind(reason: str) -> str:
    for prefix, kind in _KINDS:
        if reason.startswith(prefix):
            return kind
    return "refused"  # by a projection rule


async def _kafka_lag(settings: Settings, stored: dict[int, int]) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), 10)
        [described] = await asyncio.wait_for(admin.describe_topics([settings.events_topic]), 10)
        partitions = sorted(p["partition"] for p in described.get("partitions", ()))
        tps = [TopicPartition(settings.events_topic, p) for p in partitions]
        await asyncio.wait_for(consumer.start(), 10)
        ends = await asyncio.wait_for(consumer.end_offsets(tps), 10) if tps else {}
    except (KafkaError, TimeoutError, OSError) as exc:
        return {
            "error": f"Kafka at {settings.kafka_bootstrap} does not answer ({type(exc).__name__})"
        }
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for tp in tps:
        end = ends[tp]
        done = stored.get(tp.partition, 0)
        rows.append(
            {"partition": tp.partition, "end": end, "stored": done, "lag": max(end - done, 0)}
        )
    return {"topic": settings.events_topic, "group": settings.consumer_group, "partitions": rows}


async def gather(settings: Settings, data_dir: Path | None = None) -> dict[str, Any]:
    """The status as a JSON-ready document."""
    try:
        con = await postgres.connect(resolve_database_url(settings, data_dir))
    except OSError as exc:
        raise StoreError(f"cannot reach PostgreSQL: {exc}") from exc
    try:
        head = await con.fetchrow(
            "SELECT position, recorded_at FROM public.events ORDER BY position DESC LIMIT 1"
        )
        checkpoint = await con.fetchval("SELECT position FROM rm.checkpoint")
        stored = {
            r["partition"]: r["next_offset"]
            for r in await con.fetch(
                "SELECT partition, next_offset FROM public.consumer_offsets "
                "WHERE group_id = $1 AND topic = $2",
                settings.consumer_group, settings.events_topic,
            )
        }  # fmt: skip
        letters = await con.fetch(
            "SELECT reason, received_at > now() - interval '1 day' AS recent FROM public.dead_letters"
        )
    finally:
        await con.close()
    kinds: dict[str, int] = {}
    for r in letters:
        kind = dead_letter_kind(r["reason"])
        kinds[kind] = kinds.get(kind, 0) + 1
    position = head["position"] if head else 0
    out: dict[str, Any] = {
        "store": {
            "events": position,
            "last_recorded_at": head["recorded_at"].isoformat() if head else None,
        },
        "read_models": {"checkpoint": checkpoint, "behind": max(position - checkpoint, 0)},
        "dead_letters": {
            "total": len(letters),
            "last_day": sum(1 for r in letters if r["recent"]),
            "by_kind": dict(sorted(kinds.items())),
        },
    }
    if settings.kafka_bootstrap:
        out["kafka"] = await _kafka_lag(settings, stored)
    return out


def render(status: dict[str, Any]) -> str:
    store, rm, dead = status["store"], status["read_models"], status["dead_letters"]
    lines = [
        f"store:        {store['events']} events, last recorded {store['last_recorded_at'] or '-'}",
        f"read models:  checkpoint {rm['checkpoint']} ({rm['behind']} events not projected)",
    ]
    kafka = status.get("kafka")
    if kafka is not None:
        if "error" in kafka:
            lines.append(f"kafka:        {kafka['error']}")
        else:
            lines.append(f"kafka:        topic {kafka['topic']}, group {kafka['group']}")
            for p in kafka["partitions"]:
                lines.append(
                    f"  partition {p['partition']}: end {p['end']}, stored {p['stored']}, "
                    f"lag {p['lag']}"
                )
    kinds = ", ".join(f"{k} {n}" for k, n in dead["by_kind"].items()) or "none"
    lines.append(f"dead letters: {dead['total']} ({dead['last_day']} in the last day): {kinds}")
    return "\n".join(lines)


async def status_main(as_json: bool, data_dir: Path | None = None) -> int:
    status = await gather(load_settings(), data_dir)
    if as_json:
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(status))
    return 0

"""Entry points of the event-store commands: `migrate`, `verify` and `seal`."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg

from studbook_server import integrity
from studbook_server.adapters import postgres
from studbook_server.config import Settings, load_settings
from studbook_server.errors import ChainBroken, ConfigError, StoreError
from studbook_server.locate import resolve_database_url


async def _connect(settings: Settings, data_dir: Path | None) -> postgres.Connection:
    url = resolve_database_url(settings, data_dir)
    try:
        return await postgres.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot reach PostgreSQL: {exc}") from exc


async def migrate_main(data_dir: Path | None = None) -> int:
    con = await _connect(load_settings(), data_dir)
    try:
        applied = await postgres.migrate(con)
    finally:
        await con.close()
    print(f"applied migrations: {applied or 'none pending'}")
    return 0


def _path(given: str | None, configured: str, what: str, variable: str) -> Path:
    text = given or configured
    if not text:
        raise ConfigError(f"no {what}: pass it, or set {variable}")
    return Path(text).expanduser()


async def verify_main(
    seal_log: str | None, public_key: str | None, data_dir: Path | None = None
) -> int:
    settings = load_settings()
    seals: list[integrity.Seal] = []
    if seal_log:
        key_path = _path(public_key, settings.seal_key, "seal key", "STUDBOOK_SEAL_KEY")
        seals = integrity.read_seals(Path(seal_log), integrity.load_public_key(key_path))
    con = await _connect(settings, data_dir)
    try:
        report = await integrity.verify(con, seals)
    except ChainBroken as exc:
        print(f"verify: FAILED: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        raise StoreError(f"could not read the event store: {exc}") from exc
    finally:
        await con.close()
    sealed = f", {report.seals} of {len(seals)} seals match" if seal_log else " (no seals given)"
    print(
        f"verify: ok, {report.checked} events, chain intact, {report.redacted} redacted rows "
        f"verified{sealed}"
    )
    return 0


async def seal_main(
    key: str | None, log: str | None, init_key: bool, data_dir: Path | None = None
) -> int:
    settings = load_settings()
    key_path = _path(key, settings.seal_key, "seal key", "STUDBOOK_SEAL_KEY or --key")
    if init_key:
        public = integrity.create_key(key_path)
        print(f"seal: created {key_path} (keep it outside the database host) and {public}")
        return 0
    log_path = _path(log, settings.seal_log, "seal log", "STUDBOOK_SEAL_LOG or --log")
    private = integrity.load_private_key(key_path)
    con = await _connect(settings, data_dir)
    try:
        # Never sign a head whose history does not verify, against the log's earlier seals too
        # (so a truncated or recomputed store is not sealed over).
        seals = integrity.read_seals(log_path, private.public_key()) if log_path.exists() else []
        try:
            await integrity.verify(con, seals)
        except ChainBroken as exc:
            print(f"seal: refused, the chain does not verify: {exc}", file=sys.stderr)
            return 1
        line = await integrity.seal(con, private, log_path)
    finally:
        await con.close()
    print(f"seal: position {line['position']} chain {line['chain_hash'][:16]}... -> {log_path}")
    return 0

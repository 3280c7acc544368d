"""Settings, read once from `STUDBOOK_*` environment variables (and an optional `.env` file)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.config import Config


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    kafka_bootstrap: str | None
    events_topic: str
    consumer_group: str
    batch_max_records: int
    batch_timeout_ms: int
    log_level: str
    auth_disabled: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    # Projects where a model version may not be approved by the token that registered it.
    four_eyes_projects: frozenset[str] = frozenset()
    # Ed25519 private key that signs seals of the event store's head, and the seal log.
    seal_key: str = ""
    seal_log: str = ""
    # Bounds that keep one request or query from holding a service (docs/reliability.md).
    query_timeout_ms: int = 10_000
    publish_timeout_s: float = 10.0
    graphql_max_body_bytes: int = 1024 * 1024
    # `studbook-server projector` serves Prometheus metrics on this port (0: none).
    metrics_port: int = 0
    # Freshness (docs/operations.md#freshness): a projector batch is written once the consumer
    # has had nothing more for `batch_idle_ms`, or `batch_latency_ms` after its first record
    # (0: as soon as the first poll returns), or at `batch_max_records`.
    batch_latency_ms: int = 25
    batch_idle_ms: int = 5
    # How long the broker holds a consumer's fetch that finds nothing (aiokafka's default: 500).
    fetch_max_wait_ms: int = 100
    # Where the MLflow artifact proxy keeps files: a folder or an fsspec URL (file://, s3://,
    # gs://, az://, ...); empty: the `artifacts` folder of the data directory (docs/mlflow.md).
    artifact_root: str = ""

    @property
    def embedded(self) -> bool:
        """No Kafka configured: the event store itself is the transport."""
        return not self.kafka_bootstrap


def load_settings(env_file: str | None = None) -> Settings:
    config = Config(env_file=env_file, env_prefix="STUDBOOK_")
    return Settings(
        database_url=config("DATABASE_URL", cast=str, default=""),
        kafka_bootstrap=config("KAFKA_BOOTSTRAP", cast=str, default="") or None,
        events_topic=config("EVENTS_TOPIC", cast=str, default="studbook.events"),
        consumer_group=config("CONSUMER_GROUP", cast=str, default="studbook-projector"),
        batch_max_records=config("BATCH_MAX_RECORDS", cast=int, default=2000),
        batch_timeout_ms=config("BATCH_TIMEOUT_MS", cast=int, default=200),
        log_level=config("LOG_LEVEL", cast=str, default="INFO"),
        # Only for a laptop: every request is treated as an admin of every project.
        auth_disabled=config("AUTH_DISABLED", cast=bool, default=False),
        max_body_bytes=config("MAX_BODY_BYTES", cast=int, default=8 * 1024 * 1024),
        four_eyes_projects=frozenset(
            p.strip()
            for p in config("FOUR_EYES_PROJECTS", cast=str, default="").split(",")
            if p.strip()
        ),
        seal_key=config("SEAL_KEY", cast=str, default=""),
        seal_log=config("SEAL_LOG", cast=str, default=""),
        query_timeout_ms=config("QUERY_TIMEOUT_MS", cast=int, default=10_000),
        publish_timeout_s=config("PUBLISH_TIMEOUT_S", cast=float, default=10.0),
        graphql_max_body_bytes=config("GRAPHQL_MAX_BODY_BYTES", cast=int, default=1024 * 1024),
        metrics_port=config("METRICS_PORT", cast=int, default=0),
        batch_latency_ms=config("BATCH_LATENCY_MS", cast=int, default=25),
        batch_idle_ms=config("BATCH_IDLE_MS", cast=int, default=5),
        fetch_max_wait_ms=config("FETCH_MAX_WAIT_MS", cast=int, default=100),
        artifact_root=config("ARTIFACT_ROOT", cast=str, default=""),
    )

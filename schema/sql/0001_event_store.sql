-- The event store: every accepted event, append-only, in one global order, hash-chained.
-- Positions are assigned by the store under an advisory lock, so they are gapless and become
-- visible in order; `recorded_at` is the store's clock, never the client's.
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    project         text        NOT NULL,
    subject         text        NOT NULL,
    subject_seq     integer     NOT NULL,
    actor           text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    correlation_id  text,
    causation_id    text,
    producer        jsonb,
    payload         jsonb       NOT NULL,
    -- sha256 over the row's canonical content, and over (previous chain_hash || content_hash).
    content_hash    bytea       NOT NULL,
    chain_hash      bytea       NOT NULL,
    -- Set when a subject.redacted event erased payload fields: the content hash then no longer
    -- matches the payload by design, and `verify` checks only the chain for this row.
    redacted_by     uuid,
    UNIQUE (project, subject, subject_seq)
);
CREATE INDEX events_type_recorded ON events (type, recorded_at);
CREATE INDEX events_actor_recorded ON events (project, actor, recorded_at);

-- Events that could not be stored or applied, with why. Nothing is dropped silently.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    event_id        text,
    position        bigint,
    source          text        NOT NULL,   -- e.g. 'kafka:topic/partition@offset' or 'store'
    reason          text        NOT NULL,
    raw             bytea       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
-- A replayed event that fails again does not add a second row.
CREATE UNIQUE INDEX dead_letters_stored_once ON dead_letters (position) WHERE position IS NOT NULL;

-- Kafka consumer positions, written in the same transaction as the events they cover.
CREATE TABLE consumer_offsets (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);

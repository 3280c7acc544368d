-- Read models: disposable projections of the event store, kept in their own schema so that
-- `rebuild` can fill a fresh copy (rm_new) and swap it in with two renames.
-- Cross-entity references are natural keys, not foreign keys: an event may refer to a subject the
-- projector has not seen yet, and the reference resolves when that subject arrives.
CREATE SCHEMA rm;

-- How far the read models have applied the event store (one row).
CREATE TABLE rm.checkpoint (
    id              boolean     PRIMARY KEY DEFAULT true CHECK (id),
    position        bigint      NOT NULL
);
INSERT INTO rm.checkpoint (position) VALUES (0);

CREATE TABLE rm.projects (
    project         text        PRIMARY KEY,
    description     text,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL
);

CREATE TABLE rm.runs (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    name            text,
    experiment      text,
    parent_run      text,
    status          text        NOT NULL,   -- running | completed | failed | killed
    actor           text        NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    recorded_at     timestamptz NOT NULL,
    code            jsonb,
    git_commit      text,
    environment     jsonb,
    error           jsonb,
    PRIMARY KEY (project, run_id)
);
CREATE INDEX runs_started ON rm.runs (project, started_at DESC);
CREATE INDEX runs_status ON rm.runs (project, status, started_at DESC);

CREATE TABLE rm.run_params (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    key             text        NOT NULL,
    value           jsonb       NOT NULL,
    PRIMARY KEY (project, run_id, key)
);

CREATE TABLE rm.run_tags (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    key             text        NOT NULL,
    value           text        NOT NULL,
    PRIMARY KEY (project, run_id, key)
);

-- Every metric point, in arrival order. Appended with COPY.
CREATE TABLE rm.run_metric_points (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    key             text        NOT NULL,
    step            bigint      NOT NULL,
    value           double precision NOT NULL,
    at              timestamptz NOT NULL,
    position        bigint      NOT NULL
);
CREATE INDEX run_metric_points_series ON rm.run_metric_points (project, run_id, key, step);

-- One row per (run, key): the latest point (highest step, then time, then position) and min/max.
CREATE TABLE rm.run_metrics (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    key             text        NOT NULL,
    value           double precision NOT NULL,
    step            bigint      NOT NULL,
    at              timestamptz NOT NULL,
    position        bigint      NOT NULL,
    min_value       double precision NOT NULL,
    max_value       double precision NOT NULL,
    points          bigint      NOT NULL,
    PRIMARY KEY (project, run_id, key)
);

CREATE TABLE rm.run_outputs (
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    uri             text        NOT NULL,
    digest          text,
    name            text,
    dataset         text,
    version         text,
    produced_at     timestamptz NOT NULL,
    event_id        uuid        NOT NULL PRIMARY KEY
);
CREATE INDEX run_outputs_run ON rm.run_outputs (project, run_id);

CREATE TABLE rm.datasets (
    project         text        NOT NULL,
    name            text        NOT NULL,
    description     text,
    uri             text,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE rm.dataset_versions (
    project         text        NOT NULL,
    dataset         text        NOT NULL,
    version         text        NOT NULL,
    number          integer     NOT NULL,   -- 1, 2, ... per dataset, in event order
    uri             text        NOT NULL,
    digest          text        NOT NULL,
    size_bytes      bigint,
    row_count       bigint,
    schema          jsonb,
    parents         jsonb       NOT NULL,   -- [{"dataset": ..., "version": ...}]
    produced_by_run text,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (project, dataset, version),
    UNIQUE (project, dataset, number)
);
CREATE INDEX dataset_versions_digest ON rm.dataset_versions (digest);

CREATE TABLE rm.models (
    project         text        NOT NULL,
    name            text        NOT NULL,
    description     text,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE rm.model_versions (
    project         text        NOT NULL,
    model           text        NOT NULL,
    number          integer     NOT NULL,   -- 1, 2, ... per model, in event order
    run_id          text,
    artifact_uri    text        NOT NULL,
    digest          text,
    framework       text,
    signature       jsonb,
    description     text,
    registered_by   text        NOT NULL,
    registered_at   timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    event_id        uuid        NOT NULL,
    PRIMARY KEY (project, model, number)
);
CREATE INDEX model_versions_run ON rm.model_versions (project, run_id);

-- Bitemporal assignments of a model version to a name: aliases (kind 'alias', name = alias) and
-- deployments (kind 'deployment', name = environment). [valid_from, valid_to) is when it held in
-- the world (occurred time); [recorded_from, recorded_to) is when the store believed this row.
-- A late-recorded change never edits history: it closes the rows it corrects (recorded_to) and
-- adds corrected rows, so "as of T, known at K" is one range predicate on each axis.
CREATE TABLE rm.assignments (
    -- The event that created the row and which of its rows it is (0: the new assignment,
    -- 1: the corrected remainder of a row it cut short). Deterministic, so a rebuild compares.
    created_position bigint     NOT NULL,
    part            smallint    NOT NULL,
    project         text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('alias', 'deployment')),
    model           text        NOT NULL,
    name            text        NOT NULL,
    version         integer     NOT NULL,
    valid_from      timestamptz NOT NULL,
    valid_to        timestamptz,
    recorded_from   timestamptz NOT NULL,
    recorded_to     timestamptz,
    set_by          text        NOT NULL,
    set_event       uuid        NOT NULL,
    target          text,
    PRIMARY KEY (created_position, part)
);
CREATE INDEX assignments_current ON rm.assignments (project, kind, model, name)
    WHERE recorded_to IS NULL;
CREATE INDEX assignments_version ON rm.assignments (project, model, version);

CREATE TABLE rm.approvals (
    event_id        uuid        PRIMARY KEY,
    project         text        NOT NULL,
    model           text        NOT NULL,
    version         integer     NOT NULL,
    decision        text        NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reviewer        text        NOT NULL,
    comment         text,
    evidence        jsonb       NOT NULL,
    decided_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL
);
CREATE INDEX approvals_version ON rm.approvals (project, model, version, decided_at);

CREATE TABLE rm.annotations (
    event_id        uuid        PRIMARY KEY,
    project         text        NOT NULL,
    subject         text        NOT NULL,
    text            text        NOT NULL,
    labels          jsonb       NOT NULL,
    author          text        NOT NULL,
    added_at        timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL
);
CREATE INDEX annotations_subject ON rm.annotations (project, subject, added_at);

-- Typed lineage edges between nodes named '<kind>:<key>':
--   dataset_version:<dataset>@<version>, run:<run id>, model_version:<model>@<number>.
-- Types: input (dataset version -> run), output (run -> dataset version), derived (parent dataset
-- version -> child), trained (run -> model version). Edges to deployments are the 'deployment'
-- rows of rm.assignments (model version -> deployment:<model>/<environment>).
CREATE TABLE rm.lineage_edges (
    project         text        NOT NULL,
    edge_type       text        NOT NULL CHECK (edge_type IN ('input', 'output', 'derived', 'trained')),
    src             text        NOT NULL,
    dst             text        NOT NULL,
    role            text,
    valid_from      timestamptz NOT NULL,
    recorded_from   timestamptz NOT NULL,
    event_id        uuid        NOT NULL,
    PRIMARY KEY (project, src, dst, edge_type)
);
CREATE INDEX lineage_edges_dst ON rm.lineage_edges (project, dst);

CREATE TABLE rm.redactions (
    event_id        uuid        PRIMARY KEY,
    project         text        NOT NULL,
    subject         text        NOT NULL,
    fields          jsonb       NOT NULL,
    reason          text        NOT NULL,
    redacted_by     text        NOT NULL,
    redacted_at     timestamptz NOT NULL,
    events_redacted integer     NOT NULL
);

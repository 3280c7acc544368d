-- MLflow tracking (docs/mlflow.md): read models of `experiment.created`, `experiment.updated`
-- and `run.lifecycle.set`. Experiment "0" (Default) exists in every project without a row.

CREATE TABLE rm.experiments (
    project           text        NOT NULL,
    experiment_id     text        NOT NULL,   -- MLflow's id, a string
    name              text        NOT NULL,
    artifact_location text,
    lifecycle_stage   text        NOT NULL DEFAULT 'active',   -- active | deleted
    tags              jsonb       NOT NULL DEFAULT '{}',
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    recorded_at       timestamptz NOT NULL,
    PRIMARY KEY (project, experiment_id)
);
CREATE INDEX experiments_name ON rm.experiments (project, name);

-- A run deleted through MLflow keeps its events and lineage; searches of active runs skip it.
-- Its own table, the newest change winning, so a deletion that arrives before the run's start
-- is kept (no row: active).
CREATE TABLE rm.run_lifecycle (
    project           text        NOT NULL,
    run_id            text        NOT NULL,
    lifecycle_stage   text        NOT NULL,   -- active | deleted
    changed_at        timestamptz NOT NULL,
    position          bigint      NOT NULL,
    PRIMARY KEY (project, run_id)
);
CREATE INDEX runs_experiment ON rm.runs (project, experiment, started_at DESC);

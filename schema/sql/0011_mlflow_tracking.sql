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
ALTER TABLE rm.runs
    ADD COLUMN lifecycle_stage text NOT NULL DEFAULT 'active',
    ADD COLUMN deleted_at timestamptz;
CREATE INDEX runs_experiment ON rm.runs (project, experiment, started_at DESC);

-- MLflow's artifacts, MLflow 3 logged models and the model registry's extra facts
-- (docs/mlflow.md): read models of `artifact.stored`, `logged_model.*`, `model.updated` and
-- `model.version.updated`.

-- Every file stored through the artifact proxy, the newest store of each path.
CREATE TABLE rm.artifacts (
    project         text        NOT NULL,
    path            text        NOT NULL,   -- below the project's artifact root
    subject         text        NOT NULL,   -- run:<id>, logged_model:<id> or project:<p>
    uri             text        NOT NULL,   -- where the bytes are
    size_bytes      bigint      NOT NULL,
    digest          text        NOT NULL,   -- sha256:<hex>
    stored_by       text        NOT NULL,
    stored_at       timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    event_id        uuid        NOT NULL,
    position        bigint      NOT NULL
);
-- A path may be longer than a btree entry can hold (2048 characters of up to 4 bytes): keyed
-- by its md5, as 0006 does for long values.
CREATE UNIQUE INDEX artifacts_path ON rm.artifacts (project, md5(path));
CREATE INDEX artifacts_subject ON rm.artifacts (project, subject);

CREATE TABLE rm.logged_models (
    project         text        NOT NULL,
    model_id        text        NOT NULL,
    name            text        NOT NULL,
    experiment      text        NOT NULL,
    run_id          text,
    artifact_uri    text        NOT NULL,
    status          text        NOT NULL,
    model_type      text,
    params          jsonb       NOT NULL DEFAULT '{}',
    tags            jsonb       NOT NULL DEFAULT '{}',
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    position        bigint      NOT NULL,   -- of its creation: only later updates apply
    PRIMARY KEY (project, model_id)
);
CREATE INDEX logged_models_run ON rm.logged_models (project, run_id);
CREATE INDEX logged_models_name ON rm.logged_models (project, name);

-- Registered models and versions: tags, MLflow's stage, deletion, last update.
ALTER TABLE rm.models
    ADD COLUMN tags jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN updated_at timestamptz,
    ADD COLUMN deleted_at timestamptz;
ALTER TABLE rm.model_versions
    ADD COLUMN tags jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN stage text NOT NULL DEFAULT 'None',
    ADD COLUMN updated_at timestamptz,
    ADD COLUMN deleted_at timestamptz;

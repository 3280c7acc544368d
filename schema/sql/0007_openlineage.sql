-- OpenLineage in (docs/openlineage.md): data pipelines report their runs and datasets.
--
-- A pipeline reports versions of a dataset without a content digest (dataset.version.reported:
-- the state a run left a table in, or the version a table format names), so a dataset version's
-- digest becomes optional. Versions recorded by training code keep theirs.
ALTER TABLE rm.dataset_versions ALTER COLUMN digest DROP NOT NULL;

-- The facets of OpenLineage events (openlineage.event.reported), the newest report of each:
--   node `run:<id>`: scope `run` (run facets), `job` (job facets), `input:<dataset>` and
--     `output:<dataset>` (the run's input and output facets of that dataset);
--   node `dataset:<name>`: scope `dataset` (dataset facets, from any event naming it).
-- `value` is the facet as sent; NULL once a producer deleted it (`_deleted: true`). Newer is by
-- the OpenLineage event time (`reported_at`), then store position. The events themselves stay in
-- the event store verbatim; this is the queryable copy (Run.facets, Dataset.facets).
CREATE TABLE rm.openlineage_facets (
    project         text        NOT NULL,
    node            text        NOT NULL,
    scope           text        NOT NULL,
    name            text        NOT NULL,
    value           jsonb,
    reported_at     timestamptz NOT NULL,
    position        bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    PRIMARY KEY (project, node, scope, name)
);

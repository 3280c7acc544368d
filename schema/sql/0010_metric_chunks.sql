-- Metric series stored in chunks instead of one row per point.
--
-- rm.metric_series gives each (project, run, key) an integer id, in order of its first point.
-- rm.metric_chunks holds a series' points as arrays, in the order they were logged (store
-- position, then order within the event). The layout depends only on that order, never on how
-- events fell into projector batches, so a rebuild writes exactly what live projection wrote:
--
-- * sealed chunks: points with ordinals [k*1024, (k+1)*1024) of their series, `seq` = k*1024;
-- * the tail (the points past the last full 1024): one row per event, `seq` = the ordinal of
--   its first point. When the tail reaches 1024 points the projector seals it into a chunk and
--   deletes the tail rows, so appends never rewrite a compressed array.
--
-- Per chunk: its range of steps, values and store positions, and the latest point (by step,
-- then position), so downsampled reads and the live subscription can skip whole chunks.

CREATE TABLE rm.metric_series (
    id              bigint      PRIMARY KEY,
    project         text        NOT NULL,
    run_id          text        NOT NULL,
    key             text        NOT NULL,
    UNIQUE (project, run_id, key)
);

CREATE TABLE rm.metric_chunks (
    series_id       bigint      NOT NULL,
    seq             bigint      NOT NULL,
    n               integer     NOT NULL,
    step_min        bigint      NOT NULL,
    step_max        bigint      NOT NULL,
    value_min       double precision NOT NULL,
    value_max       double precision NOT NULL,
    last_value      double precision NOT NULL,
    position_min    bigint      NOT NULL,
    position_max    bigint      NOT NULL,
    steps           bigint[]    NOT NULL,
    vals            double precision[] NOT NULL,
    ats             timestamptz[] NOT NULL,
    positions       bigint[]    NOT NULL,
    PRIMARY KEY (series_id, seq)
);
-- metricPoints subscription: "chunks of these series past position P".
CREATE INDEX metric_chunks_position ON rm.metric_chunks (series_id, position_max);

-- lz4 where the server has it (faster than pglz at a similar ratio); a server built without
-- lz4 keeps its default (pglz). A rebuild's `LIKE ... INCLUDING ALL` copies the setting.
DO $$
BEGIN
    ALTER TABLE rm.metric_chunks
        ALTER COLUMN steps SET COMPRESSION lz4,
        ALTER COLUMN vals SET COMPRESSION lz4,
        ALTER COLUMN ats SET COMPRESSION lz4,
        ALTER COLUMN positions SET COMPRESSION lz4;
    ALTER TABLE public.events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server: metric chunks use pglz';
END
$$;

-- Existing points: in logged order (position, then physical order within one event's COPY).
CREATE TEMP TABLE metric_points_ordered ON COMMIT DROP AS
SELECT project, run_id, key, step, value, at, position,
       row_number() OVER (PARTITION BY project, run_id, key ORDER BY position, ctid) - 1 AS ordinal,
       row_number() OVER (ORDER BY position, ctid) AS arrival
FROM rm.run_metric_points;

-- Ids in order of each series' first point, as the projector assigns them.
INSERT INTO rm.metric_series (id, project, run_id, key)
SELECT row_number() OVER (ORDER BY min(arrival)), project, run_id, key
FROM metric_points_ordered GROUP BY project, run_id, key;

WITH counted AS (
    SELECT p.*, s.id AS series_id,
           (count(*) OVER (PARTITION BY s.id) / 1024) * 1024 AS sealed
    FROM metric_points_ordered p
    JOIN rm.metric_series s USING (project, run_id, key)
), grouped AS (
    SELECT series_id, ordinal, step, value, at, position,
           CASE WHEN ordinal < sealed THEN (ordinal / 1024) * 1024
                ELSE min(ordinal) FILTER (WHERE ordinal >= sealed)
                        OVER (PARTITION BY series_id, position) END AS seq
    FROM counted
)
INSERT INTO rm.metric_chunks (series_id, seq, n, step_min, step_max, value_min, value_max,
                              last_value, position_min, position_max, steps, vals, ats, positions)
SELECT series_id, seq, count(*), min(step), max(step), min(value), max(value),
       (array_agg(value ORDER BY step DESC, position DESC, ordinal DESC))[1],
       min(position), max(position),
       array_agg(step ORDER BY ordinal), array_agg(value ORDER BY ordinal),
       array_agg(at ORDER BY ordinal), array_agg(position ORDER BY ordinal)
FROM grouped
GROUP BY series_id, seq;

DROP TABLE rm.run_metric_points;

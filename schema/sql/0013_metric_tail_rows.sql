-- Metric tails in rows of 32 points.
--
-- The points past a series' last sealed chunk (its tail) were one row per event: for the common
-- one-point event, a row per point, each written (binary COPY) and later read back and deleted
-- when the chunk was sealed. Now a tail is kept in rows of the ordinals [k*32, (k+1)*32), the
-- last one partial; the projector reads back and rewrites that partial row when a batch adds to
-- the series (at most 31 points, uncompressed). The layout still depends only on each series'
-- points in logged order, so a rebuild writes what live projection wrote.
--
-- Existing tail rows (every row that is not a sealed chunk of 1024 points from a multiple of
-- 1024) are cut again into that layout. Sealed chunks are untouched.

WITH tail AS (
    DELETE FROM rm.metric_chunks
    WHERE NOT (n = 1024 AND seq % 1024 = 0)
    RETURNING series_id, seq, steps, vals, ats, positions
), points AS (
    SELECT t.series_id, t.seq + u.i - 1 AS ordinal, u.step, u.value, u.at, u.position
    FROM tail t
    CROSS JOIN LATERAL unnest(t.steps, t.vals, t.ats, t.positions)
        WITH ORDINALITY AS u(step, value, at, position, i)
)
INSERT INTO rm.metric_chunks (series_id, seq, n, step_min, step_max, value_min, value_max,
                              last_value, position_min, position_max, steps, vals, ats, positions)
SELECT series_id, (ordinal / 32) * 32, count(*), min(step), max(step), min(value), max(value),
       (array_agg(value ORDER BY step DESC, position DESC, ordinal DESC))[1],
       min(position), max(position),
       array_agg(step ORDER BY ordinal), array_agg(value ORDER BY ordinal),
       array_agg(at ORDER BY ordinal), array_agg(position ORDER BY ordinal)
FROM points
GROUP BY series_id, ordinal / 32;

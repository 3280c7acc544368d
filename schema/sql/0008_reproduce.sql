-- `studbook reproduce`: a re-run is a lineage edge between two runs, and a dataset version keeps
-- where it was read from (docs/reproduce.md).
--
-- Edge types: `reproduced` (original run -> its reproduction) and `derived_run` (original run ->
-- a re-run with changed params). 0002's CHECK lists the allowed types; it is replaced by one that
-- allows the same types plus these two. The current list is read from the catalog rather than
-- repeated here, so that types another migration allowed stay allowed. (Constraint names come
-- from the catalog and are quoted, never from input.)
DO $edge_types$
DECLARE
    c record;
    v_types text[] := ARRAY['reproduced', 'derived_run'];
BEGIN
    FOR c IN
        SELECT con.conname, pg_get_constraintdef(con.oid) AS def
          FROM pg_constraint con
         WHERE con.conrelid = 'rm.lineage_edges'::regclass AND con.contype = 'c'
           AND pg_get_constraintdef(con.oid) LIKE '%edge_type%'
    LOOP
        v_types := v_types || ARRAY(SELECT m[1] FROM regexp_matches(c.def, '''([a-z_]+)''', 'g') AS m);
        EXECUTE format('ALTER TABLE rm.lineage_edges DROP CONSTRAINT %I', c.conname);
    END LOOP;
    -- Spelled as `IN ('a', 'b')`, which the catalog shows as `ANY (ARRAY['a'::text, ...])`:
    -- the shape the loop above reads, should a later migration widen the list the same way.
    EXECUTE format(
        'ALTER TABLE rm.lineage_edges ADD CONSTRAINT lineage_edges_edge_type_check '
        'CHECK (edge_type IN (%s))',
        (SELECT string_agg(DISTINCT quote_literal(t), ', ') FROM unnest(v_types) AS t)
    );
END
$edge_types$;

-- dataset.version.created v2 `source`: the local path a version was hashed from, as a file://
-- uri and relative to the recording code's repository ({"uri": ..., "repo_path": ...}).
ALTER TABLE rm.dataset_versions ADD COLUMN source jsonb;

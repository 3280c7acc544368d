-- Param and tag values of any length the event schemas allow.
--
-- A btree entry holds at most 2704 bytes (the "btree version 4 maximum";
-- https://www.postgresql.org/docs/current/btree.html), but a param value may be 6000 characters
-- and a tag value 5000, up to 4 bytes each in UTF-8: the `(project, key, value)` indexes of 0004
-- refused such rows, and their schema-valid events were dead-lettered. Every other index on
-- client-supplied text holds its longest entry: names, ids and versions are short ASCII patterns,
-- keys (250 characters), actor (200) and subject (300) stay under 1300 bytes with the columns
-- beside them, and free text, URIs and labels are not indexed.
--
-- The new indexes key on a 64-bit hash of the value instead: fixed size, and equal values hash
-- equal. The hash functions are those of PostgreSQL's own hash operator classes, so they agree
-- with `=` (jsonb `1` and `1.0` are equal and hash alike, where md5(value::text) would tell them
-- apart), and they are stable across versions because hash indexes and hash partitions store
-- their results. An equality filter says both
-- `jsonb_hash_extended(value, 0) = jsonb_hash_extended($x, 0) AND value = $x`: the first finds
-- the rows through the index, the second drops any hash collision (graphql/_search.py).
-- Range filters on param values (`>`, `<`, ...) lose their value-ordered index: they read the
-- (project, key) part of this one and compare each row's value.

-- `rebuild` creates fresh tables LIKE the live ones, which gives their indexes and statistics
-- generated names, so the old ones are found by what they index, not by name: any index on these
-- tables with the plain `value` column in it (0004's, however named).
DO $drop$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT i.indexrelid::regclass AS name
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'value'
         WHERE i.indrelid IN ('rm.run_params'::regclass, 'rm.run_tags'::regclass)
           AND a.attnum = ANY (i.indkey::int2[])
    LOOP
        -- Names come from the catalog (and are quoted), never from input.
        EXECUTE format('DROP INDEX %s', old.name);
    END LOOP;
    -- 0004's (key, value) statistics: replaced below by ones that also cover the hash.
    FOR old IN
        SELECT n.nspname, s.stxname
          FROM pg_statistic_ext s
          JOIN pg_namespace n ON n.oid = s.stxnamespace
         WHERE s.stxrelid IN ('rm.run_params'::regclass, 'rm.run_tags'::regclass)
           AND s.stxexprs IS NULL
    LOOP
        EXECUTE format('DROP STATISTICS %I.%I', old.nspname, old.stxname);
    END LOOP;
END
$drop$;

-- searchRuns: param and tag equality filters (and, on the (project, key) prefix, presence and
-- range filters); run_id included, so a tag's presence is read from the index alone.
CREATE INDEX run_params_key_value_hash
    ON rm.run_params (project, key, jsonb_hash_extended(value, 0)) INCLUDE (run_id);
CREATE INDEX run_tags_key_value_hash
    ON rm.run_tags (project, key, hashtextextended(value, 0)) INCLUDE (run_id);

-- How common a (key, value) pair is, as in 0004, now with the hash: without it in the same
-- statistics the planner multiplies the hash's selectivity into the pair's as if independent
-- (measured: a value held by 10,000 of 20,000 runs estimated at 2,500).
CREATE STATISTICS rm.run_params_key_value (mcv) ON key, value, (jsonb_hash_extended(value, 0))
    FROM rm.run_params;
CREATE STATISTICS rm.run_tags_key_value (mcv) ON key, value, (hashtextextended(value, 0))
    FROM rm.run_tags;
-- Statistics for the new objects now, not at the next autovacuum: until then the planner would
-- have neither the pair's frequencies nor the hash expression's.
ANALYZE rm.run_params;
ANALYZE rm.run_tags;

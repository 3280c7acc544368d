-- Read path (GraphQL): indexes for searching runs and for time travel, and the lineage walk.
--
-- Indexes live on the read-model tables, so `rebuild` (CREATE TABLE ... LIKE ... INCLUDING ALL)
-- carries them over. The walk function lives in `public`, not `rm`: `rebuild` swaps the `rm`
-- schema away and drops the old one, which would take a function defined there with it.

-- searchRuns: a metric filter or ordering scans one key's values in order (LATEST); MIN / MAX
-- filters are answered from the same index without visiting the table (index-only scan).
-- (run_metrics rows change on every metric batch and `value` is indexed, so updates are never
-- HOT anyway: each extra index here costs one more index insert per (run, key) per batch.)
CREATE INDEX run_metrics_key_value ON rm.run_metrics (project, key, value, run_id)
    INCLUDE (min_value, max_value);
-- Ordering by a metric's MIN or MAX walks these instead of sorting every run that has the key.
CREATE INDEX run_metrics_key_min ON rm.run_metrics (project, key, min_value, run_id);
CREATE INDEX run_metrics_key_max ON rm.run_metrics (project, key, max_value, run_id);
-- searchRuns: param and tag filters can drive the search when they are the selective part
-- (run_id included: read from the index alone).
CREATE INDEX run_params_key_value ON rm.run_params (project, key, value) INCLUDE (run_id);
CREATE INDEX run_tags_key_value ON rm.run_tags (project, key, value) INCLUDE (run_id);
-- How common a (key, value) pair is: without these the planner multiplies the selectivities of
-- `key = 'optimizer'` and `value = '"adam"'` as if independent, underestimates the matches ten
-- times, and sorts every match instead of walking the ordering index and stopping early.
CREATE STATISTICS rm.run_params_key_value (mcv) ON key, value FROM rm.run_params;
CREATE STATISTICS rm.run_tags_key_value (mcv) ON key, value FROM rm.run_tags;
-- searchRuns ordered by time: keyset pagination over (time, run_id); a missing time sorts lowest.
CREATE INDEX runs_started_order ON rm.runs (project, coalesce(started_at, '-infinity'::timestamptz), run_id);
CREATE INDEX runs_finished_order ON rm.runs (project, coalesce(finished_at, '-infinity'::timestamptz), run_id);

-- asOf / knownAt on aliases and deployments when the question is not "as believed now"
-- (assignments_current covers that one).
CREATE INDEX assignments_name_valid ON rm.assignments (project, kind, model, name, valid_from);

-- Lineage walks: one level is "every edge out of (or into) these nodes"; with these the level is
-- an index-only scan, not one heap visit per edge (on a hub with 50,000 edges that is the
-- difference between ~2 ms and ~60 ms).
CREATE INDEX lineage_edges_down ON rm.lineage_edges (project, src)
    INCLUDE (dst, edge_type, role, valid_from, recorded_from);
CREATE INDEX lineage_edges_up ON rm.lineage_edges (project, dst)
    INCLUDE (src, edge_type, role, valid_from, recorded_from);

-- metricPoints subscription: "points of this run after position P" touches only the newest
-- blocks. Points are appended in position order, so a BRIN index is tiny and nearly free to keep
-- up to date on the COPY-heavy write path (a btree here would cost every metric batch).
CREATE INDEX run_metric_points_position ON rm.run_metric_points USING brin (position);

-- The lineage walk: breadth first, one level per step, each node visited once (a visited set,
-- not a recursive CTE keyed on (node, depth), which re-expands a node once per depth it is
-- reached at). Caps: depth, nodes and edges; `truncated` says a cap cut the walk short.
--
-- Edges: rm.lineage_edges (input, output, derived, trained; asOf: valid_from, knownAt:
-- recorded_from) and the deployment rows of rm.assignments as `deployed` edges
-- model_version:<m>@<n> -> deployment:<m>/<environment>, valid at asOf (default now) as
-- believed at knownAt (default now).
--
-- Upstream and downstream frontiers are kept apart, so BOTH is ancestors plus descendants of the
-- start node, not everything connected to it.
--
-- Result: `nodes` in (depth, id) order (ids in byte order: COLLATE "C"), their `depths`, the
-- edges walked (both ends in `nodes`), and `seen`: a jsonb object mapping each node to its
-- 1-based position in `nodes`. The visited set is that object because `?` on a jsonb object is a
-- binary search: membership stays O(log n) whatever the planner believes about array sizes
-- (joins against unnest(array) are estimated at a fixed row count and can turn quadratic).
CREATE FUNCTION public.studbook_lineage_walk(
    p_project text,
    p_start text,
    p_up boolean,
    p_down boolean,
    p_max_depth integer,
    p_max_nodes integer,
    p_max_edges integer,
    p_as_of timestamptz,
    p_known_at timestamptz,
    OUT nodes text[],
    OUT depths integer[],
    OUT edge_src text[],
    OUT edge_dst text[],
    OUT edge_types text[],
    OUT edge_roles text[],
    OUT seen jsonb,
    OUT truncated boolean,
    OUT depth_reached integer
)
LANGUAGE plpgsql STABLE
AS $walk$
DECLARE
    v_at timestamptz := coalesce(p_as_of, now());
    v_up text[] := CASE WHEN p_up THEN ARRAY[p_start] ELSE '{}'::text[] END;
    v_down text[] := CASE WHEN p_down THEN ARRAY[p_start] ELSE '{}'::text[] END;
    v_depth integer := 0;
    v_room integer;
    v_limit integer;
    v_fetched integer;
    l_src text[];
    l_dst text[];
    l_type text[];
    l_role text[];
    l_far text[];
    l_isdown boolean[];
    v_fresh text[];
    v_new jsonb;
    v_trimmed boolean;
BEGIN
    nodes := ARRAY[p_start];
    depths := ARRAY[0];
    seen := jsonb_build_object(p_start, 1);
    edge_src := '{}';
    edge_dst := '{}';
    edge_types := '{}';
    edge_roles := '{}';
    truncated := false;
    depth_reached := 0;
    WHILE v_depth < p_max_depth AND (cardinality(v_up) > 0 OR cardinality(v_down) > 0) LOOP
        v_room := p_max_nodes - cardinality(nodes);
        IF v_room <= 0 OR cardinality(edge_src) >= p_max_edges THEN
            truncated := true;
            EXIT;
        END IF;
        -- Each edge adds at most one node, so past `room` edges only edges back to visited nodes
        -- are still useful; allow as many of those as there is room, then call the walk cut.
        v_limit := least(p_max_edges - cardinality(edge_src), v_room + least(cardinality(nodes), v_room));
        SELECT coalesce(array_agg(a.src), '{}'), coalesce(array_agg(a.dst), '{}'),
               coalesce(array_agg(a.edge_type), '{}'), coalesce(array_agg(a.role), '{}'),
               coalesce(array_agg(a.far), '{}'), coalesce(array_agg(a.isdown), '{}'), count(*)
          INTO l_src, l_dst, l_type, l_role, l_far, l_isdown, v_fetched
          FROM (
            SELECT e.src, e.dst, e.edge_type, e.role, e.dst AS far, true AS isdown
              FROM rm.lineage_edges e
             WHERE e.project = p_project AND e.src = ANY(v_down)
               AND (p_as_of IS NULL OR e.valid_from <= p_as_of)
               AND (p_known_at IS NULL OR e.recorded_from <= p_known_at)
            UNION ALL
            SELECT e.src, e.dst, e.edge_type, e.role, e.src, false
              FROM rm.lineage_edges e
             WHERE e.project = p_project AND e.dst = ANY(v_up)
               AND (p_as_of IS NULL OR e.valid_from <= p_as_of)
               AND (p_known_at IS NULL OR e.recorded_from <= p_known_at)
            UNION ALL
            SELECT m.node, 'deployment:' || a.model || '/' || a.name, 'deployed', a.target,
                   'deployment:' || a.model || '/' || a.name, true
              FROM (SELECT f AS node, split_part(substr(f, 15), '@', 1) AS model,
                           CASE WHEN f ~ '^model_version:[^@]+@[0-9]{1,9}$'
                                THEN split_part(f, '@', 2)::integer END AS version
                      FROM unnest(v_down) AS f
                     WHERE starts_with(f, 'model_version:')) m
              JOIN rm.assignments a
                ON a.project = p_project AND a.kind = 'deployment' AND a.model = m.model
               AND a.version = m.version
             WHERE a.valid_from <= v_at AND (a.valid_to IS NULL OR v_at < a.valid_to)
               AND CASE WHEN p_known_at IS NULL THEN a.recorded_to IS NULL
                        ELSE a.recorded_from <= p_known_at
                             AND (a.recorded_to IS NULL OR p_known_at < a.recorded_to) END
            UNION ALL
            SELECT 'model_version:' || a.model || '@' || a.version, d.node, 'deployed', a.target,
                   'model_version:' || a.model || '@' || a.version, false
              FROM (SELECT f AS node, substring(f FROM '^deployment:(.*)/[^/]*$') AS model,
                           substring(f FROM '/([^/]*)$') AS name
                      FROM unnest(v_up) AS f
                     WHERE starts_with(f, 'deployment:')) d
              JOIN rm.assignments a
                ON a.project = p_project AND a.kind = 'deployment' AND a.model = d.model
               AND a.name = d.name
             WHERE a.valid_from <= v_at AND (a.valid_to IS NULL OR v_at < a.valid_to)
               AND CASE WHEN p_known_at IS NULL THEN a.recorded_to IS NULL
                        ELSE a.recorded_from <= p_known_at
                             AND (a.recorded_to IS NULL OR p_known_at < a.recorded_to) END
            LIMIT v_limit + 1
          ) a;
        IF v_fetched > v_limit THEN
            truncated := true;
            l_src := l_src[1:v_limit];
            l_dst := l_dst[1:v_limit];
            l_type := l_type[1:v_limit];
            l_role := l_role[1:v_limit];
            l_far := l_far[1:v_limit];
            l_isdown := l_isdown[1:v_limit];
        END IF;
        v_depth := v_depth + 1;
        -- Nodes first reached at this depth, in id order (so a cut keeps a stable prefix).
        SELECT coalesce(array_agg(x.far ORDER BY x.far COLLATE "C"), '{}') INTO v_fresh
          FROM (SELECT DISTINCT u.far FROM unnest(l_far) AS u(far) WHERE NOT seen ? u.far) x;
        v_trimmed := cardinality(v_fresh) > v_room;
        IF v_trimmed THEN
            truncated := true;
            v_fresh := v_fresh[1:v_room];
        END IF;
        IF cardinality(v_fresh) > 0 THEN
            depth_reached := v_depth;
        END IF;
        SELECT coalesce(jsonb_object_agg(f.node, cardinality(nodes) + f.o), '{}') INTO v_new
          FROM unnest(v_fresh) WITH ORDINALITY AS f(node, o);
        seen := seen || v_new;
        nodes := nodes || v_fresh;
        depths := depths || array_fill(v_depth, ARRAY[cardinality(v_fresh)]);
        -- Keep the edges whose far end is in the walk (after a cut, some are not); the next
        -- frontiers are the fresh nodes, each continuing in the direction it was reached in.
        SELECT coalesce(array_agg(u.src), '{}'), coalesce(array_agg(u.dst), '{}'),
               coalesce(array_agg(u.t), '{}'), coalesce(array_agg(u.r), '{}'),
               -- (duplicates are harmless: `= ANY` removes them before the index scan)
               coalesce(array_agg(u.far) FILTER (WHERE u.isdown AND v_new ? u.far), '{}'),
               coalesce(array_agg(u.far) FILTER (WHERE NOT u.isdown AND v_new ? u.far), '{}')
          INTO l_src, l_dst, l_type, l_role, v_down, v_up
          FROM unnest(l_src, l_dst, l_type, l_role, l_far, l_isdown) AS u(src, dst, t, r, far, isdown)
         WHERE NOT v_trimmed OR seen ? u.far;
        edge_src := edge_src || l_src;
        edge_dst := edge_dst || l_dst;
        edge_types := edge_types || l_type;
        edge_roles := edge_roles || l_role;
    END LOOP;
END
$walk$;

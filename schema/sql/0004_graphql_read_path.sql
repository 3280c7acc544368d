-- Read path (GraphQL): indexes for searching runs and for time travel, and the lineage walk.
--
-- Indexes live on the read-model tables, so `rebuild` (CREATE TABLE ... LIKE ... INCLUDING ALL)
-- carries them over. The walk function lives in `public`, not `rm`: `rebuild` swaps the `rm`
-- schema away and drops the old one, which would take a function defined there with it.

-- searchRuns: a metric filter or ordering scans one key's values in order (LATEST); MIN / MAX
-- filters are answered from the same index without visiting the table (index-only scan).
CREATE INDEX run_metrics_key_value ON rm.run_metrics (project, key, value, run_id)
    INCLUDE (min_value, max_value);
-- searchRuns: param and tag filters can drive the search when they are the selective part.
CREATE INDEX run_params_key_value ON rm.run_params (project, key, value);
CREATE INDEX run_tags_key_value ON rm.run_tags (project, key, value);
-- searchRuns ordered by time: keyset pagination over (time, run_id); a missing time sorts lowest.
CREATE INDEX runs_started_order ON rm.runs (project, coalesce(started_at, '-infinity'::timestamptz), run_id);
CREATE INDEX runs_finished_order ON rm.runs (project, coalesce(finished_at, '-infinity'::timestamptz), run_id);

-- asOf / knownAt on aliases and deployments when the question is not "as believed now"
-- (assignments_current covers that one).
CREATE INDEX assignments_name_valid ON rm.assignments (project, kind, model, name, valid_from);

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
    v_limit integer;
    v_fetched integer;
    l_src text[];
    l_dst text[];
    l_type text[];
    l_role text[];
    l_far text[];
    l_isdown boolean[];
    v_fresh text[];
    v_trimmed boolean;
BEGIN
    nodes := ARRAY[p_start];
    depths := ARRAY[0];
    edge_src := '{}';
    edge_dst := '{}';
    edge_types := '{}';
    edge_roles := '{}';
    truncated := false;
    depth_reached := 0;
    WHILE v_depth < p_max_depth AND (cardinality(v_up) > 0 OR cardinality(v_down) > 0) LOOP
        IF cardinality(nodes) >= p_max_nodes OR cardinality(edge_src) >= p_max_edges THEN
            truncated := true;
            EXIT;
        END IF;
        -- Each edge adds at most one node; past twice the room left, more edges cannot be used.
        v_limit := least(p_max_edges - cardinality(edge_src), 2 * (p_max_nodes - cardinality(nodes)));
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
        SELECT coalesce(array_agg(x.far ORDER BY x.far), '{}') INTO v_fresh
          FROM (SELECT u.far FROM unnest(l_far) AS u(far)
                EXCEPT
                SELECT v.node FROM unnest(nodes) AS v(node)) x;
        v_trimmed := cardinality(nodes) + cardinality(v_fresh) > p_max_nodes;
        IF v_trimmed THEN
            truncated := true;
            v_fresh := v_fresh[1:p_max_nodes - cardinality(nodes)];
        END IF;
        IF cardinality(v_fresh) > 0 THEN
            depth_reached := v_depth;
        END IF;
        -- Keep the edges whose far end is in the walk; the next frontiers are the fresh nodes,
        -- each continuing in the direction it was reached in.
        SELECT coalesce(array_agg(u.src), '{}'), coalesce(array_agg(u.dst), '{}'),
               coalesce(array_agg(u.t), '{}'), coalesce(array_agg(u.r), '{}'),
               coalesce(array_agg(DISTINCT u.far) FILTER (WHERE u.isdown AND u.fresh), '{}'),
               coalesce(array_agg(DISTINCT u.far) FILTER (WHERE NOT u.isdown AND u.fresh), '{}')
          INTO l_src, l_dst, l_type, l_role, v_down, v_up
          FROM (SELECT s.*, f.node IS NOT NULL AS fresh
                  FROM unnest(l_src, l_dst, l_type, l_role, l_far, l_isdown)
                       AS s(src, dst, t, r, far, isdown)
                  LEFT JOIN unnest(v_fresh) AS f(node) ON f.node = s.far) u
         WHERE u.fresh OR NOT v_trimmed
            OR u.far IN (SELECT v.node FROM unnest(nodes) AS v(node));
        nodes := nodes || v_fresh;
        depths := depths || array_fill(v_depth, ARRAY[cardinality(v_fresh)]);
        edge_src := edge_src || l_src;
        edge_dst := edge_dst || l_dst;
        edge_types := edge_types || l_type;
        edge_roles := edge_roles || l_role;
    END LOOP;
END
$walk$;

-- Drift: each successful crawl in the window against the previous successful crawl of
-- the same account and kind (which may lie before the window). Failed crawls never
-- advance history, so they never produce drift. From the versions: a version closed at
-- crawl c and one opened at c for the same id = changed (one row per changed field);
-- opened alone = added; closed alone = removed. The first crawl of a stream has no
-- previous crawl and produces no drift. Needs the temp table obs.
-- Parameters: $since TIMESTAMPTZ.
WITH crawls_in AS (
    SELECT account, kind, crawl_id, t FROM obs
    WHERE t >= $since AND prev_crawl IS NOT NULL
), i_open AS (
    SELECT c.t, v.* FROM instance_versions v
    JOIN crawls_in c ON c.account = v.account AND c.kind = 'instances'
        AND c.crawl_id = v.first_crawl
), i_close AS (
    -- (the current versions, most of a fleet, cannot close: left out before the join)
    SELECT c.t, v.* FROM instance_versions v
    JOIN crawls_in c ON c.account = v.account AND c.kind = 'instances'
        AND c.crawl_id = v.until_crawl
    WHERE v.until_crawl IS NOT NULL
), i_pairs AS (
    SELECT coalesce(n.account, o.account) AS account, coalesce(n.id, o.id) AS id,
           coalesce(n.t, o.t) AS t,
           CASE WHEN o.id IS NULL THEN 'added' WHEN n.id IS NULL THEN 'removed'
                ELSE 'changed' END AS change,
           [{'field': 'name', 'old': o.name, 'new': n.name},
            {'field': 'status', 'old': o.status, 'new': n.status},
            {'field': 'region', 'old': o.region, 'new': n.region},
            {'field': 'cpu', 'old': o.cpu::VARCHAR, 'new': n.cpu::VARCHAR},
            {'field': 'memory_gb', 'old': o.memory_gb::VARCHAR, 'new': n.memory_gb::VARCHAR},
            {'field': 'plan', 'old': o.plan, 'new': n.plan},
            {'field': 'tags', 'old': o.tags, 'new': n.tags}] AS fields
    FROM i_open n
    FULL JOIN i_close o ON o.account = n.account AND o.id = n.id AND o.until_crawl = n.first_crawl
), b_open AS (
    SELECT c.t, v.* FROM bucket_versions v
    JOIN crawls_in c ON c.account = v.account AND c.kind = 'buckets'
        AND c.crawl_id = v.first_crawl
), b_close AS (
    SELECT c.t, v.* FROM bucket_versions v
    JOIN crawls_in c ON c.account = v.account AND c.kind = 'buckets'
        AND c.crawl_id = v.until_crawl
    WHERE v.until_crawl IS NOT NULL
), b_pairs AS (
    SELECT coalesce(n.account, o.account) AS account, coalesce(n.id, o.id) AS id,
           coalesce(n.t, o.t) AS t,
           CASE WHEN o.id IS NULL THEN 'added' WHEN n.id IS NULL THEN 'removed'
                ELSE 'changed' END AS change,
           [{'field': 'access', 'old': o.access, 'new': n.access},
            {'field': 'region', 'old': o.region, 'new': n.region}] AS fields
    FROM b_open n
    FULL JOIN b_close o ON o.account = n.account AND o.id = n.id AND o.until_crawl = n.first_crawl
), pairs AS (
    SELECT 'instance' AS kind, * FROM i_pairs
    UNION ALL
    SELECT 'bucket', * FROM b_pairs
), changed AS (
    SELECT kind, account, id, t, change, unnest(fields, recursive := true)
    FROM pairs WHERE change = 'changed'
)
SELECT kind, account, id, change, field, old, new, t AS observed_at
FROM changed WHERE old IS DISTINCT FROM new
UNION ALL
SELECT kind, account, id, change, NULL, NULL, NULL, t FROM pairs WHERE change <> 'changed'
ORDER BY observed_at, account, kind, id, field

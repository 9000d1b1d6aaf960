-- Instances per UTC day by status, as the last successful instance crawl of each account
-- in that day (and in the window) saw them; days without such a crawl have no row.
-- Counts are running sums of +1 where a version opens and -1 where it closes, read at the
-- day's crawl (ASOF: the last change at or before it): no expansion of versions x crawls.
-- day: whole days since 1970-01-01 UTC. Needs the temp table obs.
-- Parameters: $since TIMESTAMPTZ.
WITH lo AS (
    SELECT account, min(crawl_id) AS lo FROM obs WHERE kind = 'instances' GROUP BY ALL
), deltas AS (
    SELECT v.account, coalesce(v.status, '') AS status,
           greatest(v.first_crawl, l.lo) AS crawl_id, 1 AS d
    FROM instance_versions v JOIN lo l ON l.account = v.account
    UNION ALL
    SELECT v.account, coalesce(v.status, ''), greatest(v.until_crawl, l.lo), -1
    FROM instance_versions v JOIN lo l ON l.account = v.account
    WHERE v.until_crawl IS NOT NULL
), counts AS (
    SELECT account, status, crawl_id,
           sum(sum(d)) OVER (PARTITION BY account, status ORDER BY crawl_id) AS n
    FROM deltas GROUP BY account, status, crawl_id
), days AS (
    SELECT account, epoch_us(t) // 86400000000 AS day, max(crawl_id) AS crawl_id
    FROM obs WHERE kind = 'instances' AND t >= $since GROUP BY ALL
), wanted AS (
    SELECT d.*, s.status FROM days d
    JOIN (SELECT DISTINCT account, status FROM counts) s ON s.account = d.account
)
SELECT w.day, w.status, sum(c.n) AS n
FROM wanted w
ASOF JOIN counts c ON c.account = w.account AND c.status = w.status
    AND c.crawl_id <= w.crawl_id
GROUP BY ALL
HAVING sum(c.n) > 0
ORDER BY day, status

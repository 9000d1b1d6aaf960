-- Buckets per UTC day, with their total size, as the last successful bucket crawl of each
-- account in that day (and in the window) saw them (as state_buckets.sql: a bucket counts
-- with its size); days without such a crawl have no row. Running sums of +1/+size where a
-- size piece opens and -1/-size where it closes, read at the day's crawl (ASOF).
-- day: whole days since 1970-01-01 UTC. Needs the temp table obs.
-- Parameters: $accounts VARCHAR[], $since TIMESTAMPTZ.
WITH lo AS (
    SELECT account, min(crawl_id) AS lo FROM obs WHERE kind = 'buckets' GROUP BY ALL
), pieces AS (
    SELECT s.account, s.size_bytes, l.lo,
           greatest(s.first_crawl, v.first_crawl) AS first_crawl,
           nullif(least(coalesce(s.until_crawl, 9223372036854775807),
                        coalesce(v.until_crawl, 9223372036854775807)),
                  9223372036854775807) AS until_crawl
    FROM bucket_sizes s
    JOIN bucket_versions v ON v.account = s.account AND v.id = s.id
        AND v.first_crawl < coalesce(s.until_crawl, 9223372036854775807)
        AND s.first_crawl < coalesce(v.until_crawl, 9223372036854775807)
    JOIN lo l ON l.account = s.account
    WHERE list_contains($accounts, s.account)
), deltas AS (
    SELECT account, greatest(first_crawl, lo) AS crawl_id, 1 AS d, size_bytes::HUGEINT AS b
    FROM pieces
    UNION ALL
    SELECT account, greatest(until_crawl, lo), -1, -size_bytes::HUGEINT
    FROM pieces WHERE until_crawl IS NOT NULL
), counts AS (
    SELECT account, crawl_id,
           sum(sum(d)) OVER (PARTITION BY account ORDER BY crawl_id) AS n,
           sum(sum(b)) OVER (PARTITION BY account ORDER BY crawl_id) AS size_bytes
    FROM deltas GROUP BY account, crawl_id
), days AS (
    SELECT account, epoch_us(t) // 86400000000 AS day, max(crawl_id) AS crawl_id
    FROM obs WHERE kind = 'buckets' AND t >= $since GROUP BY ALL
)
SELECT d.day, sum(c.n) AS n, sum(c.size_bytes) AS size_bytes
FROM days d
ASOF JOIN counts c ON c.account = d.account AND c.crawl_id <= d.crawl_id
GROUP BY ALL
ORDER BY day

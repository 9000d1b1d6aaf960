-- Cost per UTC day of the window, by part (compute, storage): each observation's hourly
-- rate (what the fleet its crawl saw costs an hour) times the seconds it covers inside each
-- day. Summed over the days it is cost_accrued.sql's total; time in a coverage gap is never
-- charged. A crawl's rate is a running sum of +price where a version (or a bucket size
-- piece) opens and -price where it closes, in crawl order: no expansion of versions x
-- crawls. Versions opened before obs' first crawl of the stream (lo) count from lo; those
-- also closed before it cancel out there.
-- day: whole days since 1970-01-01 UTC (epoch_us // 86,400,000,000).
-- Rates and amounts are summed as decimals (exact in any order, as in cost_accrued.sql).
-- Needs temp tables obs and instance_prices. Parameters: $accounts VARCHAR[],
-- $storage_gb_month, $bytes_per_gb, $hours_per_month DOUBLE.
WITH lo AS (
    SELECT account, kind, min(crawl_id) AS lo FROM obs GROUP BY ALL
), running AS (
    SELECT v.account, v.first_crawl, v.until_crawl,
           CAST(p.hourly AS DECIMAL(38, 12)) AS rate, l.lo
    FROM instance_versions v
    JOIN lo l ON l.account = v.account AND l.kind = 'instances'
    JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM v.plan
        AND p.cpu IS NOT DISTINCT FROM v.cpu AND p.memory_gb IS NOT DISTINCT FROM v.memory_gb
    WHERE v.status = 'running'
), pieces AS (
    -- as in cost_accrued.sql: a size row and a bucket version overlapping on [first, until)
    SELECT s.account, greatest(s.first_crawl, v.first_crawl) AS first_crawl,
           nullif(least(coalesce(s.until_crawl, 9223372036854775807),
                        coalesce(v.until_crawl, 9223372036854775807)),
                  9223372036854775807) AS until_crawl,
           CAST(s.size_bytes / $bytes_per_gb * $storage_gb_month / $hours_per_month
                AS DECIMAL(38, 12)) AS rate, l.lo
    FROM bucket_sizes s
    JOIN bucket_versions v ON v.account = s.account AND v.id = s.id
        AND v.first_crawl < coalesce(s.until_crawl, 9223372036854775807)
        AND s.first_crawl < coalesce(v.until_crawl, 9223372036854775807)
    JOIN lo l ON l.account = s.account AND l.kind = 'buckets'
    WHERE list_contains($accounts, s.account)
), deltas AS (
    SELECT account, 'instances' AS kind, greatest(first_crawl, lo) AS crawl_id, rate AS d
    FROM running
    UNION ALL
    SELECT account, 'instances', greatest(until_crawl, lo), -rate
    FROM running WHERE until_crawl IS NOT NULL
    UNION ALL
    SELECT account, 'buckets', greatest(first_crawl, lo), rate FROM pieces
    UNION ALL
    SELECT account, 'buckets', greatest(until_crawl, lo), -rate
    FROM pieces WHERE until_crawl IS NOT NULL
), marks AS (
    SELECT account, kind, crawl_id, sum(d) AS d, FALSE AS is_obs,
           NULL::BIGINT AS a, NULL::BIGINT AS b
    FROM deltas GROUP BY ALL
    UNION ALL
    SELECT account, kind, crawl_id, 0::DECIMAL(38, 12), TRUE, epoch_us(cov_from),
           epoch_us(cov_to)
    FROM obs WHERE cov_to > cov_from
), rated AS (
    -- RANGE: a crawl's rate includes every delta at its own crawl_id (peers)
    SELECT *, sum(d) OVER (PARTITION BY account, kind ORDER BY crawl_id
                           RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rate
    FROM marks
), split AS (
    -- each covered stretch [a, b) cut at UTC midnights
    SELECT kind, rate, a, b,
           unnest(range(a // 86400000000, (b - 1) // 86400000000 + 1)) AS day
    FROM rated WHERE is_obs
)
SELECT day, CASE kind WHEN 'instances' THEN 'compute' ELSE 'storage' END AS part,
       -- (the rate times microseconds as a float: as a decimal, an hour's 3.6e9 of them
       -- took a rate a record and a price list allow past 38 digits)
       sum(CAST(CAST(rate AS DOUBLE)
                * (least(b, (day + 1) * 86400000000) - greatest(a, day * 86400000000))
                / 3.6e9 AS DECIMAL(38, 12)))::DOUBLE AS amount
FROM split
GROUP BY ALL
ORDER BY day, part

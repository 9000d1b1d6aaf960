-- Cost accrued over the window, by part (compute, storage) and region.
-- Compute accrues only while an instance is running, at its hourly price; storage on
-- size_bytes at storage_gb_month per $bytes_per_gb bytes per $hours_per_month hours
-- (Pricing.query_values: 10^9 and 730, defined once in pricing.py). A version accrues for the
-- covered seconds of the crawls that observed it (first_crawl <= crawl < until_crawl),
-- looked up in obs' cumulative sums: no expansion of versions x crawls. A crawl before the
-- first one obs kept (lo) observed nothing in the window (cumulative sum 0); one after its
-- last, everything (cum_total). Time in a coverage gap is never charged.
-- Amounts are summed as decimals of 12 places, each term rounded once: exact, so the
-- sum is the same whatever order DuckDB's threads add them in (a float sum of a million
-- terms was not, in its 6th decimal).
-- Needs temp tables obs and instance_prices.
-- Parameters: $storage_gb_month, $bytes_per_gb, $hours_per_month DOUBLE.
WITH totals AS (
    SELECT account, kind, any_value(cum_total) AS cum_total, min(crawl_id) AS lo
    FROM obs GROUP BY ALL
), running AS (
    SELECT v.account, v.region, p.hourly,
           coalesce(u.cum_before, CASE WHEN v.until_crawl < t.lo THEN 0.0 ELSE t.cum_total END)
           - coalesce(f.cum_before, CASE WHEN v.first_crawl < t.lo THEN 0.0 ELSE t.cum_total END)
               AS secs
    FROM instance_versions v
    JOIN totals t ON t.account = v.account AND t.kind = 'instances'
    JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM v.plan
        AND p.cpu IS NOT DISTINCT FROM v.cpu AND p.memory_gb IS NOT DISTINCT FROM v.memory_gb
    LEFT JOIN obs f ON f.account = v.account AND f.kind = 'instances'
        AND f.crawl_id = v.first_crawl
    LEFT JOIN obs u ON u.account = v.account AND u.kind = 'instances'
        AND u.crawl_id = v.until_crawl
    WHERE v.status = 'running'
), pieces AS (
    -- a size row and a bucket version overlap on [lo, hi): that piece has one size and
    -- one region
    SELECT s.account, v.region, s.size_bytes,
           greatest(s.first_crawl, v.first_crawl) AS lo,
           least(coalesce(s.until_crawl, 9223372036854775807),
                 coalesce(v.until_crawl, 9223372036854775807)) AS hi
    FROM bucket_sizes s
    JOIN bucket_versions v ON v.account = s.account AND v.id = s.id
        AND v.first_crawl < coalesce(s.until_crawl, 9223372036854775807)
        AND s.first_crawl < coalesce(v.until_crawl, 9223372036854775807)
    WHERE list_contains($accounts, s.account)
), stored AS (
    SELECT p.account, p.region, p.size_bytes,
           coalesce(u.cum_before, CASE WHEN p.hi < t.lo THEN 0.0 ELSE t.cum_total END)
           - coalesce(f.cum_before, CASE WHEN p.lo < t.lo THEN 0.0 ELSE t.cum_total END)
               AS secs
    FROM pieces p
    JOIN totals t ON t.account = p.account AND t.kind = 'buckets'
    LEFT JOIN obs f ON f.account = p.account AND f.kind = 'buckets' AND f.crawl_id = p.lo
    LEFT JOIN obs u ON u.account = p.account AND u.kind = 'buckets' AND u.crawl_id = p.hi
)
SELECT 'compute' AS part, region,
       sum(CAST(hourly * secs / 3600.0 AS DECIMAL(38, 12)))::DOUBLE AS amount
FROM running WHERE secs > 0 GROUP BY ALL
UNION ALL
SELECT 'storage', region,
       sum(CAST(size_bytes / $bytes_per_gb * $storage_gb_month / $hours_per_month * secs
                / 3600.0 AS DECIMAL(38, 12)))::DOUBLE
FROM stored WHERE secs > 0 GROUP BY ALL
ORDER BY part, region

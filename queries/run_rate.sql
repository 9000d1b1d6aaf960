-- Hourly run-rate as of the window's end, by part and region: running instances at their
-- hourly price, stored bytes at the storage price.
-- Needs temp tables state_instances, state_buckets, instance_prices.
-- Parameters: $storage_gb_month DOUBLE.
SELECT 'compute' AS part, i.region, sum(p.hourly) AS amount
FROM state_instances i
JOIN instance_prices p ON p.account = i.account AND p.id = i.id
    AND p.first_crawl = i.first_crawl
WHERE i.status = 'running'
GROUP BY ALL
UNION ALL
SELECT 'storage', region, sum(size_bytes / 1e9 * $storage_gb_month / 730.0)
FROM state_buckets GROUP BY ALL
ORDER BY part, region

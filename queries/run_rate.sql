-- Hourly run-rate as of the window's end, by part and region: running instances at their
-- hourly price, stored bytes at the storage price.
-- Needs temp tables state_instances, state_buckets, instance_prices.
-- Parameters: $storage_gb_month, $bytes_per_gb, $hours_per_month DOUBLE (Pricing.query_values).
SELECT 'compute' AS part, i.region, sum(p.hourly) AS amount
FROM state_instances i
JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM i.plan
    AND p.cpu IS NOT DISTINCT FROM i.cpu AND p.memory_gb IS NOT DISTINCT FROM i.memory_gb
WHERE i.status = 'running'
GROUP BY ALL
UNION ALL
SELECT 'storage', region, sum(size_bytes / $bytes_per_gb * $storage_gb_month / $hours_per_month)
FROM state_buckets GROUP BY ALL
ORDER BY part, region

-- Hourly run-rate as of the window's end, by part and region: running instances at their
-- hourly price, stored bytes at the storage price.
-- Summed as decimals, exact in any order (as in cost_accrued.sql).
-- Needs temp tables state_instances, state_buckets, instance_prices.
-- Parameters: $storage_gb_month, $bytes_per_gb, $hours_per_month DOUBLE (Pricing.query_values).
SELECT 'compute' AS part, i.region,
       sum(CAST(p.hourly AS DECIMAL(38, 12)))::DOUBLE AS amount
FROM state_instances i
JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM i.plan
    AND p.cpu IS NOT DISTINCT FROM i.cpu AND p.memory_gb IS NOT DISTINCT FROM i.memory_gb
WHERE i.status = 'running'
GROUP BY ALL
UNION ALL
SELECT 'storage', region,
       sum(CAST(size_bytes / $bytes_per_gb * $storage_gb_month / $hours_per_month
                AS DECIMAL(38, 12)))::DOUBLE
FROM state_buckets GROUP BY ALL
ORDER BY part, region

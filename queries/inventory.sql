-- Inventory at the window's end, per account: instances by status and region, buckets
-- with their total size. Needs the temp tables state_instances and state_buckets.
SELECT 'instance' AS kind, account, status, region, count(*) AS n, NULL::HUGEINT AS size_bytes
FROM state_instances GROUP BY ALL
UNION ALL
SELECT 'bucket', account, NULL, region, count(*), sum(size_bytes)
FROM state_buckets GROUP BY ALL
ORDER BY kind, account, status, region

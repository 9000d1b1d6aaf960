-- Hourly price of every instance version: its plan's price, else a plan with the same cpu
-- and memory, else per-vCPU and per-GB-hour rates. Needs the temp table pricing_plans.
-- Parameters: $per_vcpu_hour, $per_gb_hour DOUBLE.
WITH by_size AS (
    SELECT cpu, memory_gb, min(hourly) AS hourly FROM pricing_plans GROUP BY ALL
)
SELECT v.account, v.id, v.first_crawl,
       coalesce(p.hourly, s.hourly, v.cpu * $per_vcpu_hour + v.memory_gb * $per_gb_hour)
           AS hourly,
       CASE WHEN p.hourly IS NOT NULL THEN 'plan'
            WHEN s.hourly IS NOT NULL THEN 'size' ELSE 'rates' END AS basis
FROM instance_versions v
LEFT JOIN pricing_plans p ON p.plan = v.plan
LEFT JOIN by_size s ON s.cpu = v.cpu AND s.memory_gb = v.memory_gb

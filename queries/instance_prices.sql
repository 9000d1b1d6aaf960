-- Hourly price of every instance shape (plan, cpu, memory_gb) among the versions: its
-- plan's price, else a plan with the same cpu and memory, else per-vCPU and per-GB-hour
-- rates. One row per shape (a few dozen for a fleet of any size), which the queries join
-- by shape (IS NOT DISTINCT FROM: a version may have no plan) where a version's price is
-- needed. Needs the temp table pricing_plans.
-- Parameters: $per_vcpu_hour, $per_gb_hour DOUBLE.
WITH shapes AS (
    SELECT DISTINCT plan, cpu, memory_gb FROM instance_versions
), by_size AS (
    SELECT cpu, memory_gb, min(hourly) AS hourly FROM pricing_plans GROUP BY ALL
)
SELECT v.plan, v.cpu, v.memory_gb,
       coalesce(p.hourly, s.hourly, v.cpu * $per_vcpu_hour + v.memory_gb * $per_gb_hour)
           AS hourly,
       CASE WHEN p.hourly IS NOT NULL THEN 'plan'
            WHEN s.hourly IS NOT NULL THEN 'size' ELSE 'rates' END AS basis
FROM shapes v
LEFT JOIN pricing_plans p ON p.plan = v.plan
LEFT JOIN by_size s ON s.cpu = v.cpu AND s.memory_gb = v.memory_gb

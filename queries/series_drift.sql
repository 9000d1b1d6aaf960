-- Drift per UTC day by change (added, removed, changed): the rows of drift.sql, counted
-- by the day they were observed. day: whole days since 1970-01-01 UTC.
-- Needs the temp table drift_rows (drift.sql).
SELECT epoch_us(observed_at) // 86400000000 AS day, change, count(*) AS n
FROM drift_rows
GROUP BY ALL
ORDER BY day, change

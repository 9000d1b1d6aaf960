-- Buckets (with their size) as of the window's end: the versions observed by each
-- account's last successful bucket crawl before $until. Needs the temp table obs.
WITH last_crawl AS (
    SELECT account, max(crawl_id) AS crawl_id FROM obs WHERE kind = 'buckets' GROUP BY ALL
)
SELECT v.*, s.size_bytes, l.crawl_id AS as_of_crawl
FROM bucket_versions v
JOIN last_crawl l ON l.account = v.account
JOIN bucket_sizes s ON s.account = v.account AND s.id = v.id
    AND s.first_crawl <= l.crawl_id AND coalesce(s.until_crawl > l.crawl_id, TRUE)
WHERE v.first_crawl <= l.crawl_id AND coalesce(v.until_crawl > l.crawl_id, TRUE)

-- Instances as of the window's end: the versions observed by each account's last
-- successful instance crawl before $until. Needs the temp table obs (observations.sql).
WITH last_crawl AS (
    SELECT account, max(crawl_id) AS crawl_id FROM obs WHERE kind = 'instances' GROUP BY ALL
)
SELECT v.*, l.crawl_id AS as_of_crawl
FROM instance_versions v
JOIN last_crawl l ON l.account = v.account
WHERE v.first_crawl <= l.crawl_id AND coalesce(v.until_crawl > l.crawl_id, TRUE)

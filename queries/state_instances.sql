-- Instances as of the window's end: the versions observed by each account's last
-- successful instance crawl before $until, with the columns the queries read of them
-- (a million rows at a fleet of a million: tags, extra and created_at are left out).
-- Needs the temp table obs (observations.sql).
WITH last_crawl AS (
    SELECT account, max(crawl_id) AS crawl_id FROM obs WHERE kind = 'instances' GROUP BY ALL
)
SELECT v.account, v.id, v.name, v.status, v.region, v.cpu, v.memory_gb, v.plan,
       v.first_crawl, l.crawl_id AS as_of_crawl
FROM instance_versions v
JOIN last_crawl l ON l.account = v.account
WHERE v.first_crawl <= l.crawl_id AND coalesce(v.until_crawl > l.crawl_id, TRUE)

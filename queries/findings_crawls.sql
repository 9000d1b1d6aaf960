-- The crawl sequence findings are judged at: every successful crawl of each (account,
-- kind) before the window's end. A finding's interval is a run of consecutive crawls of
-- this sequence; a version's observation time is its crawl's finished_at. prev_crawl: the
-- crawl before in the sequence (a run's last crawl is the one before its end).
-- Parameters: $accounts VARCHAR[], $until TIMESTAMPTZ.
SELECT account, kind, crawl_id, finished_at AS t,
       lag(crawl_id) OVER (PARTITION BY account, kind ORDER BY crawl_id) AS prev_crawl
FROM kind_crawls
WHERE status = 'succeeded' AND list_contains($accounts, account) AND finished_at < $until
ORDER BY account, kind, crawl_id

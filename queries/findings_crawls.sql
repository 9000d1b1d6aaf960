-- The crawl sequence findings are judged at: every successful crawl of each (account,
-- kind) before the window's end. A finding's interval is a run of consecutive crawls of
-- this sequence; a version's observation time is its crawl's finished_at.
-- Parameters: $accounts VARCHAR[], $until TIMESTAMPTZ.
SELECT account, kind, crawl_id, finished_at AS t
FROM kind_crawls
WHERE status = 'succeeded' AND list_contains($accounts, account) AND finished_at < $until
ORDER BY account, kind, crawl_id

-- Crawls re-dated because the clock stepped back (see nexus_audit/store.py), detected by a
-- crawl that finished inside the window: each one's recorded end, the end it was moved to
-- (the detecting crawl's end) and by how many seconds.
-- Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ.
SELECT s.account, s.crawl_id, c.kinds, s.recorded_finished_at, s.corrected_to,
       epoch(s.recorded_finished_at) - epoch(s.corrected_to) AS seconds,
       s.detected_by_crawl
FROM clock_skews s
JOIN crawls c ON c.crawl_id = s.crawl_id
WHERE list_contains($accounts, s.account)
  AND s.corrected_to >= $since AND s.corrected_to < $until
ORDER BY s.corrected_to, s.account, s.crawl_id

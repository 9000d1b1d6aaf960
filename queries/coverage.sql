-- Coverage gaps per (account, kind) inside the window: time no successful observation
-- holds. Streams are the (account, kind) pairs with any crawl before the window's end;
-- a stream without a successful crawl is one gap as long as the window.
-- Needs the temp table obs. Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ.
WITH streams AS (
    SELECT DISTINCT account, kind FROM kind_crawls
    WHERE list_contains($accounts, account) AND finished_at < $until
), firsts AS (
    SELECT account, kind, min(t) AS first_t FROM obs GROUP BY ALL
), raw_gaps AS (
    -- after each observation until the next crawl (or the window's end)
    SELECT account, kind, held_until AS gap_start,
           coalesce(least(t_next, $until), $until) AS gap_end
    FROM obs
    UNION ALL
    -- before the stream's first successful crawl
    SELECT s.account, s.kind, $since, coalesce(f.first_t, $until)
    FROM streams s LEFT JOIN firsts f USING (account, kind)
)
SELECT account, kind, greatest(gap_start, $since) AS start, least(gap_end, $until) AS "end"
FROM raw_gaps
WHERE least(gap_end, $until) > greatest(gap_start, $since)
ORDER BY account, kind, start

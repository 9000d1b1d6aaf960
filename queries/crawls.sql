-- Crawls finished inside the window, per account: count, succeeded, failed, and the last
-- successful crawl before the window's end (which may lie before the window).
-- Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ.
SELECT account,
       count(*) FILTER (WHERE finished_at >= $since AND finished_at < $until) AS count,
       count(*) FILTER (WHERE finished_at >= $since AND finished_at < $until
                        AND status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE finished_at >= $since AND finished_at < $until
                        AND status <> 'succeeded') AS failed,
       max(finished_at) FILTER (WHERE finished_at < $until AND status = 'succeeded')
           AS last_success
FROM crawls
WHERE list_contains($accounts, account)
GROUP BY account
ORDER BY account

-- Instances not running continuously for at least stale_after up to the window's end
-- (pending: for at least pending_stale_after, counting only the pending run). A run is a
-- chain of consecutive versions (one closed at the crawl that opened the next).
-- stale_since = the crawl that first saw the run; at_least when that crawl is the
-- account's first successful instance crawl (the run may have begun earlier).
-- A version's start is its first crawl's finished_at, read from the crawls table (a run
-- may begin long before the window).
-- Needs temp tables state_instances, instance_prices.
-- Parameters: $accounts VARCHAR[], $until TIMESTAMPTZ, $stale_after,
--             $pending_stale_after DOUBLE (seconds).
WITH firsts AS (
    SELECT account, min(crawl_id) AS first_crawl FROM kind_crawls
    WHERE kind = 'instances' AND status = 'succeeded' AND list_contains($accounts, account)
    GROUP BY ALL
), versions AS (
    SELECT v.account, v.id, v.status, v.first_crawl, v.until_crawl, f.finished_at AS start_t,
           v.first_crawl = fs.first_crawl AS is_first,
           v.status <> 'running' AS idle, v.status = 'pending' AS pending
    FROM instance_versions v
    JOIN firsts fs ON fs.account = v.account
    JOIN crawls f ON f.crawl_id = v.first_crawl AND f.finished_at < $until
    -- Only the instances not running now can be stale, and a run is made of one id's
    -- versions alone: the others' versions (most of a fleet) are left out unread.
    WHERE EXISTS (SELECT 1 FROM state_instances s
                  WHERE s.account = v.account AND s.id = v.id AND s.status <> 'running')
), flagged AS (
    SELECT *,
           lag(until_crawl) OVER w = first_crawl AS chained,
           lag(idle) OVER w AS prev_idle, lag(pending) OVER w AS prev_pending
    FROM versions
    WINDOW w AS (PARTITION BY account, id ORDER BY first_crawl)
), runs AS (
    SELECT *,
           sum(CASE WHEN idle AND coalesce(chained AND prev_idle, FALSE) THEN 0 ELSE 1 END)
               OVER w AS idle_run,
           sum(CASE WHEN pending AND coalesce(chained AND prev_pending, FALSE) THEN 0 ELSE 1 END)
               OVER w AS pending_run
    FROM flagged
    WINDOW w AS (PARTITION BY account, id ORDER BY first_crawl)
), idle_starts AS (
    SELECT account, id, idle_run, min(start_t) AS since_t, arg_min(is_first, first_crawl) AS first
    FROM runs GROUP BY ALL
), pending_starts AS (
    SELECT account, id, pending_run, min(start_t) AS since_t,
           arg_min(is_first, first_crawl) AS first
    FROM runs GROUP BY ALL
), current AS (
    -- with the state's row (its name, region and shape), read once here
    SELECT r.account, r.id, s.name, s.status, s.region, s.plan, s.cpu, s.memory_gb,
           CASE WHEN s.status = 'pending' THEN ps.since_t ELSE ist.since_t END AS since_t,
           CASE WHEN s.status = 'pending' THEN ps.first ELSE ist.first END AS at_least,
           CASE WHEN s.status = 'pending' THEN $pending_stale_after ELSE $stale_after END
               AS threshold
    FROM state_instances s
    JOIN runs r ON r.account = s.account AND r.id = s.id AND r.first_crawl = s.first_crawl
    JOIN idle_starts ist ON ist.account = r.account AND ist.id = r.id
        AND ist.idle_run = r.idle_run
    JOIN pending_starts ps ON ps.account = r.account AND ps.id = r.id
        AND ps.pending_run = r.pending_run
    WHERE s.status <> 'running'
)
SELECT c.account, c.id, c.name, c.status, c.region, c.since_t AS stale_since, c.at_least,
       p.hourly AS hourly_cost
FROM current c
JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM c.plan
    AND p.cpu IS NOT DISTINCT FROM c.cpu AND p.memory_gb IS NOT DISTINCT FROM c.memory_gb
WHERE (epoch_us($until) - epoch_us(c.since_t)) / 1e6 >= c.threshold
ORDER BY stale_since, c.account, c.id

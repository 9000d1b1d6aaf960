-- Instances not running continuously for at least stale_after up to the window's end
-- (pending: for at least pending_stale_after, counting only the pending run). A run is a
-- chain of consecutive versions (one closed at the crawl that opened the next).
-- stale_since = the crawl that first saw the run; at_least when that crawl is the
-- account's first successful instance crawl (the run may have begun earlier).
-- A version's start is its first crawl's finished_at, read from the crawls table (a run
-- may begin long before the window).
-- A version begins a run unless the version closed at its first crawl (its id's previous
-- one, found by a join rather than a window: a window's sort of every version read cost
-- twice as much) was in the run too; the current version's run begins at its id's last
-- such start.
-- Needs temp tables state_instances, instance_prices.
-- Parameters: $accounts VARCHAR[], $until TIMESTAMPTZ, $stale_after,
--             $pending_stale_after DOUBLE (seconds).
WITH firsts AS (
    SELECT account, min(crawl_id) AS first_crawl FROM kind_crawls
    WHERE kind = 'instances' AND status = 'succeeded' AND list_contains($accounts, account)
    GROUP BY ALL
), current AS (
    SELECT * FROM state_instances WHERE status <> 'running'
), versions AS (
    SELECT v.account, v.id, v.first_crawl, v.until_crawl, f.finished_at AS start_t,
           v.first_crawl = fs.first_crawl AS is_first,
           v.status <> 'running' AS idle, v.status = 'pending' AS pending,
           c.status = 'pending' AS now_pending
    FROM instance_versions v
    JOIN firsts fs ON fs.account = v.account
    JOIN crawls f ON f.crawl_id = v.first_crawl AND f.finished_at < $until
    -- Only the instances not running now can be stale, and a run is made of one id's
    -- versions alone: the others' versions (most of a fleet) are left out unread.
    JOIN current c ON c.account = v.account AND c.id = v.id
        AND v.first_crawl <= c.first_crawl
), starts AS (
    -- A pending instance's run counts only its pending versions; any other's, its idle
    -- ones (pending among them).
    SELECT v.account, v.id, max(v.first_crawl) AS run_from
    FROM versions v
    LEFT JOIN versions p ON p.account = v.account AND p.id = v.id
        AND p.until_crawl = v.first_crawl
    WHERE CASE WHEN v.now_pending THEN NOT (v.pending AND coalesce(p.pending, FALSE))
               ELSE NOT (v.idle AND coalesce(p.idle, FALSE)) END
    GROUP BY ALL
), runs AS (
    SELECT v.account, v.id, min(v.start_t) AS since_t,
           arg_min(v.is_first, v.first_crawl) AS at_least, max(v.first_crawl) AS last_version
    FROM versions v
    JOIN starts s ON s.account = v.account AND s.id = v.id AND v.first_crawl >= s.run_from
    GROUP BY ALL
)
SELECT c.account, c.id, c.name, c.status, c.region, r.since_t AS stale_since, r.at_least,
       p.hourly AS hourly_cost
FROM current c
-- (the current version among the run's: as a join on it, were it ever missing)
JOIN runs r ON r.account = c.account AND r.id = c.id AND r.last_version = c.first_crawl
JOIN instance_prices p ON p.plan IS NOT DISTINCT FROM c.plan
    AND p.cpu IS NOT DISTINCT FROM c.cpu AND p.memory_gb IS NOT DISTINCT FROM c.memory_gb
WHERE (epoch_us($until) - epoch_us(r.since_t)) / 1e6
      >= CASE WHEN c.status = 'pending' THEN $pending_stale_after ELSE $stale_after END
ORDER BY stale_since, c.account, c.id

-- Exposure windows of buckets overlapping the window: a run of consecutive versions whose
-- access is anything but exactly 'private' (fail closed: unknown values, other case or
-- whitespace, and NULL are exposed; the macro is_exposed comes from nexus_audit/exposure.py).
-- start = the crawl that first saw the run; end = the crawl that saw it private or gone,
-- NULL while still exposed at the window's end; at_least when the start is the account's
-- first successful bucket crawl (the exposure may have begun earlier). A version's times
-- are its crawls' finished_at, read from the crawls table (a run may begin long before the
-- window); crawls at or after the window's end are not seen yet.
-- Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ.
WITH firsts AS (
    SELECT account, min(crawl_id) AS first_crawl FROM kind_crawls
    WHERE kind = 'buckets' AND status = 'succeeded' AND list_contains($accounts, account)
    GROUP BY ALL
), versions AS (
    SELECT v.account, v.id, v.access, v.first_crawl, f.finished_at AS start_t,
           v.first_crawl = fs.first_crawl AS is_first,
           CASE WHEN u.crawl_id IS NULL THEN NULL ELSE v.until_crawl END AS until_crawl,
           u.finished_at AS end_t,
           is_exposed(v.access) AS exposed
    FROM bucket_versions v
    JOIN firsts fs ON fs.account = v.account
    JOIN crawls f ON f.crawl_id = v.first_crawl AND f.finished_at < $until
    LEFT JOIN crawls u ON u.crawl_id = v.until_crawl AND u.finished_at < $until
), flagged AS (
    SELECT *,
           CASE WHEN exposed AND NOT coalesce(
                    lag(exposed) OVER w AND lag(until_crawl) OVER w = first_crawl, FALSE)
                THEN 1 ELSE 0 END AS starts
    FROM versions
    WINDOW w AS (PARTITION BY account, id ORDER BY first_crawl)
), runs AS (
    SELECT *, sum(starts) OVER (PARTITION BY account, id ORDER BY first_crawl) AS run
    FROM flagged
)
SELECT account, id,
       arg_max(access, first_crawl) AS access,
       min(start_t) AS start,
       CASE WHEN bool_or(until_crawl IS NULL) THEN NULL ELSE max(end_t) END AS "end",
       arg_min(is_first, first_crawl) AS at_least
FROM runs
WHERE exposed
GROUP BY account, id, run
HAVING "end" IS NULL OR "end" > $since
ORDER BY start, account, id

-- The successful crawls of each (account, kind) whose observation can reach the window:
-- from the last one before the window's start (or the stream's first; an earlier one
-- at most where streams' last crawls before the window differ) up to the window's end,
-- with the time each observation holds and its covered seconds inside the window.
-- Earlier crawls are left out (a 30-day window's rows stay as many after years of minute-
-- level bucket history; only a scan of the crawls grows): their observations ended before
-- the window (0 covered seconds, cumulative sums 0), and the queries that need an older
-- crawl's time read it from the crawls table.
-- An observation holds from the crawl's finished_at until the next successful crawl of the
-- same account and kind, at most max_gap; time no observation holds is a coverage gap.
-- cum_before: covered seconds of all earlier crawls of the sequence, so the seconds a
-- version was observed in the window are cum_at(until_crawl) - cum_at(first_crawl).
-- prev_crawl: the previous successful crawl; NULL on each stream's first row kept (the
-- stream's first crawl, or one before the window, whose prev_crawl no query reads).
-- Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ,
--             $max_gap_instances, $max_gap_buckets DOUBLE (seconds).
WITH last_before AS (
    -- per stream, the last crawl before the window (none: the stream begins inside it)
    SELECT max(finished_at) AS t FROM kind_crawls
    WHERE status = 'succeeded' AND list_contains($accounts, account) AND finished_at < $since
    GROUP BY account, kind
), seq AS (
    -- From the earliest of those on, for every stream (a stream may keep a few crawls more
    -- than it needs, never fewer): one cut-off time, which also lets DuckDB skip the
    -- crawls table's older row groups unread.
    SELECT account, kind, crawl_id, finished_at AS t,
           lead(finished_at) OVER w AS t_next,
           lag(crawl_id) OVER w AS prev_crawl
    FROM kind_crawls
    WHERE status = 'succeeded' AND list_contains($accounts, account)
      AND finished_at >= coalesce((SELECT min(t) FROM last_before), '-infinity'::TIMESTAMPTZ)
    WINDOW w AS (PARTITION BY account, kind ORDER BY crawl_id)
), held AS (
    SELECT *,
           least(coalesce(t_next, 'infinity'::TIMESTAMPTZ),
                 t + to_microseconds(CAST(1e6 * CASE kind WHEN 'instances'
                     THEN $max_gap_instances ELSE $max_gap_buckets END AS BIGINT))) AS held_until
    FROM seq
    WHERE t < $until
), clipped AS (
    SELECT *,
           greatest(t, $since) AS cov_from,
           least(held_until, $until) AS cov_to
    FROM held
), covered AS (
    SELECT *,
           CASE WHEN cov_to > cov_from
                THEN (epoch_us(cov_to) - epoch_us(cov_from)) / 1e6 ELSE 0.0 END AS covered_s
    FROM clipped
)
SELECT account, kind, crawl_id, t, t_next, prev_crawl, held_until, cov_from, cov_to,
       covered_s,
       coalesce(sum(covered_s) OVER (PARTITION BY account, kind ORDER BY crawl_id
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0.0) AS cum_before,
       sum(covered_s) OVER (PARTITION BY account, kind) AS cum_total
FROM covered

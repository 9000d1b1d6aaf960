-- Every successful crawl of each (account, kind) up to the window's end, with the time its
-- observation holds and the covered seconds inside the window.
-- An observation holds from the crawl's finished_at until the next successful crawl of the
-- same account and kind, at most max_gap; time no observation holds is a coverage gap.
-- cum_before: covered seconds of all earlier crawls of the sequence, so the seconds a
-- version was observed in the window are cum_at(until_crawl) - cum_at(first_crawl).
-- Parameters: $accounts VARCHAR[], $since, $until TIMESTAMPTZ,
--             $max_gap_instances, $max_gap_buckets DOUBLE (seconds).
WITH seq AS (
    SELECT account, kind, crawl_id, finished_at AS t,
           lead(finished_at) OVER w AS t_next,
           lag(crawl_id) OVER w AS prev_crawl
    FROM kind_crawls
    WHERE status = 'succeeded' AND list_contains($accounts, account)
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

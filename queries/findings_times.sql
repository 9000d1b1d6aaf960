-- The crawls whose times the judge reads, of the sequence in finding_crawls: each run's
-- first crawl, its end crawl and the crawl before that (its last), each stream's last
-- crawl before the window's end (the last of a run still open), and around each
-- exception's expiry the last crawl before it and the first at or after it (where an
-- accepted run turns expired). Only these, in sequence order: after years of minute-level
-- bucket crawls the whole sequence is hundreds of thousands of rows, and the judge's
-- bisect finds the same crawls among these as among all (every crawl it can land on or
-- read next to is here).
-- Needs temp tables finding_crawls (findings_crawls.sql) and finding_runs (findings.sql).
-- Parameters: $expiries TIMESTAMPTZ[].
WITH runs AS (
    SELECT account, CASE kind WHEN 'instance' THEN 'instances' ELSE 'buckets' END AS kind,
           from_crawl, until_crawl
    FROM finding_runs
), wanted AS (
    SELECT account, kind, from_crawl AS crawl_id FROM runs
    UNION
    SELECT account, kind, until_crawl FROM runs WHERE until_crawl IS NOT NULL
    UNION
    SELECT c.account, c.kind, c.prev_crawl
    FROM runs r JOIN finding_crawls c
        ON c.account = r.account AND c.kind = r.kind AND c.crawl_id = r.until_crawl
    UNION
    SELECT account, kind, max(crawl_id) FROM finding_crawls GROUP BY ALL
    UNION
    SELECT c.account, c.kind, max(c.crawl_id) FILTER (WHERE c.t < e.expires)
    FROM finding_crawls c, (SELECT unnest(CAST($expiries AS TIMESTAMPTZ[])) AS expires) e
    GROUP BY c.account, c.kind, e.expires
    UNION
    SELECT c.account, c.kind, min(c.crawl_id) FILTER (WHERE c.t >= e.expires)
    FROM finding_crawls c, (SELECT unnest(CAST($expiries AS TIMESTAMPTZ[])) AS expires) e
    GROUP BY c.account, c.kind, e.expires
)
SELECT c.account, c.kind, c.crawl_id, c.t
FROM finding_crawls c
JOIN wanted w ON w.account = c.account AND w.kind = c.kind AND w.crawl_id = c.crawl_id
ORDER BY c.account, c.kind, c.crawl_id

-- Policy findings as runs: per rule and resource, each stretch of consecutive crawls at
-- which the rule was broken (from_crawl: the first crawl that saw it; until_crawl: the
-- first crawl that no longer did, NULL while it still holds at the window's end).
-- A rule that depends only on a version's fields holds for the whole version, so runs are
-- chains of violating versions (one closed at the crawl that opened the next), as in
-- exposures.sql; instance.stopped_too_long starts inside a stopped run, at the first crawl
-- at least $max_stopped after the run began. Exceptions and status are applied in Python.
-- Needs the temp table finding_crawls (findings_crawls.sql).
-- Parameters: $allowed_regions, $required_tags VARCHAR[]; $check_regions, $check_tags,
--             $check_size, $check_stopped BOOLEAN; $max_public_bytes BIGINT;
--             $max_stopped DOUBLE (seconds).
WITH icrawls AS (
    SELECT account, crawl_id, t FROM finding_crawls WHERE kind = 'instances'
), bcrawls AS (
    SELECT account, crawl_id, t FROM finding_crawls WHERE kind = 'buckets'
), iv AS (
    -- Versions seen before the window's end; one closed after it is still open then.
    SELECT v.account, v.id, v.region, v.status, v.tags, v.first_crawl,
           CASE WHEN u.crawl_id IS NULL THEN NULL ELSE v.until_crawl END AS until_crawl
    FROM instance_versions v
    JOIN icrawls f ON f.account = v.account AND f.crawl_id = v.first_crawl
    LEFT JOIN icrawls u ON u.account = v.account AND u.crawl_id = v.until_crawl
), bv AS (
    SELECT v.account, v.id, v.region, v.access, v.first_crawl,
           CASE WHEN u.crawl_id IS NULL THEN NULL ELSE v.until_crawl END AS until_crawl,
           is_exposed(v.access) AS exposed
    FROM bucket_versions v
    JOIN bcrawls f ON f.account = v.account AND f.crawl_id = v.first_crawl
    LEFT JOIN bcrawls u ON u.account = v.account AND u.crawl_id = v.until_crawl
), bs AS (
    SELECT s.account, s.id, s.size_bytes, s.first_crawl,
           CASE WHEN u.crawl_id IS NULL THEN NULL ELSE s.until_crawl END AS until_crawl
    FROM bucket_sizes s
    JOIN bcrawls f ON f.account = s.account AND f.crawl_id = s.first_crawl
    LEFT JOIN bcrawls u ON u.account = s.account AND u.crawl_id = s.until_crawl
    WHERE $check_size AND s.size_bytes > $max_public_bytes
), tagged AS (
    SELECT *, list_filter(CAST($required_tags AS VARCHAR[]), lambda k: coalesce(trim(
               json_transform(tags, '"MAP(VARCHAR, VARCHAR)"')[k]), '') = '')
               AS missing
    FROM iv WHERE $check_tags
), segments AS (
    SELECT 'instance.region' AS rule, 'instance' AS kind, account, id, region,
           first_crawl AS from_crawl, until_crawl,
           'region ' || region || ' is not an allowed region' AS detail
    FROM iv
    WHERE $check_regions AND NOT list_contains(CAST($allowed_regions AS VARCHAR[]), region)
    UNION ALL
    SELECT 'instance.required_tags', 'instance', account, id, region, first_crawl,
           until_crawl, 'missing tags: ' || array_to_string(missing, ', ')
    FROM tagged WHERE len(missing) > 0
    UNION ALL
    SELECT 'bucket.public', 'bucket', account, id, region, first_crawl, until_crawl,
           'access ' || coalesce(access, 'unknown')
    FROM bv WHERE exposed
    UNION ALL
    -- Exposed while larger than allowed: where an exposed version and a too-large size
    -- row overlap.
    SELECT 'bucket.public_too_large', 'bucket', v.account, v.id, v.region,
           greatest(v.first_crawl, s.first_crawl),
           CASE WHEN v.until_crawl IS NULL THEN s.until_crawl
                WHEN s.until_crawl IS NULL THEN v.until_crawl
                ELSE least(v.until_crawl, s.until_crawl) END,
           'access ' || coalesce(v.access, 'unknown') || ', ' || s.size_bytes || ' bytes'
    FROM bv v JOIN bs s ON s.account = v.account AND s.id = v.id
    WHERE v.exposed
      AND v.first_crawl < coalesce(s.until_crawl, 9223372036854775807)
      AND s.first_crawl < coalesce(v.until_crawl, 9223372036854775807)
), flagged AS (
    SELECT *,
           CASE WHEN coalesce(lag(until_crawl) OVER w = from_crawl, FALSE) THEN 0 ELSE 1 END
               AS starts
    FROM segments
    WINDOW w AS (PARTITION BY rule, account, id ORDER BY from_crawl)
), runs AS (
    SELECT *, sum(starts) OVER (PARTITION BY rule, account, id ORDER BY from_crawl) AS run
    FROM flagged
), stopped_flagged AS (
    SELECT *,
           CASE WHEN coalesce(lag(until_crawl) OVER w = first_crawl AND lag(stopped) OVER w,
                              FALSE) THEN 0 ELSE 1 END AS starts
    FROM (SELECT *, status = 'stopped' AS stopped FROM iv WHERE $check_stopped)
    WINDOW w AS (PARTITION BY account, id ORDER BY first_crawl)
), stopped_runs AS (
    SELECT account, id, arg_max(region, first_crawl) AS region,
           min(first_crawl) AS start_crawl,
           CASE WHEN bool_or(until_crawl IS NULL) THEN NULL ELSE max(until_crawl) END
               AS until_crawl
    FROM (SELECT *, sum(starts) OVER (PARTITION BY account, id ORDER BY first_crawl) AS run
          FROM stopped_flagged)
    WHERE stopped
    GROUP BY account, id, run
), stopped_due AS (
    SELECT r.*, c.t AS since_t,
           c.t + to_microseconds(CAST(1e6 * $max_stopped AS BIGINT)) AS due_t
    FROM stopped_runs r JOIN icrawls c ON c.account = r.account AND c.crawl_id = r.start_crawl
), stopped_found AS (
    -- The first crawl at or after the due time, if it still saw the instance stopped.
    SELECT d.*, c.crawl_id AS from_crawl
    FROM stopped_due d ASOF JOIN icrawls c ON c.account = d.account AND c.t >= d.due_t
    WHERE c.crawl_id < coalesce(d.until_crawl, 9223372036854775807)
)
SELECT rule, kind, account, id, arg_max(region, from_crawl) AS region,
       min(from_crawl) AS from_crawl,
       CASE WHEN bool_or(until_crawl IS NULL) THEN NULL ELSE max(until_crawl) END
           AS until_crawl,
       arg_max(detail, from_crawl) AS detail
FROM runs
GROUP BY rule, kind, account, id, run
UNION ALL
SELECT 'instance.stopped_too_long', 'instance', account, id, region, from_crawl, until_crawl,
       'stopped since ' || strftime(since_t, '%Y-%m-%dT%H:%M:%SZ')
FROM stopped_found
ORDER BY account, rule, id, from_crawl

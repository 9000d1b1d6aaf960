-- Buckets exposed at the window's end (is_exposed: anything but exactly 'private'), with
-- the start of their current exposure (at_least: it may have begun before the account's
-- first bucket crawl). Needs temp tables state_buckets and exposures.
SELECT b.account, b.id, b.region, b.access, b.size_bytes, e.start AS public_since,
       e.at_least
FROM state_buckets b
JOIN exposures e ON e.account = b.account AND e.id = b.id AND e."end" IS NULL
ORDER BY public_since, b.account, b.id

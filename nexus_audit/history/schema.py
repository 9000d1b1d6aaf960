"""The history's schema: record columns, the staging tables and the ordered migrations.

History is kept as changes, not copies; see :mod:`nexus_audit.history.store` for the
model (logs of versions and removal markers, with views of the same names as schema 2).
"""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from typing import Final

from nexus_audit.domain.model import Bucket, Instance

Record = Instance | Bucket
INSTANCE_COLUMNS: Final = Instance._fields
BUCKET_COLUMNS: Final = Bucket._fields
#: Bucket columns kept in ``bucket_versions`` (size lives in ``bucket_sizes``).
BUCKET_VERSION_COLUMNS: Final = tuple(c for c in BUCKET_COLUMNS if c != "size_bytes")

STAGING_DDL: Final = (
    """CREATE TABLE instances (id VARCHAR NOT NULL, name VARCHAR, status VARCHAR,
        region VARCHAR, cpu INTEGER, memory_gb DOUBLE, plan VARCHAR, tags VARCHAR,
        created_at VARCHAR, extra VARCHAR)""",
    """CREATE TABLE buckets (id VARCHAR NOT NULL, region VARCHAR, size_bytes BIGINT,
        access VARCHAR, created_at VARCHAR, tags VARCHAR, extra VARCHAR)""",
)

#: The meta key of the mark a compaction leaves on a log (:func:`versions_view`).
COMPACTED_KEY: Final = "compacted:{log}"


def versions_view(view: str, log: str, columns: tuple[str, ...]) -> str:
    """``CREATE OR REPLACE VIEW`` of one version view over its log (schema 6).

    The same rows as schema 3's views: a closed row as it is; an open row ends at the next
    row of its id (a version or a removal marker), until compaction writes that in. Each
    compaction leaves a mark in ``meta`` (:data:`COMPACTED_KEY`): the log's last
    ``first_crawl`` when it ran, at or before which every row is compacted. So an open
    row of an id without a row after the mark is its id's current version, as it is; only
    the ids with rows after the mark (none at rest, a crawl's changes between a commit and
    its compaction) need the window that finds the next row. Schema 3's views ran that
    window over every open row: at a million instances, a sort of a million rows each
    time a query read the view. Without a mark (a log never compacted since schema 6),
    every row counts as after it: the window over every open row, as before.
    """
    cols = ", ".join(columns)
    mark = (f"coalesce((SELECT CAST(value AS BIGINT) FROM meta "
            f"WHERE key = '{COMPACTED_KEY.format(log=log)}'), -1)")
    # Uncorrelated semi and anti joins on the (few) ids after the mark: a correlated
    # EXISTS made DuckDB list every distinct id of the log first.
    after_mark = (f"(SELECT account, id FROM {log} "
                  f"WHERE until_crawl IS NULL AND first_crawl > {mark}) r "
                  f"ON r.account = l.account AND r.id = l.id")
    return f"""CREATE OR REPLACE VIEW {view} AS
        SELECT {cols}, until_crawl
        FROM {log} WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
        UNION ALL
        SELECT {cols}, until_crawl
        FROM {log} l ANTI JOIN {after_mark}
        WHERE l.until_crawl IS NULL AND l.removed IS NOT TRUE
        UNION ALL
        SELECT {cols}, until_crawl FROM (
            SELECT {cols}, removed,
                   lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                       AS until_crawl
            FROM {log} l SEMI JOIN {after_mark}
            WHERE l.until_crawl IS NULL)
        WHERE removed IS NOT TRUE"""


#: Per version view: its log and its columns but until_crawl (schema 3's, in order;
#: written out, as a released migration's text must never change).
VERSION_VIEWS: Final = {
    "instance_versions": ("instance_log", (
        "account", "id", "name", "status", "region", "cpu", "memory_gb", "plan", "tags",
        "created_at", "extra", "first_crawl")),
    "bucket_versions": ("bucket_log", (
        "account", "id", "region", "access", "created_at", "tags", "extra", "first_crawl")),
    "bucket_sizes": ("bucket_size_log", ("account", "id", "size_bytes", "first_crawl")),
}
#: Ordered schema migrations: (version, statements). Never edit a released entry; append.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (1, (
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        """CREATE TABLE crawls (
            crawl_id BIGINT PRIMARY KEY,
            account VARCHAR NOT NULL,
            kinds VARCHAR[] NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL,
            status VARCHAR NOT NULL,
            instances BIGINT NOT NULL,
            buckets BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            retries BIGINT NOT NULL,
            total_mismatch VARCHAR,
            error VARCHAR,
            error_code VARCHAR,
            request_id VARCHAR,
            requests_by_endpoint JSON)""",
        """CREATE TABLE instance_versions (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, name VARCHAR, status VARCHAR,
            region VARCHAR, cpu INTEGER, memory_gb DOUBLE, plan VARCHAR, tags VARCHAR,
            created_at VARCHAR, extra VARCHAR,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
        """CREATE TABLE bucket_versions (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, region VARCHAR, access VARCHAR,
            created_at VARCHAR, tags VARCHAR, extra VARCHAR,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
        """CREATE TABLE bucket_sizes (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, size_bytes BIGINT NOT NULL,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
    )),
    # v2: one row per (crawl, kind): the crawl sequence every per-kind rule walks.
    (2, (
        """CREATE VIEW kind_crawls AS
            SELECT crawl_id, account, unnest(kinds) AS kind, started_at, finished_at, status
            FROM crawls""",
    )),
    # v3: commits only append. Each version table becomes a log (plus removal markers) and
    # a view of the same name and columns; the view ends an open version at the next row
    # of its id (a version or a marker) until compaction writes that into until_crawl.
    (3, (
        "ALTER TABLE instance_versions RENAME TO instance_log",
        "ALTER TABLE instance_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_versions RENAME TO bucket_log",
        "ALTER TABLE bucket_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_sizes RENAME TO bucket_size_log",
        "ALTER TABLE bucket_size_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_size_log ALTER COLUMN size_bytes DROP NOT NULL",  # markers
        """CREATE VIEW instance_versions AS
            SELECT account, id, name, status, region, cpu, memory_gb, plan, tags, created_at,
                   extra, first_crawl, until_crawl
            FROM instance_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, name, status, region, cpu, memory_gb, plan, tags, created_at,
                   extra, first_crawl, until_crawl FROM (
                SELECT account, id, name, status, region, cpu, memory_gb, plan, tags,
                       created_at, extra, first_crawl, removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM instance_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
        """CREATE VIEW bucket_versions AS
            SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                   until_crawl
            FROM bucket_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                   until_crawl FROM (
                SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                       removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM bucket_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
        """CREATE VIEW bucket_sizes AS
            SELECT account, id, size_bytes, first_crawl, until_crawl
            FROM bucket_size_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, size_bytes, first_crawl, until_crawl FROM (
                SELECT account, id, size_bytes, first_crawl, removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM bucket_size_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
    )),
    # v4: a clock that stepped back. A crawl that finished before crawls already committed
    # for its account and kinds re-dates them to its own end (their observation cannot have
    # been later than a crawl committed after them); each correction is kept here.
    (4, (
        """CREATE TABLE clock_skews (
            crawl_id BIGINT NOT NULL,
            account VARCHAR NOT NULL,
            recorded_started_at TIMESTAMPTZ NOT NULL,
            recorded_finished_at TIMESTAMPTZ NOT NULL,
            corrected_to TIMESTAMPTZ NOT NULL,
            detected_by_crawl BIGINT NOT NULL,
            detected_at TIMESTAMPTZ NOT NULL)""",
    )),
    # v5: the evidence chain (nexus_audit/history/chain.py): each crawl's manifest in its
    # own row, written by the INSERT that records the crawl (no statement more a commit);
    # a database that held history before the chain gets a genesis in meta. The view
    # lists the chain in order (seq 0: the genesis).
    (5, (
        "ALTER TABLE crawls ADD COLUMN manifest_seq BIGINT",
        "ALTER TABLE crawls ADD COLUMN manifest_hash VARCHAR",
        "ALTER TABLE crawls ADD COLUMN manifest VARCHAR",
        """CREATE VIEW manifests AS
            SELECT manifest_seq AS seq, crawl_id, manifest_hash AS hash, manifest AS body
            FROM crawls WHERE manifest IS NOT NULL
            UNION ALL
            SELECT 0, NULL, sha256(value), value FROM meta WHERE key = 'chain_genesis'""",
    )),
    # v6: the version views as schema 3's, cheaper at rest (see versions_view).
    (6, tuple(versions_view(view, log, columns)
              for view, (log, columns) in VERSION_VIEWS.items())),
)
#: The migration that starts the evidence chain (a database migrated across it gets a
#: genesis manifest over the history it already holds).
CHAIN_MIGRATION: Final = 5
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

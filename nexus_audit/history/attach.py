"""Attaching one DuckDB file to a hub cursor, and asking another process for a turn: the
steps :class:`nexus_audit.history.duckfile.DuckFiles` is made of, which keep no state.

Why it is done this way (markers, header checks, retries) is told in
:mod:`nexus_audit.history.duckfile`'s docstring.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from pathlib import Path
from typing import Final

import duckdb

from nexus_audit.errors import StoreError

#: A marker touched within this long means another process is waiting for the file.
MARKER_FRESH: Final = 1.0
#: The longest a writer defers attaching to a waiting process.
YIELD_AT_MOST: Final = 1.0

_LOCK_CONFLICT: Final = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)
_DUCKDB_MAGIC: Final = b"DUCK"


def sql_literal(text: str) -> str:
    """A SQL string literal (ATTACH takes no bound parameters; paths are ours, not users')."""
    return "'" + text.replace("'", "''") + "'"


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` says another process holds the file."""
    return isinstance(exc, duckdb.Error) and bool(_LOCK_CONFLICT.search(str(exc)))


# -- asking another process for a turn -----------------------------------------------------
# Real time throughout, whatever clock the caller was given: these compare with file times
# another process wrote, and wait for that process.


def marker(path: Path) -> Path:
    """The file another process touches while it waits for ``path``."""
    return path.with_name(path.name + ".wait")


def _touch_marker(path: Path) -> None:
    # Best effort: a read-only directory only loses the fairness, never the read.
    with contextlib.suppress(OSError):
        marker(path).touch()


def _clear_marker(path: Path) -> None:
    with contextlib.suppress(OSError):
        marker(path).unlink(missing_ok=True)


def someone_waits(path: Path) -> bool:
    """Whether another process touched the file's marker recently."""
    try:
        touched = marker(path).stat().st_mtime
    except OSError:
        return False
    return time.time() - touched < MARKER_FRESH


def yield_to_waiters(path: Path) -> None:
    """Give a process waiting for ``path`` its turn before attaching (bounded)."""
    deadline = time.monotonic() + YIELD_AT_MOST
    while someone_waits(path) and time.monotonic() < deadline:
        time.sleep(0.01)


# -- attaching -----------------------------------------------------------------------------


def check_header(path: Path) -> None:
    """Refuse, without writing, a file that is not a DuckDB database (a missing one is fine).

    Opens and closes the file: call it only while this process has it attached nowhere
    (closing a descriptor drops the process's DuckDB lock on the file).
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
        raise StoreError(f"{path} is not a DuckDB database; it was left untouched "
                         "(point NEXUS_AUDIT_DB at another file)")


def attach(cursor: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool,
           timeout: float) -> str:
    """Attach ``path`` on ``cursor`` under a new alias (returned), retrying while another
    process holds it, for ``timeout`` seconds of real time (it waits for that process).

    Checks the header first: call it never while this process has ``path`` attached.
    """
    check_header(path)
    alias = "db_" + uuid.uuid4().hex[:12]
    mode = " (READ_ONLY)" if read_only else ""
    deadline = time.monotonic() + timeout
    delay = 0.005
    waited = False
    try:
        while True:
            try:
                cursor.execute(f"ATTACH {sql_literal(str(path))} AS {alias}{mode}")
                return alias
            except duckdb.Error as exc:
                if not is_lock_conflict(exc):
                    raise StoreError(f"cannot open {path}: {exc}") from None
                if time.monotonic() >= deadline:
                    raise StoreError(f"database busy: {path} stayed locked by another process "
                                     f"for {timeout:g}s") from None
                _touch_marker(path)
                waited = True
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
    finally:
        if waited:
            _clear_marker(path)


def detach(cursor: duckdb.DuckDBPyConnection, alias: str, *, settled: bool) -> None:
    """Detach (which checkpoints) and close the cursor; errors are not the caller's."""
    try:
        if not settled:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            with contextlib.suppress(duckdb.Error):
                cursor.execute("USE memory")
        with contextlib.suppress(duckdb.Error):
            cursor.execute(f"DETACH {alias}")
    finally:
        with contextlib.suppress(duckdb.Error):
            cursor.close()

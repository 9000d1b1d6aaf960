"""Directories a process owns while it lives (copies of databases, DuckDB's spill files),
and the removal of those whose owner is gone.

A process killed outright (``kill -9``, the OOM killer) cannot remove what it made. So an
owner holds an exclusive ``flock`` on its directory for as long as it lives, and the next
process making a directory of the same kind (same parent, same prefix) removes every
sibling whose lock it can take. The kernel drops a lock with its process, whatever the PID
namespace (two containers sharing a volume or a ``/tmp``), so a live owner's directory is
never touched, and a process id used again is never taken for the owner. A new directory
is made under another name and renamed once locked, so no other process sees it unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, eq=False)
class OwnedDirectory:
    """A directory this process made and holds the lock of (``fd``) until released."""

    path: Path
    fd: int | None

    def release(self, *, contents: bool = False) -> bool:
        """Remove the directory, with what it holds if ``contents``, else only if it is
        empty, and give up its lock once it is gone. Whether it is gone (a directory left
        keeps its lock; the next process removes it once this one ended)."""
        if self.fd is None:
            return True
        try:
            if contents:
                shutil.rmtree(self.path)
            else:
                self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        os.close(self.fd)
        self.fd = None
        return True


def make(parent: Path, prefix: str, *, tag: str = "") -> OwnedDirectory:
    """A new directory ``<parent>/<prefix><tag><random>``, locked by this process, after
    removing the siblings named ``<prefix>*`` whose owners are gone."""
    for stale in parent.glob(prefix + "*"):
        remove_if_abandoned(stale)
    # Made under a name outside the prefix, renamed once locked.
    made = Path(tempfile.mkdtemp(prefix=f".new-{prefix}", dir=parent))
    fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else can hold it
        directory = made.with_name(prefix + tag + made.name[-8:])  # mkdtemp's random part
        made.rename(directory)
    except OSError:
        os.close(fd)
        shutil.rmtree(made, ignore_errors=True)
        raise
    return OwnedDirectory(directory, fd)


def remove_if_abandoned(directory: Path) -> bool:
    """Remove a directory whose owner is gone (its lock can be taken); leave it when its
    owner lives or it cannot be opened (another user's). Whether it was removed."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its owner is alive
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
        return not directory.exists()
    finally:
        os.close(fd)

"""Settings files read with a bound: a path that names an endless or huge file fails.

A configuration, key, token, pricing or policy file is small. A setting that names
``/dev/zero``, ``/dev/urandom``, a log file or a disk image by mistake used to be read
whole: the command hung or ran out of memory instead of saying what is wrong. Reading
stops one byte past the bound; a larger file is an :class:`OSError` (``EFBIG``), which
every caller already reports as "cannot read PATH: REASON".
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Final

MAX_SETTINGS_FILE_BYTES: Final = 16 * 1024 * 1024


def read_bounded(path: str | Path, limit: int = MAX_SETTINGS_FILE_BYTES) -> bytes:
    """The bytes of the file at ``path``; OSError (EFBIG) when it holds more than ``limit``."""
    with Path(path).open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than {limit:,} bytes: not a settings file")
    return data

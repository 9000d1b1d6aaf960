"""Reading a child process's output with a deadline: a test fails instead of hanging.

``pipe.readline()`` blocks until the child writes a line or closes the pipe; a child that
hangs would hang the test run with it. :class:`LineReader` reads the pipe in a daemon
thread and hands lines over through a queue, so every wait has a timeout.
"""

from __future__ import annotations

import queue
import threading
from typing import IO, AnyStr, Generic


class LineReader(Generic[AnyStr]):
    """Every line of ``stream`` (a text or binary pipe), read in a thread until EOF."""

    def __init__(self, stream: IO[AnyStr], *, name: str = "pipe") -> None:
        self._lines: queue.Queue[AnyStr | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,),
                                        name=f"read-{name}", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[AnyStr]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        finally:
            self._lines.put(None)  # EOF

    def next_line(self, timeout: float, what: str = "a line") -> AnyStr:
        """The next line; AssertionError when none comes within ``timeout`` or at EOF."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None
        if line is None:
            self._lines.put(None)  # EOF stays EOF for the next caller
            raise AssertionError(f"the pipe closed before {what}")
        return line

    def rest(self, timeout: float) -> list[AnyStr]:
        """Every line still to come up to EOF (call once the child exits or is killed)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the pipe stayed open {timeout:g}s after the end")
        lines: list[AnyStr] = []
        while (line := self._lines.get_nowait()) is not None:
            lines.append(line)
        self._lines.put(None)
        return lines

"""A report's long lists held as columns: :class:`Rows` (the answers, made on first use)
and :class:`Table` (the same rows as JSON columns, for the report JSON's encoder).

Thirty days of a million instances give a report 340,000 drift rows and 160,000 stale
instances. Made into answer objects, then into dicts, then read back column by column
by the JSON encoder, they cost seconds of Python; held as the columns DuckDB returns,
the JSON is written from the columns directly (``output/indented.py``) and an answer
object is made only when something reads one (the table, Markdown, CSV and HTML
outputs do; ``report --format json`` does not).
"""

from __future__ import annotations

import contextlib
import gc
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector held off while a report's rows are read or made: the rows
    DuckDB hands over (half a million tuples for 30 days of a million instances) and the
    answers made of them hold no cycles, yet each batch of new ones set it scanning every
    object alive, the rows so far included (0.45 s of CPU in a 3.5 s report). It runs
    again, as before, afterwards (unless something else had turned it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Rows(Sequence[T], Generic[T]):
    """A read-only sequence of answers (``Drift``, ``StaleInstance``), held as columns in
    the order of the answer's fields; ``make(*row)`` makes one (the answer's class).

    It reads as the tuple of its answers: equal to that tuple (and to ``Rows`` of the same
    answers), hashed like it, ``+`` a tuple gives a tuple. The answers are made once, on
    the first read of one of them.
    """

    __slots__ = ("_columns", "_items", "_len", "_make")

    def __init__(self, make: Callable[..., T], columns: Sequence[Sequence[Any]]) -> None:
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self._make = make
        self._columns = tuple(columns)
        self._len = lengths.pop() if lengths else 0
        self._items: tuple[T, ...] | None = None

    @property
    def columns(self) -> tuple[Sequence[Any], ...]:
        """The columns, in the order of the answer's fields."""
        return self._columns

    def items(self) -> tuple[T, ...]:
        """The answers, as a tuple (made on the first call)."""
        if self._items is None:
            with collector_paused():  # hundreds of thousands of objects, no cycle among them
                self._items = tuple(map(self._make, *self._columns)) if self._columns else ()
        return self._items

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...

    def __getitem__(self, index: int | slice) -> T | tuple[T, ...]:
        return self.items()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return self.items() == other.items()
        if isinstance(other, tuple):
            return self.items() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.items())

    def __add__(self, other: Sequence[T]) -> tuple[T, ...]:
        return self.items() + tuple(other)

    def __radd__(self, other: Sequence[T]) -> tuple[T, ...]:
        return tuple(other) + self.items()

    def __repr__(self) -> str:
        return repr(self.items())

    def __reduce__(self) -> tuple[Any, ...]:
        # A report built in a worker process is pickled back: its columns go, not answers.
        return (Rows, (self._make, tuple(tuple(c) for c in self._columns)))


def columns_of(items: Sequence[Any], fields: Sequence[str]) -> tuple[Sequence[Any], ...]:
    """The columns of ``items`` (answers, or :class:`Rows` of them) by field name."""
    if isinstance(items, Rows):
        return items.columns
    return tuple([getter(item) for item in items]
                 for getter in map(operator.attrgetter, fields))


@dataclass(frozen=True, slots=True)
class Table:
    """Rows of one JSON object shape, as columns: ``keys`` in order, one column of JSON
    values (str, int, float, bool, None, or lists/dicts of them) per key."""

    keys: tuple[str, ...]
    columns: tuple[Sequence[Any], ...]

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.columns):
            raise ValueError("a table needs a column for each of its (non-empty) keys")
        if len({len(c) for c in self.columns}) != 1:
            raise ValueError("a table's columns must be of one length")

    def __len__(self) -> int:
        return len(self.columns[0])

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts (what ``json`` writes as this table's list of objects)."""
        return [dict(zip(self.keys, row, strict=True)) for row in zip(*self.columns, strict=True)]


def mapped(column: Sequence[Any], convert: Callable[[Any], Any]) -> list[Any]:
    """``convert`` of each value of ``column``, called once per distinct value (a long
    list's times are the few times of its crawls; its prices, a few shapes' prices).
    Values equal as dict keys must convert alike (``convert`` of ``0.0`` and ``-0.0``,
    of ``1`` and ``True``): the callers' conversions (times to ISO text, money) do."""
    done = {value: convert(value) for value in set(column)}
    return list(map(done.__getitem__, column))

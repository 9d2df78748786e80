"""What a batch carries from its planning to its apply: the payload of `Batch`.

A delete batch carries the predicate it was planned with and how its rows are bounded (keys, a
key range, a time range, a tie); an anonymize batch the rows it read. Applying a batch re-checks
that predicate, so a row held or changed since it was planned is left alone.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection

from retentiond.stores.sql.predicates import Predicate


@dataclass(frozen=True)
class Deletion:
    """A delete batch's payload: the rows matching `where` among `keys`, or in the walk's key
    range `walk`, or with a time up to `upto`, or the first `planned` with the time `tied`, or
    (keyless) the first `planned` rows, in time order when `ordered`."""

    where: Predicate
    keys: list[Any] | None = None
    walk: tuple[Any, Any] | None = None
    ordered: bool = True
    upto: Any = None
    tied: Any = None
    # Plans the batch after this one, in this one's transaction once its rows are deleted: one
    # round trip and one transaction fewer per batch than planning it on its own.
    ahead: Callable[[Connection], Any] | None = None


@dataclass(frozen=True)
class RangePlan:
    """A time_index batch as its planning summary found it: `count` rows from `first` to `last`,
    either all rows up to `upto` or `count` of the rows at `tied`; `more` when rows may follow."""

    count: int
    first: Any
    last: Any
    upto: Any = None
    tied: Any = None
    more: bool = True


@dataclass
class Segments:
    """The key walk's rows to delete in key order, as the survey split them: segment i holds
    `rows[i]` rows with keys above the previous segment's highest (from `low` for the first) up
    to `high[i]`, their times on the days `first[i]` to `last[i]` (ordinals; 0: not known).
    Kept compact, a few bytes per segment, so that a huge table's plan stays small."""

    low: Any = None
    high: list[Any] = field(default_factory=list)
    rows: array[int] = field(default_factory=lambda: array("q"))
    first: array[int] = field(default_factory=lambda: array("l"))
    last: array[int] = field(default_factory=lambda: array("l"))

    def add(self, low: Any, high: Any, rows: int, span: tuple[date, date] | None) -> None:
        if self.low is None:
            self.low = low
        self.high.append(high)
        self.rows.append(int(rows))
        self.first.append(span[0].toordinal() if span else 0)
        self.last.append(span[1].toordinal() if span else 0)

    def __len__(self) -> int:
        return len(self.high)

    def span(self, start: int, stop: int) -> tuple[date, date] | None:
        """The first and last day of segments start to stop - 1, if every one's is known."""
        firsts, lasts = self.first[start:stop], self.last[start:stop]
        if not firsts or 0 in firsts:
            return None
        return date.fromordinal(min(firsts)), date.fromordinal(max(lasts))


@dataclass(frozen=True)
class Rewrite:
    """An anonymize batch's payload: each row's key (None without one) and the values read
    (the time column first, then the transformed columns), and the predicate they matched."""

    where: Predicate
    rows: list[tuple[Any, tuple[Any, ...]]]

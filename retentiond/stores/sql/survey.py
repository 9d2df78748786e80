"""Counting a table's rows: total, expired, held (per hold), undated, and the oldest time.

With an index on the time column, each count reads only its range; without one, the counts are
one pass over the table. For the key walk, the survey also finds the key range of the unheld
expired rows, so the batches need not scan again.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.stores.base import Survey
from retentiond.stores.db.timecols import stored_instant
from retentiond.stores.sql.holds import HeldRows
from retentiond.stores.sql.predicates import Predicate, bind

# Rows whose time is NULL or no date at all, as counted in Survey.skipped: never expired.
UNDATED = "undated"


class Surveying(HeldRows):
    """The survey of expired rows and the oldest stored time."""

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        walk = self.strategy == "key_walk"
        survey, walk_range = self._survey(self._expired(cutoff), holds, walk)
        if walk:
            self._walk_range = (cutoff, holds, walk_range)
        return survey

    def _survey(
        self, expired: Predicate, holds: Holds, walk: bool = False
    ) -> tuple[Survey, tuple[Any, Any]]:
        """Counts of `expired` rows, held ones per hold, in one pass; and for the key walk the
        key range of the unheld ones."""
        layout = self._require_layout()
        key = layout.key
        each = [self._hold_predicate(index, scope) for index, scope in enumerate(holds.scopes)]
        held = Predicate.any_of(each)
        # With an index on the time column, each count below reads only its range. Without
        # one, every query reads the whole table: then they are one pass, each count limited
        # to the expired rows by its CASE (at 2,000,000 FreePBX cel rows, a third of the time).
        one_pass = layout.strategy != "time_index"
        among = f"{expired.sql} AND " if one_pass else ""
        columns = [f"COUNT(CASE WHEN {expired.sql} THEN 1 END)" if one_pass else "COUNT(*)"]
        columns += [f"COUNT(CASE WHEN {among}{part.sql} THEN 1 END)" for part in each]
        if held is not None:
            columns.append(f"COUNT(CASE WHEN {among}{held.sql} THEN 1 END)")
        if walk:
            unheld = "1 = 1" if held is None else held.negated().sql
            columns += [
                f"{edge}(CASE WHEN {among}{unheld} THEN {key} END)" for edge in ("MIN", "MAX")
            ]

        guard = self._time_guard()
        undated = f"{self._time_sql} IS NULL OR {self._time_sql} < :floor" + (
            f" OR NOT ({guard})" if guard else ""
        )
        whole = ["COUNT(*)", f"COUNT(CASE WHEN {undated} THEN 1 END)"]
        if one_pass:
            # Undated are the rows not dated: the guard (date functions on SQLite) once less.
            dated = f"CASE WHEN {self._time_sql} >= :floor" + (f" AND {guard}" if guard else "")
            statement = bind(
                f"SELECT {', '.join(columns)}, COUNT(*), "
                f"COUNT(*) - COUNT({dated} THEN 1 END), "
                f"MIN({dated} THEN {self._time_sql} END) FROM {self._table_sql}",
                expired,
                held,
            )
        else:
            statement = bind(
                f"SELECT {', '.join(columns)} FROM {self._table_sql} WHERE {expired.sql}",
                expired,
                held,
            )
        totals = text(f"SELECT {', '.join(whole)} FROM {self._table_sql}")

        def count(connection: Connection) -> tuple[tuple[Any, ...], tuple[Any, ...], Any]:
            if one_pass:
                row = tuple(connection.execute(*statement).one())
                return row[-3:-1], row[: len(columns)], row[-1]
            all_rows = tuple(connection.execute(totals, {"floor": self._floor()}).one())
            counts = tuple(connection.execute(*statement).one())
            return all_rows, counts, self._read_oldest(connection)

        (total, without_time), counts, oldest = self._db.retrying("surveying", count)
        walk_range: tuple[Any, Any] = (counts[-2], counts[-1]) if walk else (None, None)
        in_range = int(counts[0] or 0)
        held_by: Counter[str] = Counter()
        for scope, number in zip(holds.scopes, counts[1 : 1 + len(each)], strict=True):
            held_by[scope.hold_id] += int(number or 0)
        held_rows = int(counts[1 + len(each)] or 0) if held is not None else 0
        survey = Survey(
            unit="rows",
            total=int(total or 0),
            expired=in_range - held_rows,
            oldest=stored_instant(oldest, self._time_kind, self._zone),
            # NULL (or, stored as text, no date at all): never expires, so never deleted
            skipped={UNDATED: int(without_time)} if without_time else {},
            held=held_rows,
            held_by=dict(held_by),
        )
        return survey, walk_range

    def _read_oldest(self, connection: Connection) -> Any:
        """The oldest stored time, leaving out zero dates and values that are no dates."""
        guard = self._time_guard()
        return connection.execute(
            text(
                f"SELECT MIN({self._time_sql}) FROM {self._table_sql} "
                f"WHERE {self._time_sql} >= :floor{f' AND {guard}' if guard else ''}"
            ),
            {"floor": self._floor()},
        ).scalar()

"""Counting a table's rows: total, expired, held (per hold), undated, and the oldest time.

With an index on the time column, each count reads only its range; without one, the counts are
one pass over the table. For the key walk, the survey also splits the unheld expired rows into
the key ranges of the batches (one more pass, only when rows are to be deleted), so the batches
need no read of their own.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, text

from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.stores.base import Survey
from retentiond.stores.db.timecols import stored_instant
from retentiond.stores.sql.holds import HeldRows
from retentiond.stores.sql.payloads import Segments
from retentiond.stores.sql.predicates import Predicate, bind
from retentiond.stores.db.sizing import ADAPT_MIN_ROWS

# The key walk's segments (see Surveying._read_segments): at most this many per run, about 60
# bytes each (6 MB: 100 million rows to delete in batches of 1000). Beyond that many batches'
# rows, each batch takes proportionally more, so the plan stays this small whatever the size.
MAX_SEGMENTS = 100_000

# Rows whose time is NULL or no date at all, as counted in Survey.skipped: never expired.
UNDATED = "undated"


class Surveying(HeldRows):
    """The survey of expired rows and the oldest stored time."""

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        walk = self.strategy == "key_walk"
        expired = self._expired(cutoff)
        survey = self._survey(expired, holds)
        if walk:
            self._walk_range = None
            segments = Segments()
            if survey.expired:
                # The key ranges of all batches at once (none left: the verifying survey)
                where = self._unheld(expired, holds)
                segments = self._db.retrying(
                    "surveying", partial(self._read_segments, where, survey.expired)
                )
            self._walk_range = (cutoff, holds, segments)
        return survey

    def _read_segments(
        self, where: Predicate, expected: int | None, connection: Connection
    ) -> Segments:
        """The rows matching `where` in key order, split into segments of the batch size (a
        quarter of it when the size adapts, so batches can follow it), each read as one row:
        its lowest and highest key, its rows, their first and last time. At most MAX_SEGMENTS
        of them (larger segments when there are more rows), streamed and kept compact, so
        memory stays flat however large the table. One pass over the table, like the survey's
        counts."""
        size = self._batch_size
        if self.batch_time is not None:
            size = max(size // 4, ADAPT_MIN_ROWS)
        if expected is None:  # not surveyed: count first, to bound the segments
            count = bind(f"SELECT COUNT(*) FROM {self._table_sql} WHERE {where.sql}", where)
            expected = int(connection.execute(*count).scalar() or 0)
        size = max(size, 1, -(-expected // MAX_SEGMENTS))
        key, time_sql = self._require_layout().key, self._time_sql
        statement, params = bind(
            f"SELECT MIN(s.k), MAX(s.k), COUNT(*), MIN(s.t), MAX(s.t) FROM ("
            f"SELECT {key} AS k, {time_sql} AS t, ROW_NUMBER() OVER (ORDER BY {key}) - 1 AS r "
            f"FROM {self._table_sql} WHERE {where.sql}) AS s "
            f"GROUP BY s.r - s.r % {int(size)} ORDER BY MIN(s.k)",
            where,
        )
        segments = Segments()
        rows = connection.execute(statement, params, execution_options={"stream_results": True})
        for low, high, count, first, last in rows:
            segments.add(low, high, count, self._day_span((first, last)))
        return segments

    def _survey(self, expired: Predicate, holds: Holds) -> Survey:
        """Counts of `expired` rows, held ones per hold, in one pass."""
        layout = self._require_layout()
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
        return survey

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

"""Counting a table's rows: total, expired, held (per hold), undated, and the oldest time.

With an index on the time column, each count reads only its range; without one, the counts are
one pass over the table. For the key walk, that same pass also splits the unheld expired rows
into the key ranges of the batches (`_walk_pass`), so the batches need no read of their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, text

from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.stores.base import Survey
from retentiond.stores.db.sizing import ADAPT_MIN_ROWS
from retentiond.stores.db.timecols import stored_instant
from retentiond.stores.sql.holds import HeldRows
from retentiond.stores.sql.payloads import Segments
from retentiond.stores.sql.predicates import Predicate, bind

# The key walk's segments (see Surveying._walk_pass): at most this many per run, about 60
# bytes each (6 MB: 100 million rows to delete in batches of 1000). Beyond that many batches'
# rows, each batch takes proportionally more, so the plan stays this small whatever the size.
MAX_SEGMENTS = 100_000

# Rows whose time is NULL or no date at all, as counted in Survey.skipped: never expired.
UNDATED = "undated"


class Surveying(HeldRows):
    """The survey of expired rows and the oldest stored time."""

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        expired = self._expired(cutoff)
        if self.strategy != "key_walk":
            return self._survey(expired, holds)
        self._walk_range = None
        if self._walked:
            # After a walk the survey verifies what it left: its counts alone, the pass without
            # the grouping (a third of the time at 50 million rows). Should rows be left, the
            # next walk reads its ranges itself.
            self._walked = False
            return self._survey(expired, holds)
        survey, segments = self._db.retrying("surveying", partial(self._walk_pass, expired, holds))
        self._walk_range = (cutoff, holds, segments)
        return survey

    def _walk_pass(
        self, expired: Predicate, holds: Holds, connection: Connection
    ) -> tuple[Survey, Segments]:
        """The survey's counts and the key walk's segments in one pass over the table.

        The table is read in groups of `width` consecutive key values (integer keys, from the
        lowest): each group answers with its counts (all rows, undated, expired, held per hold,
        the oldest dated time) and with its rows to delete (expired, not held): their lowest
        and highest key, how many, their first and last time. The counts add up to the survey;
        the groups with rows to delete are the segments, each of at most `width` rows. The
        width is about a quarter of the batch size (batches take whole segments up to their
        size, so they can follow a size that adapts; a fixed size is a multiple of it, so
        batches of consecutive keys are full) or more where the keys span more than MAX_SEGMENTS
        groups: the plan stays a few MB however large the table. A GROUP BY over the key, no
        window function, no sort of the rows: one read of the table, as the counts alone."""
        key = self._require_layout().key
        low, high = connection.execute(
            text(f"SELECT MIN({key}), MAX({key}) FROM {self._table_sql}")
        ).one()
        size = self._batch_size
        if self.batch_time is not None:
            size = max(size // 4, ADAPT_MIN_ROWS)
        width = size if self.batch_time is not None else _quarter(size)
        if low is not None:
            width = max(width, -(-(int(high) - int(low) + 1) // MAX_SEGMENTS))
        each = [self._hold_predicate(index, scope) for index, scope in enumerate(holds.scopes)]
        held = Predicate.any_of(each)
        deletable = self._unheld(expired, holds)
        time_sql = self._time_sql
        guard = self._time_guard()
        dated = f"CASE WHEN {time_sql} >= :floor" + (f" AND {guard}" if guard else "")
        gone = f"CASE WHEN {deletable.sql} THEN"
        columns = [f"COUNT(CASE WHEN {expired.sql} THEN 1 END)"]
        columns += [f"COUNT(CASE WHEN {expired.sql} AND {part.sql} THEN 1 END)" for part in each]
        if held is not None:
            columns.append(f"COUNT(CASE WHEN {expired.sql} AND {held.sql} THEN 1 END)")
        columns += [
            "COUNT(*)",
            f"COUNT(*) - COUNT({dated} THEN 1 END)",
            f"MIN({dated} THEN {time_sql} END)",
            f"MIN({gone} {key} END)",
            f"MAX({gone} {key} END)",
            f"COUNT({gone} 1 END)",
            f"MIN({gone} {time_sql} END)",
            f"MAX({gone} {time_sql} END)",
        ]
        # The lowest key and the width are integers read or computed here, not input
        group = self._dialect.integer_divide(f"({key} - {int(low or 0)})", str(int(width)))
        statement, params = bind(
            f"SELECT {', '.join(columns)}, {group} AS walk_group FROM {self._table_sql} "
            "GROUP BY walk_group ORDER BY walk_group",
            expired,
            held,
            deletable,
            floor=self._floor(),
        )
        counted = len(columns) - 8
        counts = [0] * counted
        total = undated = 0
        oldest: Any = None
        segments = Segments()
        rows = connection.execute(statement, params, execution_options={"stream_results": True})
        for row in rows:
            for index in range(counted):
                counts[index] += int(row[index] or 0)
            group_total, group_undated, group_oldest, first_key, last_key, gone_rows = row[
                counted : counted + 6
            ]
            total += int(group_total or 0)
            undated += int(group_undated or 0)
            if group_oldest is not None and (oldest is None or group_oldest < oldest):
                oldest = group_oldest
            if gone_rows:
                span = self._day_span((row[counted + 6], row[counted + 7]))
                segments.add(first_key, last_key, int(gone_rows), span)
        return self._survey_of(total, undated, counts, oldest, holds), segments

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
        return self._survey_of(total, without_time, counts, oldest, holds)

    def _survey_of(
        self, total: Any, without_time: Any, counts: Sequence[Any], oldest: Any, holds: Holds
    ) -> Survey:
        """The Survey of the counts: expired (in the range, held or not), held per hold (as
        many as `holds.scopes`), held in all (when there are holds)."""
        in_range = int(counts[0] or 0)
        held_by: Counter[str] = Counter()
        scopes = len(holds.scopes)
        for scope, number in zip(holds.scopes, counts[1 : 1 + scopes], strict=True):
            held_by[scope.hold_id] += int(number or 0)
        held_rows = int(counts[1 + scopes] or 0) if scopes else 0
        return Survey(
            unit="rows",
            total=int(total or 0),
            expired=in_range - held_rows,
            oldest=stored_instant(oldest, self._time_kind, self._zone),
            # NULL (or, stored as text, no date at all): never expires, so never deleted
            skipped={UNDATED: int(without_time)} if without_time else {},
            held=held_rows,
            held_by=dict(held_by),
        )

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


def _quarter(size: int) -> int:
    """The largest divisor of `size` that is at most a quarter of it (1 for a prime): batches
    of `size` rows take whole segments and, where the keys are consecutive, come out full."""
    for parts in range(4, size + 1):
        if size % parts == 0:
            return size // parts
    return 1

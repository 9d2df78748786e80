"""Planning delete batches: the strategies that find each batch's rows.

How a batch finds its rows follows from the table, chosen at `open` and shown by `describe`:

- time_index: the time column leads an index. Batches take the oldest expired rows along it.
  A planning read returns one summary row (count, first and last time) of the n oldest; the
  batch is every row up to a time, deleted by `time <= that time` under the full predicate,
  with no ORDER BY, LIMIT or key list: the table needs no key (FreePBX `cdr` has none), the
  binary log (MIXED) holds one statement instead of every row, and no row is sent back. Ties
  at the batch's edge are counted by the plan; when they would take it past n the batch stops
  before them, and when n rows share one time it deletes n of those (LIMIT, or their keys).
- key_walk: no index on the time column, but an integer primary key (FreePBX `cel`,
  cdr_sqlite3_custom's AcctId). The survey's one pass over the table also splits the rows to
  delete into segments of consecutive keys (their key range, count, first and last time; one
  row per segment, so memory stays flat). Each batch then deletes the next key range under the
  full predicate: no read per batch.
- scan: neither. Correct but every batch reads the table; `describe` says which index fixes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection

from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch
from retentiond.stores.db.rows import read_rows
from retentiond.stores.sql.payloads import Deletion, RangePlan, Segments
from retentiond.stores.sql.predicates import Predicate, bind
from retentiond.stores.sql.survey import Surveying


class Planning(Surveying):
    """Delete batches along the time index, the key walk or a scan; and a person's rows."""

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        where = self._unheld(self._expired(cutoff), holds)
        strategy = self._require_layout().strategy
        if strategy == "key_walk":
            return self._walk_batches(cutoff, holds, where)
        if strategy == "time_index":
            return self._range_batches(where)
        return self._repeated_batches(where, ordered=True)

    def _range_batches(self, where: Predicate) -> Iterator[Batch]:
        """Each batch: the oldest rows still matching `where` up to a time (see `_plan_range`),
        deleted by that time range. Deleted rows no longer match, so the next plan moves on.

        Forward only: the next batch starts after this one's last time (at it, when this one
        took only some of the rows at that time), so neither its plan nor its delete walks the
        index entries of deleted rows, which InnoDB keeps (delete-marked) until its purge thread
        catches up. (Reading the next plan on a second connection while the delete runs was
        measured slower: the two compete for the server's CPU and the index's pages.)
        """
        number = 0
        ahead = where
        plan = self._db.retrying("planning a batch", partial(self._plan_range, ahead))
        while plan is not None:
            number += 1
            following = where & self._after(plan) if plan.more else None
            payload = Deletion(
                ahead,
                upto=plan.upto,
                tied=plan.tied,
                ahead=None if following is None else partial(self._plan_range, following),
            )
            batch = Batch(
                number=number,
                planned=plan.count,
                span=self._day_span((plan.first, plan.last)),
                payload=payload,
            )
            self._applied = None
            yield batch
            applied = self._applied
            if applied is None or applied[0] is not batch:
                return  # not applied (a dry run): the next batch would be this one again
            if following is None or applied[1].deleted == 0:
                return  # none left, or none could be deleted; the verifying survey tells
            ahead = following
            found, plan = self._planned_ahead(payload)
            if not found:
                plan = self._db.retrying("planning a batch", partial(self._plan_range, ahead))

    def _after(self, plan: RangePlan) -> Predicate:
        """The rows after a batch's: past its last time, or from its tied time on."""
        if plan.upto is not None:
            return Predicate(f"{self._time_sql} > :after", {"after": plan.upto})
        return Predicate(f"{self._time_sql} >= :after", {"after": plan.tied})

    def _planned_ahead(self, payload: Deletion) -> tuple[bool, Any]:
        """The next plan `payload`'s batch read in its transaction, if that one committed."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] is not payload:
            return False, None
        return True, ahead[1]

    def _plan_range(self, where: Predicate, connection: Connection) -> RangePlan | None:
        """The next batch, from one summary row of the oldest rows matching `where`.

        Along the time index: the time of the (n+1)th oldest row (`stop`), then the count, first
        and last time of the rows before it. Those are at most n, and the batch is all of them:
        every row matching `where` up to their last time. Without an (n+1)th row, the batch is
        every row left. When all of the first n+1 rows have the time `stop`, the batch is n of
        the rows at that time. So each batch is at most n rows, and its count and span are those
        of the rows its predicate covers. (Measured on MariaDB 10.11: a third of the time of
        reading the n oldest rows' times twice and counting the rows at the last.)

        Mostly the nth and (n+1)th oldest times differ: then one index read to the (n+1)th row
        says it all (the batch is the n rows up to the nth time; half the time again).
        """
        size = self._batch_size
        table, time_sql = self._table_sql, self._time_sql
        edge = bind(
            f"SELECT COUNT(*), MIN(e.t), CASE WHEN MIN(e.t) < MAX(e.t) THEN 1 ELSE 0 END, "
            # the first row in index order: MIN() under two lower bounds (the floor and the
            # previous batch's end) reads the whole range on MariaDB
            f"(SELECT {time_sql} FROM {table} WHERE {where.sql} ORDER BY {time_sql} LIMIT 1) "
            f"FROM (SELECT {time_sql} AS t FROM {table} WHERE {where.sql} "
            f"ORDER BY {time_sql} LIMIT 2 OFFSET :edge) AS e",
            where,
            edge=size - 1,
        )
        rows, nth, apart, first = connection.execute(*edge).one()
        if rows == 2 and apart:
            return RangePlan(size, first, nth, upto=nth)
        stop = (
            f"SELECT {time_sql} FROM {table} WHERE {where.sql} "
            f"ORDER BY {time_sql} LIMIT 1 OFFSET :n"
        )
        statement = bind(
            f"SELECT COUNT(*), MIN({time_sql}), MAX({time_sql}), MAX(s.stop) "
            f"FROM {table}, (SELECT ({stop}) AS stop) AS s "
            f"WHERE {where.sql} AND (s.stop IS NULL OR {time_sql} < s.stop)",
            where,
            n=size,
        )
        count, first, last, following = connection.execute(*statement).one()
        if count:
            return RangePlan(int(count), first, last, upto=last, more=following is not None)
        # No row before `stop` (and so none to aggregate it from): none matches at all, or the
        # first n+1 share one time.
        following = connection.execute(*bind(stop, where, n=size)).scalar()
        if following is None:
            return None
        return RangePlan(size, following, following, tied=following)

    def _repeated_batches(self, where: Predicate, ordered: bool) -> Iterator[Batch]:
        """Each batch: the first rows still matching `where` (the oldest, when `ordered` and
        the time column is indexed). Deleted rows no longer match, so the next read moves on."""
        layout = self._require_layout()
        number = 0
        while True:
            size = self._batch_size
            statement = bind(self._plan_read_sql(where, ordered), where, n=size)
            rows = self._db.retrying("planning a batch", partial(read_rows, *statement))
            if not rows:
                return
            number += 1
            keys = [row[0] for row in rows] if layout.key is not None else None
            batch = Batch(
                number=number,
                planned=len(rows),
                span=self._day_span(row[-1] for row in rows),
                payload=Deletion(where, keys=keys, ordered=ordered),
            )
            self._applied = None
            yield batch
            applied = self._applied
            if applied is None or applied[0] is not batch:
                # Not applied (a dry run): the next batch would be this one again.
                return
            if len(rows) < size or applied[1].deleted == 0:
                # Fewer than n matched, so none are left; or none could be deleted and the
                # next read would plan the same rows. The verifying survey reports what remains.
                return

    def _walk_batches(self, cutoff: datetime, holds: Holds, where: Predicate) -> Iterator[Batch]:
        """Each batch: the next key range of the survey's segments (see `_walk_pass`),
        enough of them for the batch size; its rows matching `where` are deleted. No planning
        read per batch: the survey's segments say each range's rows and their first and last
        time. Rows changed since are left to the delete's own predicate (checked again on every
        row), and rows past the last range to the verifying survey."""
        segments = self._walk_segments(cutoff, holds)
        if not segments:
            return
        last = segments.low - 1  # integer keys: the walk starts just below the first
        number = position = 0
        while position < len(segments):
            size, start = self._batch_size, position
            rows = segments.rows[position]
            position += 1
            while position < len(segments) and rows + segments.rows[position] <= size:
                rows += segments.rows[position]
                position += 1
            upper = segments.high[position - 1]
            number += 1
            yield Batch(
                number=number,
                planned=rows,
                span=segments.span(start, position),
                payload=Deletion(where, walk=(last, upper)),
            )
            last = upper

    def _walk_segments(self, cutoff: datetime, holds: Holds) -> Segments:
        """The survey's segments of the rows to delete, else read now."""
        cached, self._walk_range = self._walk_range, None
        self._walked = True
        if cached is not None and cached[:2] == (cutoff, holds):
            return cached[2]
        expired = self._expired(cutoff)
        _, segments = self._db.retrying(
            "planning the batches", partial(self._walk_pass, expired, holds)
        )
        return segments

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return self._repeated_batches(self._unheld(self._naming(subject), holds), ordered=False)

"""Anonymizing an SQL table: rewriting the transformed columns of expired rows in batches.

Anonymization walks the expired rows forward by time (then key), one batch at a time, and
rewrites in Python only the rows whose values change. A row is identified by its key where it has
one, and always by the values read (null-safe), so a row the PBX changed since is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Column, Connection, Table
from sqlalchemy import types as sqltypes

from retentiond.errors import StoreError
from retentiond.policy.anonymize import Blank, Transform, TruncateDigits, anonymize_row
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.stores.base import Batch, BatchFailed, BatchResult, Survey
from retentiond.stores.db.retries import RolledBack
from retentiond.stores.db.rows import read_rows
from retentiond.stores.sql.delete import Deleting
from retentiond.stores.sql.payloads import Rewrite
from retentiond.stores.sql.predicates import EVERY_ROW, Predicate, bind

log = structlog.get_logger()

# Why a planned anonymization left a row alone: the PBX changed it after it was read.
CHANGED_SINCE_PLANNED = "changed"


@dataclass(frozen=True)
class _ToNull(Transform):
    """`blank` on a nullable column that takes no text: NULL."""

    name: str = "blank"

    def apply(self, value: Any) -> Any:
        return None

    def describe(self) -> str:
        return "blanked (NULL)"


class Anonymizing(Deleting):
    """Anonymize batches, their rewrite, and the smallest group left alike."""

    def _prepare_anonymize(self, table: Table) -> None:
        transforms = self._store.anonymize or {}
        columns = self._columns(table, transforms, "anonymize")
        self._transforms = {
            column.name: self._fitting(column, transforms[wanted])
            for wanted, column in zip(transforms, columns, strict=True)
        }
        quote = self._preparer().quote
        self._rewritten = [(self._time_name, self._time_sql)] + [
            (name, quote(name)) for name in self._transforms if name != self._time_name
        ]

    def _fitting(self, column: Column[Any], transform: Transform) -> Transform:
        """The transform as this column can take it; refused when its values cannot be written."""
        if isinstance(column.type, sqltypes.String | sqltypes.LargeBinary | sqltypes.NullType):
            return transform
        if isinstance(transform, Blank):
            if column.nullable:
                return _ToNull()
            raise StoreError(
                f"{self.label}: anonymize: column {column.name} holds {column.type!r} values and "
                "cannot be NULL, so blank cannot empty it; use {constant: 0} (or another value "
                "of its type) instead"
            )
        if isinstance(transform, TruncateDigits):
            raise StoreError(
                f"{self.label}: anonymize: column {column.name} holds {column.type!r} values, "
                "not text, and truncate_digits would write x into it; use bucket, constant or "
                "blank instead"
            )
        return transform

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        self._require_anonymize()
        return self._survey(self._expired(cutoff) & self._since(since), holds)

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        self._require_anonymize()
        where = self._unheld(self._expired(cutoff) & self._since(since), holds)
        key = self._require_layout().key
        if key is not None and not self._dialect.key_moves(key):
            return self._rewrite_batches_by_key(where, key)
        # A key that moves when its row is updated (PostgreSQL's ctid): the walk goes by time
        # alone there.
        return self._rewrite_batches_by_time(where, key)

    def _rewrite_batches_by_key(self, where: Predicate, key: str) -> Iterator[Batch]:
        """Forward along (time, key) from the last row read: each row is read once per run,
        whatever the rewrite does to it (a coarsened time only moves back)."""
        time_sql = self._time_sql
        read = f"SELECT {key}, {self._rewritten_sql()} FROM {self._table_sql} WHERE {where.sql}"
        after = (
            f" AND ({time_sql} > :after_time OR ({time_sql} = :after_time AND {key} > :after_key))"
        )
        order = f" ORDER BY {time_sql}, {key} LIMIT :n"
        cursor: dict[str, Any] = {}
        number = 0
        while True:
            size = self._batch_size
            statement = bind(read + (after if cursor else "") + order, where, n=size, **cursor)
            rows = self._db.retrying("planning an anonymize batch", partial(read_rows, *statement))
            if not rows:
                return
            number += 1
            yield self._rewrite_batch(number, where, [(row[0], row[1:]) for row in rows])
            if len(rows) < size:
                return
            cursor = {"after_time": rows[-1][1], "after_key": rows[-1][0]}

    def _rewrite_batches_by_time(self, where: Predicate, key: str | None) -> Iterator[Batch]:
        """Forward by time: a batch takes whole groups of rows sharing a time, so the next one
        starts strictly after the last time read (no key, or one that changes on update)."""
        columns = self._rewritten_sql() if key is None else f"{key}, {self._rewritten_sql()}"
        read = f"SELECT {columns} FROM {self._table_sql} WHERE {where.sql}"
        after: Any = None
        number = 0
        while True:
            rows, full = self._db.retrying(
                "planning an anonymize batch",
                partial(self._read_time_groups, read, where, after, 0 if key is None else 1),
            )
            if not rows:
                return
            number += 1
            batch_rows = [(None, row) if key is None else (row[0], row[1:]) for row in rows]
            yield self._rewrite_batch(number, where, batch_rows)
            if not full:
                return
            after = batch_rows[-1][1][0]

    def _read_time_groups(
        self, read: str, where: Predicate, after: Any, position: int, connection: Connection
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """Up to batch_size rows after the time `after` (the time at `position` of each row), the
        last time's rows completed; and whether the limit was reached (more may follow)."""
        size = self._batch_size
        time_sql = self._time_sql
        later = f" AND {time_sql} > :after_time" if after is not None else ""
        rows = read_rows(
            *bind(f"{read}{later} ORDER BY {time_sql} LIMIT :n", where, n=size, after_time=after),
            connection,
        )
        if len(rows) < size:
            return rows, False
        last = rows[-1][position]
        group = read_rows(*bind(f"{read} AND {time_sql} = :tie", where, tie=last), connection)
        return [row for row in rows if row[position] != last] + group, True

    def _rewrite_batch(
        self, number: int, where: Predicate, rows: list[tuple[Any, tuple[Any, ...]]]
    ) -> Batch:
        return Batch(
            number=number,
            planned=len(rows),
            span=self._day_span(values[0] for _, values in rows),
            payload=Rewrite(where, rows),
        )

    def _rewrite(self, plan: Rewrite) -> BatchResult:
        """Rewrite the rows whose values change, each only if it still holds the values read."""
        names = [name for name, _ in self._rewritten]
        pending = []
        for key, values in plan.rows:
            original = dict(zip(names, values, strict=True))
            changes = anonymize_row(self._transforms, original)
            if changes:
                pending.append((key, values, {**original, **changes}))
        unchanged = len(plan.rows) - len(pending)

        def settle(connection: Connection, lost: int) -> int:
            """The batch's commit got no reply: rewrite again what still holds the values read
            (a rewrite is idempotent), and count the rows that already hold the new values as
            rewritten by the lost commit."""
            again, already = self._update_rows(connection, plan.where, pending, settling=True)
            kept = min(already, lost)
            commit = (
                "went through" if not again else "did not go through" if not kept else "unknown"
            )
            log.warning(
                "sql store checked a lost commit",
                store=self.label,
                action="anonymizing",
                commit=commit,
                anonymized=again + kept,
            )
            return again + kept

        written = 0
        if pending:
            try:
                written = self._db.retrying(
                    "anonymizing a batch",
                    lambda connection: self._update_rows(connection, plan.where, pending)[0],
                    write=True,
                    settle=settle,
                )
            except RolledBack as error:
                if not self._storage.transactional:
                    raise StoreError(str(error)) from None  # rows rewritten before it failed stay
                raise BatchFailed(
                    str(error), BatchResult(deleted=0), error.code, error.sqlstate
                ) from None
        changed = len(pending) - written
        return BatchResult(
            deleted=0,
            anonymized=written,
            span=self._day_span(values[0] for _, values, _ in pending) if written else None,
            skipped={CHANGED_SINCE_PLANNED: changed} if changed > 0 else {},
            counts={"unchanged": unchanged} if unchanged else {},
        )

    def _update_rows(
        self,
        connection: Connection,
        where: Predicate,
        pending: list[tuple[Any, tuple[Any, ...], dict[str, Any]]],
        *,
        settling: bool = False,
    ) -> tuple[int, int]:
        """One UPDATE per row in this transaction; the number of rows rewritten, and when
        `settling` a lost commit, of the rows not rewritten that already hold the new values.

        Identical keyless rows are all rewritten by the first of their statements (each gets
        the same values), and the later ones find nothing: the sum still counts each row once.
        """
        key = self._require_layout().key
        moves = key is not None and self._dialect.key_moves(key)
        targets = list(self._transforms)
        quote = self._preparer().quote
        same = self._dialect.null_safe_equal
        identity = [f"{sql} {same} :old_{i}" for i, (_, sql) in enumerate(self._rewritten)]
        if key is not None:
            identity.insert(0, self._dialect.key_equals(key, "key"))
        assignments = ", ".join(f"{quote(name)} = :new_{i}" for i, name in enumerate(targets))
        statement, common = bind(
            f"UPDATE {self._table_sql} SET {assignments} "
            f"WHERE {' AND '.join(identity)} AND {where.sql}",
            where,
        )
        # A rewritten row has a new key where keys move (ctid): there, the new values alone
        # find it
        found = identity[1:] if moves else identity
        check, _ = bind(
            f"SELECT COUNT(*) FROM {self._table_sql} "
            f"WHERE {' AND '.join(found).replace(':old_', ':now_')} AND {where.sql}",
            where,
        )
        names = [name for name, _ in self._rewritten]
        written = already = 0
        checked: set[tuple[Any, tuple[Any, ...]]] = set()
        for row_key, values, rewritten in pending:
            params = dict(common)
            params.update((f"old_{i}", value) for i, value in enumerate(values))
            params.update((f"new_{i}", rewritten[name]) for i, name in enumerate(targets))
            if key is not None:
                params["key"] = row_key
            count = connection.execute(statement, params).rowcount
            written += count
            row = (None if key is None or moves else row_key, values)
            if settling and not count and row not in checked:
                checked.add(row)  # rows found by their values: each set of values once
                params.update((f"now_{i}", rewritten[name]) for i, name in enumerate(names))
                already += int(connection.execute(check, params).scalar() or 0)
        return written, already

    def smallest_group(self, cutoff: datetime) -> int | None:
        """The smallest group of expired rows alike in every transformed column that is not
        blanked (a blanked column is alike in all rows)."""
        if not self.anonymizes:
            return None
        quote = self._preparer().quote
        grouping = [
            quote(name)
            for name, transform in self._transforms.items()
            if transform.groups and not isinstance(transform, Blank | _ToNull)
        ]
        expired = self._expired(cutoff)
        if grouping:
            sql = (
                f"SELECT MIN(cnt) FROM (SELECT COUNT(*) AS cnt FROM {self._table_sql} "
                f"WHERE {expired.sql} GROUP BY {', '.join(grouping)}) AS sizes"
            )
        else:
            sql = f"SELECT COUNT(*) FROM {self._table_sql} WHERE {expired.sql}"
        statement = bind(sql, expired)
        smallest = self._db.retrying(
            "measuring the smallest group",
            lambda connection: connection.execute(*statement).scalar(),
        )
        return int(smallest) if smallest else None

    def _require_anonymize(self) -> None:
        if not self._transforms:
            raise StoreError(
                f"{self.label}: no columns to anonymize; set anonymize to each column's transform"
            )

    def _rewritten_sql(self) -> str:
        return ", ".join(sql for _, sql in self._rewritten)

    def _since(self, since: datetime | None) -> Predicate:
        """Rows not older than the previous complete run's cutoff: the complement of what that
        run's `time < bound` covered."""
        if since is None:
            return EVERY_ROW
        return Predicate(f"{self._time_sql} >= :since", {"since": self._bound(since)})

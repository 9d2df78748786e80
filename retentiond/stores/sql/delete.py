"""Applying a delete batch: one short transaction with the predicate it was planned with, then
the files its rows named.

A batch's count and span are exact without reading its rows back: the plan counts the rows of
the delete's own predicate and reads their first and last time on the server, so when the
delete's rowcount equals the plan, those rows went; when it does not (the table changed in
between), the span is reported unknown rather than guessed. RETURNING is used only for the
files a file_column names. A commit whose reply was lost is settled by looking at the rows: the
batch went through, did not, or (where the rows cannot tell) is counted as unconfirmed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from sqlalchemy import Connection, TextClause, bindparam, text

from retentiond.errors import StoreError
from retentiond.stores.base import Batch, BatchFailed, BatchResult
from retentiond.stores.db.retries import UNCONFIRMED_DELETED_MAX, RolledBack
from retentiond.stores.db.rows import IN_LIST_CHUNK
from retentiond.stores.fs.folders import UNREMOVABLE
from retentiond.stores.sql.file_root import STILL_REFERENCED, UNSAFE_PATH
from retentiond.stores.sql.payloads import Deletion
from retentiond.stores.sql.plan import Planning
from retentiond.stores.sql.predicates import Predicate, bind

log = structlog.get_logger()


@dataclass
class _Deleted:
    """What one batch's transaction deleted, before any file is touched."""

    count: int
    times: list[Any] | None  # the deleted rows' times; None when the database cannot return them
    files: list[Any] = field(default_factory=list)  # file column values to unlink after commit
    still_referenced: int = 0  # files of deleted rows that rows staying behind also name


@dataclass
class _Attempt:
    """One attempt at a deletion batch: what its transaction deleted, and for a batch of tied
    rows how many of its predicate's rows it left (the rest of the tie). `unconfirmed` rows went
    with a commit whose reply was lost and that no check could attribute."""

    deleted: _Deleted
    left: int = 0
    unconfirmed: int = 0


class Deleting(Planning):
    """Deleting a planned batch and its rows' files."""

    def _apply_deletion(self, batch: Batch, plan: Deletion) -> BatchResult:
        def attempt(connection: Connection, plan_ahead: bool = True) -> _Attempt:
            self._ahead = None  # an earlier attempt's, read in a transaction that rolled back
            started = time.monotonic()
            deleted = self._delete(connection, plan, batch.planned)
            if plan.tied is None:
                result = _Attempt(deleted)  # the others delete every row their predicate covers
            else:
                tied = plan.where & Predicate(f"{self._time_sql} = :tied", {"tied": plan.tied})
                sql = f"SELECT COUNT(*) FROM {self._table_sql} WHERE {tied.sql}"
                left = int(connection.execute(*bind(sql, tied)).scalar() or 0)
                result = _Attempt(deleted, left)
            if plan_ahead:
                # Sized by this batch's time, the next batch is planned before this one commits
                self._adapt_batch_size(deleted.count, time.monotonic() - started)
                if plan.ahead is not None and deleted.count:
                    self._ahead = (plan, plan.ahead(connection))
            return result

        def settle(connection: Connection, lost: _Attempt) -> _Attempt:
            """The batch's commit got no reply: keep its result if it went through, else delete
            again; when the rows say neither, the lost commit's rows are unconfirmed."""
            self._ahead = None  # the lost attempt's reading ahead: read fresh instead
            if not self._storage.transactional:
                # MyISAM and Aria apply a DELETE before answering it: COMMIT had nothing to do
                return _settled(self.label, batch.number, "went through", lost)
            if plan.keys is None and plan.walk is None and plan.upto is None and plan.tied is None:
                # any n expired rows of a table without a key: nothing tells which went
                again = attempt(connection, plan_ahead=False)
                again.unconfirmed = lost.unconfirmed + lost.deleted.count
                return _settled(self.label, batch.number, "unknown", again)
            # The same delete again: it waits for the locks the lost transaction may still hold,
            # then finds the batch's rows as they are. Under a savepoint, to take back further
            # ties of a tied batch should the lost commit have gone through.
            savepoint = connection.begin_nested()
            again = attempt(connection, plan_ahead=False)
            # the batch's rows found now, less those the lost attempt left: the ones it deleted
            present = again.deleted.count + again.left - lost.left
            if present <= 0:
                savepoint.rollback()
                return _settled(self.label, batch.number, "went through", lost)
            savepoint.commit()
            again.unconfirmed = lost.unconfirmed
            if present >= lost.deleted.count:
                return _settled(self.label, batch.number, "did not go through", again)
            # Some are gone: taken by someone else after it rolled back, or by it after all
            again.unconfirmed += lost.deleted.count
            return _settled(self.label, batch.number, "unknown", again)

        try:
            outcome = self._db.retrying("deleting a batch", attempt, write=True, settle=settle)
        except RolledBack as error:
            if not self._storage.transactional:
                # MyISAM and Aria keep what a statement deleted before it failed: not known
                raise StoreError(str(error)) from None
            raise BatchFailed(
                str(error), BatchResult(deleted=0), error.code, error.sqlstate
            ) from None
        deleted = outcome.deleted
        if deleted.times is not None:
            span = self._day_span(deleted.times)
        elif deleted.count == batch.planned or (plan.tied is not None and deleted.count):
            # The plan counted, under the delete's own predicate, the rows it would delete and
            # their first and last time: when as many went, those were them (rows of `tied`
            # have that one time however many went).
            span = batch.span
        else:
            span = None  # the table changed between plan and delete: the span is not known
        result = BatchResult(deleted=deleted.count, span=span)
        if self._files is not None:
            result = self._remove_files(deleted, result)
        if outcome.unconfirmed:
            # As a reconciled run says it: at most this many more, unconfirmed
            counts = {**result.counts, UNCONFIRMED_DELETED_MAX: outcome.unconfirmed}
            result = replace(result, counts=counts)
        return result

    def _delete(self, connection: Connection, plan: Deletion, planned: int) -> _Deleted:
        # RETURNING only for the files the rows name: counts come from rowcount, spans from the
        # plan, and returned rows cost the server and the driver.
        files = self._files is not None
        if plan.walk is not None:
            last, upper = plan.walk
            statement, params = bind(self._walk_delete_sql(plan.where, files), plan.where)
            params.update(last=last, hi=upper)
            file_read = self._locking_file_read(self._walk_where(plan.where), plan.where)
            deleted = self._run_delete(connection, statement, params, file_read)
        elif plan.upto is not None:
            # A range, without ORDER BY or LIMIT: binlog_format MIXED logs it as one statement.
            upto = plan.where & Predicate(f"{self._time_sql} <= :upto", {"upto": plan.upto})
            statement, params = bind(
                f"DELETE FROM {self._table_sql} WHERE {upto.sql}{self._returning(files)}", upto
            )
            file_read = self._locking_file_read(upto.sql, upto)
            deleted = self._run_delete(connection, statement, params, file_read)
        elif plan.tied is not None:
            deleted = self._delete_tied(connection, plan, planned)
        elif plan.keys is None:
            # Refused at open without RETURNING: a second ORDER BY ... LIMIT may pick other ties.
            deleted = self._run_delete(
                connection,
                *bind(self._keyless_delete_sql(plan.where, plan.ordered), plan.where, n=planned),
            )
        else:
            deleted = self._delete_keys(connection, plan.keys, plan.where)
        if self._files is not None and deleted.files:
            self._keep_files_still_named(connection, deleted)
        return deleted

    def _delete_tied(self, connection: Connection, plan: Deletion, planned: int) -> _Deleted:
        """`planned` of the rows matching the plan's predicate at its time `tied`."""
        key = self._require_layout().key
        tied = plan.where & Predicate(f"{self._time_sql} = :tied", {"tied": plan.tied})
        if key is None:  # MariaDB/MySQL only; file_column there needs RETURNING (open)
            returning = self._returning(self._files is not None)
            sql = f"DELETE FROM {self._table_sql} WHERE {tied.sql} LIMIT :n{returning}"
            return self._run_delete(connection, *bind(sql, tied, n=planned))
        statement = bind(
            f"SELECT {key} FROM {self._table_sql} WHERE {tied.sql} LIMIT :n", tied, n=planned
        )
        keys = list(connection.execute(*statement).scalars())
        return self._delete_keys(connection, keys, tied)

    def _delete_keys(self, connection: Connection, keys: list[Any], where: Predicate) -> _Deleted:
        key = self._require_layout().key
        returning = self._returning()
        # One array parameter where the dialect has them: psycopg allows at most 65535
        # parameters per statement.
        match = self._dialect.array_match(f"{key}", "keys")
        if match is not None:
            statement, params = bind(
                f"DELETE FROM {self._table_sql} WHERE {match} AND {where.sql}{returning}",
                where,
                keys=keys,
            )
            return self._run_delete(connection, statement, params)
        total = _Deleted(0, [] if returning else None)
        for start in range(0, len(keys), IN_LIST_CHUNK):
            chunk = Predicate(
                f"{key} IN :keys",
                {"keys": keys[start : start + IN_LIST_CHUNK]},
                frozenset({"keys"}),
            )
            matching = chunk & where
            statement, params = bind(
                f"DELETE FROM {self._table_sql} WHERE {matching.sql}{returning}", matching
            )
            file_read = self._locking_file_read(matching.sql, matching)
            part = self._run_delete(connection, statement, params, file_read)
            total.count += part.count
            if total.times is not None and part.times is not None:
                total.times.extend(part.times)
            total.files.extend(part.files)
        return total

    def _run_delete(
        self,
        connection: Connection,
        statement: TextClause,
        params: dict[str, Any],
        file_read: TextClause | None = None,
    ) -> _Deleted:
        """Delete; the rows' times when the database can return them, and the files they named.

        Without RETURNING, `file_read` selects the same rows FOR UPDATE first, in the same
        transaction, so the files read are exactly those of the rows the delete removes.
        """
        files: list[Any] = []
        if file_read is not None:
            files = list(connection.execute(file_read, params).scalars())
        result = connection.execute(statement, params)
        if result.returns_rows:
            rows = result.all()
            if self._files is not None:
                files = [row[1] for row in rows]
            return _Deleted(len(rows), [row[0] for row in rows], files)
        return _Deleted(result.rowcount, None, files)

    def _keep_files_still_named(self, connection: Connection, deleted: _Deleted) -> None:
        """Leave out the files a remaining row names; read in the deleting transaction.

        MariaDB compares text without regard to case or trailing spaces: a match that loose only
        keeps more files, so values are compared the same way here.
        """
        values = list(dict.fromkeys(v for v in deleted.files if _names_a_file(v)))
        still_named: set[Any] = set()
        array = self._dialect.array_match(self._file_sql, "values")
        if array is not None:
            statement = text(
                f"SELECT DISTINCT {self._file_sql} FROM {self._table_sql} WHERE {array}"
            )
        else:
            statement = text(
                f"SELECT DISTINCT {self._file_sql} FROM {self._table_sql} "
                f"WHERE {self._file_sql} IN :values"
            ).bindparams(bindparam("values", expanding=True))
        for start in range(0, len(values), IN_LIST_CHUNK):
            chunk = values[start : start + IN_LIST_CHUNK]
            found = connection.execute(statement, {"values": chunk}).scalars()
            still_named.update(_loose(value) for value in found)
        deleted.files = [value for value in values if _loose(value) not in still_named]
        deleted.still_referenced = len(values) - len(deleted.files)

    def _remove_files(self, deleted: _Deleted, result: BatchResult) -> BatchResult:
        """Unlink the committed rows' files; count what was left and why, never naming a file."""
        files = self._files
        if files is None:
            return result
        skipped: Counter[str] = Counter()
        if deleted.still_referenced:
            skipped[STILL_REFERENCED] = deleted.still_referenced
        removed = removed_bytes = 0
        for value in deleted.files:
            reason, size = files.remove(value)
            if reason is None:
                removed += 1
                removed_bytes += size
            else:
                skipped[reason] += 1
        if removed or skipped:
            log.info(
                "sql store deleted files",
                store=self.label,
                files=removed,
                bytes=removed_bytes,
                **dict(sorted(skipped.items())),
            )
        if skipped[UNREMOVABLE] or skipped[UNSAFE_PATH]:
            log.warning(
                "sql store left files in place",
                store=self.label,
                unremovable=skipped[UNREMOVABLE],
                unsafe_path=skipped[UNSAFE_PATH],
            )
        return BatchResult(
            deleted=result.deleted,
            span=result.span,
            bytes=removed_bytes,
            skipped=dict(sorted(skipped.items())),
        )


def _settled(label: str, batch: int, commit: str, kept: _Attempt) -> _Attempt:
    """Log what became of a batch's commit whose reply was lost, and keep `kept`."""
    log.warning(
        "sql store checked a lost commit",
        store=label,
        batch=batch,
        commit=commit,
        deleted=kept.deleted.count,
        **({UNCONFIRMED_DELETED_MAX: kept.unconfirmed} if kept.unconfirmed else {}),
    )
    return kept


def _names_a_file(value: Any) -> bool:
    """Rows without a file hold NULL or an empty string."""
    if isinstance(value, bytes):
        return bool(value.strip())
    return isinstance(value, str) and bool(value.strip())


def _loose(value: Any) -> Any:
    """A file column value as a case-insensitive, PAD SPACE collation compares it."""
    if isinstance(value, str):
        return value.rstrip(" ").casefold()
    if isinstance(value, bytes):
        return value.rstrip(b" ").lower()
    return value

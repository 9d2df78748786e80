"""3CX call history (v18, v20) in its PostgreSQL database `database_single`, deleted call by call.

3CX has kept its call history in two table layouts, neither documented (cl_* of v18 and early
v20, cdroutput of v20 Update 6 and later); `open` finds by reflection which one this PBX has
(both, after an upgrade that left the old tables behind): see `schema`.

A call expires by its start time (cl_calls.start_time, cdroutput.cdr_started_at): the call's
business time, as a CDR's calldate is. A call that began before the cutoff goes whole, with every
segment and participant, even when it ended after the cutoff.

Each batch is one transaction: it locks the planned calls that are still expired, deletes the rows
that belong to them, then the calls. 3CX's own databases carry no foreign keys between these
tables, so the order is fixed here; foreign keys that do exist decide which column links a table,
and any other table referring to these is named by `describe`. Recording files and the
`recordings` table are another store (`sql` with file_column).

Whose a call is: the numbers of its parties (cl_party_info through cl_participants, cl_quality;
in cdroutput the source and destination numbers of every segment of the same call). A hold by
number keeps, and `erase` removes, the whole call when any of them is one of the subject's stored
forms (blanks and `-./()` ignored, as `Subject.matches` does). The numbers are bound parameters.

Anonymization rewrites the configured `table.column` fields of every row of a call; shared
cl_party_info rows are copied, never rewritten in place: see `anonymize`.
"""

from __future__ import annotations

import time as clock
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Connection, TextClause, text
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.exc import DBAPIError

from retentiond.config.model import ConnectionConfig, ThreeCxCallsStoreConfig
from retentiond.dberrors import describe
from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchFailed, BatchResult, Found, Store, Survey
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import PostgreSQL
from retentiond.stores.db.retries import UNCONFIRMED_DELETED_MAX, RolledBack
from retentiond.stores.db.rows import read_rows
from retentiond.stores.db.sizing import adapted_size
from retentiond.stores.db.timecols import stored_instant
from retentiond.stores.db.timekinds import DATETIME_FLOOR, TimeKind
from retentiond.stores.threecx.anonymize import (
    Anonymization,
    anonymize_calls,
    describe_anonymization,
    group_sizes,
    plan_anonymization,
)
from retentiond.stores.threecx.deletion import Deleted, delete_calls
from retentiond.stores.threecx.queries import (
    CallQueries,
    Clause,
    all_of,
    any_of,
    is_subjects,
    negated,
)
from retentiond.stores.threecx.schema import (
    Generation,
    cdroutput_generation,
    cl_generation,
    describe_generation,
    other_referrers,
)

log = structlog.get_logger()

UNDATED = "undated"  # a call without a start time: never expires, counted in the survey
# Without batch_size, each batch's transaction aims at this many seconds. Longer than the sql
# store's BATCH_TIME: the PBX only inserts new calls, which never wait for the row locks of a
# purge of old ones (PostgreSQL's MVCC), so a longer batch does not stall it, and fewer batches
# mean fewer commits, deletion-log fsyncs and round trips.
BATCH_TIME = 0.5


@dataclass(frozen=True)
class _Planned:
    """A batch's payload: the calls of one generation, and the holds and subject they were
    planned under, so `apply` re-checks exactly these and never acts on a wider set.

    Keys, holds and subject never show in a repr: they may carry numbers.
    """

    generation: str
    keys: tuple[Any, ...] = field(repr=False)
    holds: Holds = field(default=NO_HOLDS, repr=False)
    subject: Subject | None = field(default=None, repr=False)  # an erasure: delete its calls
    anonymize: bool = False


@dataclass(frozen=True)
class _Counts:
    """One generation's survey."""

    total: int
    expired: int
    oldest: Any
    undated: int
    held: int
    held_by: Mapping[str, int]


class ThreeCxCallsStore(Store):
    """The call history of one 3CX PBX; see the module docstring."""

    kind = "3cx_call_history"
    unit = "calls"

    def __init__(
        self, store: ThreeCxCallsStoreConfig, connection: ConnectionConfig, zone: tzinfo
    ) -> None:
        self.label = store.label
        self.pause = store.pause
        self.batch_size = store.batch_size
        self._store = store
        self._zone = zone
        self._db = Database(store.connection, connection, store.label)
        self._calls = CallQueries(self._db, zone)
        self._generations: tuple[Generation, ...] = ()
        self._other_referrers: tuple[str, ...] = ()
        self._applied: tuple[Batch, BatchResult] | None = None
        self._applied_seconds = 0.0  # how long the last batch's transaction took
        self._anonymization: dict[str, Anonymization] = {}
        self.anonymizes = bool(store.anonymize)

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        connection = self._db.open()
        try:
            with connection:
                if not isinstance(self._db.dialect, PostgreSQL):
                    raise StoreError(
                        f"{self.label}: 3CX keeps its call history in PostgreSQL, but connection "
                        f"{self._store.connection} is {self._db.server}; point it at 3CX's "
                        "database (database_single, at DBHost/DBPort of 3CX's 3CXPhoneSystem.ini)"
                    )
                self._reflect(sqlalchemy_inspect(connection))
        except DBAPIError as exc:
            self.close()
            failure = describe(exc, f"{self.label}: reading the table definitions")
            message = f"{self.label}: cannot read the table definitions: {failure}"
            raise StoreError(message) from None
        except StoreError:
            self.close()
            raise
        log.debug(
            "3cx store opened",
            store=self.label,
            database=self._db.server,
            generations=[generation.name for generation in self._generations],
        )

    def close(self) -> None:
        self._db.close()

    def _reflect(self, inspector: Inspector) -> None:
        tables = set(inspector.get_table_names())
        foreign_keys = {
            name: keys for (_, name), keys in inspector.get_multi_foreign_keys().items()
        }
        generations = []
        if "cl_calls" in tables:
            generations.append(cl_generation(inspector, tables, foreign_keys, self.label))
        if "cdroutput" in tables:
            generations.append(cdroutput_generation(inspector, tables, foreign_keys, self.label))
        if not generations:
            raise self._no_call_history(tables)
        self._generations = tuple(generations)
        self._other_referrers = tuple(other_referrers(self._generations, foreign_keys))
        if self._store.anonymize:
            self._anonymization = plan_anonymization(
                inspector, tables, self._store.anonymize, self._generations, self.label
            )

    def _no_call_history(self, tables: set[str]) -> StoreError:
        database = self._db.database_name or "?"
        where = f"database {database} of connection {self._store.connection}"
        if "callhistory3" in tables:
            return StoreError(
                f"{self.label}: {where} holds callhistory3, the call history of 3CX before "
                "v18, which retentiond does not know; only v18 and v20 are supported"
            )
        return StoreAbsent(
            f"{self.label}: no 3CX call history tables (cl_calls or cdroutput) in {where}; "
            "3CX keeps them in database_single"
        )

    # -- describing ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        lines = [f"{self.label}: {self._db.server}"]
        for generation in self._generations:
            lines.extend(describe_generation(generation))
        for referrer in self._other_referrers:
            lines.append(referrer)
        fields = self.subject_fields()
        if fields:
            lines.append(f"whose a call is (holds by number, find, erase): {', '.join(fields)}")
        else:
            lines.append(
                "whose a call is: no number columns found; a hold by number keeps every call "
                "in its window, and find and erase find nothing"
            )
        lines.extend(describe_anonymization(self._anonymization, self._generations))
        if "batch_size" in self._store.model_fields_set:
            lines.append(f"batches of up to {self._store.batch_size} calls, oldest first")
        else:
            lines.append(
                f"batches of {self._store.batch_size} calls at first, then as many as one "
                f"transaction deletes in about {BATCH_TIME:g} s, oldest first"
            )
        return lines

    # -- surveying -------------------------------------------------------------------------------

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        return self._survey(cutoff, holds, None)

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        self._require_anonymization()
        return self._survey(cutoff, holds, since)

    def _survey(self, cutoff: datetime, holds: Holds, since: datetime | None) -> Survey:
        total = expired = undated = held = 0
        held_by: dict[str, int] = {}
        oldest: datetime | None = None
        for generation in self._generations:
            counts = self._db.retrying(
                "surveying",
                partial(
                    self._count, generation=generation, cutoff=cutoff, holds=holds, since=since
                ),
            )
            total += counts.total
            expired += counts.expired
            undated += counts.undated
            held += counts.held
            for hold_id, count in counts.held_by.items():
                held_by[hold_id] = held_by.get(hold_id, 0) + count  # 0 too: it covers none here
            first = stored_instant(counts.oldest, generation.kind, self._zone)
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        return Survey(
            unit=self.unit,
            total=total,
            expired=expired,
            oldest=oldest,
            skipped={UNDATED: undated} if undated else {},
            held=held,
            held_by=held_by,
        )

    def _count(
        self,
        connection: Connection,
        *,
        generation: Generation,
        cutoff: datetime,
        holds: Holds,
        since: datetime | None,
    ) -> _Counts:
        time = f"c.{self._calls.q(generation.time)}"
        due = self._calls.due(generation, cutoff, since)
        scopes = [
            self._calls.hold_clause(generation, scope, f"h{i}")
            for i, scope in enumerate(holds.scopes)
        ]
        held = any_of(scopes)
        columns = [
            "COUNT(*)",
            f"COUNT(*) FILTER (WHERE {due.sql} AND NOT {held.sql})",
            f"MIN({time}) FILTER (WHERE {time} >= :floor)",
            f"COUNT(*) FILTER (WHERE {time} IS NULL)",
            f"COUNT(*) FILTER (WHERE {due.sql} AND {held.sql})",
            *(f"COUNT(*) FILTER (WHERE {due.sql} AND {scope.sql})" for scope in scopes),
        ]
        row = connection.execute(
            text(f"SELECT {', '.join(columns)} FROM {self._calls.q(generation.table)} AS c"),
            {**due.params, **held.params, "floor": _floor(generation.kind)},
        ).one()
        return _Counts(
            total=int(row[0]),
            expired=int(row[1]),
            oldest=row[2],
            undated=int(row[3]),
            held=int(row[4]),
            held_by={scope.hold_id: int(n) for scope, n in zip(holds.scopes, row[5:], strict=True)},
        )

    # -- planning --------------------------------------------------------------------------------

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        number = 0
        # batch_size in the config fixes the calls per batch; without it they adapt, from its
        # default, so each batch's transaction takes about BATCH_TIME (`stores.db.sizing`).
        aim = None if "batch_size" in self._store.model_fields_set else BATCH_TIME
        size = self._store.batch_size
        for generation in self._generations:
            due = self._calls.due(generation, cutoff, None)
            held = self._calls.held(generation, holds)
            key, time = f"c.{self._calls.q(generation.key)}", f"c.{self._calls.q(generation.time)}"
            # One row: the keys in an array, and the earliest and latest time (the day span)
            statement = text(
                f"SELECT array_agg(k), MIN(t), MAX(t) FROM (SELECT {key} AS k, {time} AS t "
                f"FROM {self._calls.q(generation.table)} AS c "
                f"WHERE {due.sql} AND NOT {held.sql} ORDER BY {time} LIMIT :n) AS planned"
            )
            params = {**due.params, **held.params, "n": size}
            while True:
                keys, first, last = self._db.retrying(
                    "planning a batch", partial(read_rows, statement, params), autocommit=True
                )[0]
                if not keys:
                    break
                number += 1
                batch = Batch(
                    number=number,
                    planned=len(keys),
                    span=self._calls.day_span(generation, [first, last]),
                    payload=_Planned(generation.name, tuple(keys), holds),
                )
                self._applied = None
                yield batch
                applied = self._applied
                if applied is None or applied[0] is not batch:
                    return  # not applied (a dry run): the next batch would be this one again
                if len(keys) < size or applied[1].deleted == 0:
                    break  # none left, or none deletable: the verifying survey tells
                size = adapted_size(size, aim, len(keys), self._applied_seconds)
                params["n"] = size

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        """The subject's unheld calls of any age, walked forward by key (deleted or not)."""
        number = 0
        for generation in self._generations:
            names = self._calls.names(generation, subject, "subject")
            if names is None:
                continue  # this layout cannot tell whose a call is
            held = self._calls.held(generation, holds)
            planned = _Planned(generation.name, (), holds, subject)
            for rows in self._walk(generation, all_of(names, negated(held)), by_time=False):
                number += 1
                yield self._batch(number, generation, rows, planned)

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        """Unheld calls in [since, cutoff), walked forward by (time, key): each is visited once."""
        self._require_anonymization()
        number = 0
        for generation in self._generations:
            due = self._calls.due(generation, cutoff, since)
            held = self._calls.held(generation, holds)
            planned = _Planned(generation.name, (), holds, anonymize=True)
            for rows in self._walk(generation, all_of(due, negated(held)), by_time=True):
                number += 1
                yield self._batch(number, generation, rows, planned)

    def _walk(
        self, generation: Generation, where: Clause, *, by_time: bool
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of (key, time) of the calls `where` selects, forward from the last page read.

        A cursor, not a re-read: a page that was not applied, or that changed nothing, is never
        planned again, so a walk always ends.
        """
        key, time = f"c.{self._calls.q(generation.key)}", f"c.{self._calls.q(generation.time)}"
        order = f"{time}, {key}" if by_time else key
        size = self._store.batch_size
        after: tuple[Any, ...] | None = None
        while True:
            cursor = ""
            params: dict[str, Any] = {**where.params, "n": size}
            if after is not None:
                cursor = (
                    f"AND ({time}, {key}) > (:at, :after) " if by_time else f"AND {key} > :after "
                )
                params.update(after=after[0], at=after[1])
            statement = text(
                f"SELECT {key}, {time} FROM {self._calls.q(generation.table)} AS c "
                f"WHERE {where.sql} {cursor}ORDER BY {order} LIMIT :n"
            )
            rows = self._db.retrying("planning a batch", partial(read_rows, statement, params))
            if not rows:
                return
            yield rows
            if len(rows) < size:
                return
            after = rows[-1]

    def _batch(
        self, number: int, generation: Generation, rows: list[tuple[Any, ...]], planned: _Planned
    ) -> Batch:
        return Batch(
            number=number,
            planned=len(rows),
            span=self._calls.day_span(generation, [row[1] for row in rows]),
            payload=replace(planned, keys=tuple(row[0] for row in rows)),
        )

    # -- finding ---------------------------------------------------------------------------------

    def subject_fields(self) -> list[str]:
        fields: list[str] = []
        for generation in self._generations:
            for numbers in generation.numbers:
                fields.extend(f"{numbers.table}.{column}" for column in numbers.columns)
        return list(dict.fromkeys(fields))

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        """Every call naming the subject: when, whether held, and the numbers that name them."""
        for generation in self._generations:
            names = self._calls.names(generation, subject, "subject")
            if names is None:
                continue
            held = self._calls.held(generation, holds)
            for rows in self._walk(generation, names, by_time=False):
                yield from self._found(generation, subject, held, [row[0] for row in rows])

    def _found(
        self, generation: Generation, subject: Subject, held: Clause, keys: list[Any]
    ) -> Iterator[Found]:
        key, time = self._calls.q(generation.key), self._calls.q(generation.time)
        statement = text(
            f"SELECT c.{key}, c.{time}, {held.sql} FROM {self._calls.q(generation.table)} AS c "
            f"WHERE c.{key} = ANY(:keys) ORDER BY c.{time}, c.{key}"
        )
        calls = self._db.retrying(
            "searching", partial(read_rows, statement, {**held.params, "keys": keys})
        )
        named = self._db.retrying(
            "searching", partial(self._named_values, generation=generation, keys=keys)
        )
        for call, when, is_held in calls:
            instant = stored_instant(when, generation.kind, self._zone)
            fields = {
                field: ", ".join(sorted(matched))
                for field, values in named.get(call, {}).items()
                if (matched := {value for value in values if is_subjects(subject, value)})
            }
            if instant is not None:
                fields[f"{generation.table}.{generation.time}"] = instant.astimezone(
                    self._zone
                ).isoformat(sep=" ", timespec="seconds")
            yield Found(when=instant, held=bool(is_held), where="call", fields=fields)

    def _named_values(
        self, connection: Connection, *, generation: Generation, keys: list[Any]
    ) -> dict[Any, dict[str, set[str]]]:
        """Per call, every stored value of its number columns (`table.column` → values)."""
        values: dict[Any, dict[str, set[str]]] = {}
        for numbers in generation.numbers:
            source, link = self._calls.numbers_source(numbers)
            columns = ", ".join(f"n.{self._calls.q(column)}" for column in numbers.columns)
            rows = connection.execute(
                text(
                    f"SELECT c.{self._calls.q(generation.key)}, {columns} "
                    f"FROM {self._calls.q(generation.table)} AS c JOIN {source} ON {link} "
                    f"WHERE c.{self._calls.q(generation.key)} = ANY(:keys)"
                ),
                {"keys": keys},
            )
            for row in rows:
                per_call = values.setdefault(row[0], {})
                for column, value in zip(numbers.columns, row[1:], strict=True):
                    if value is not None:
                        per_call.setdefault(f"{numbers.table}.{column}", set()).add(str(value))
        return values

    # -- applying --------------------------------------------------------------------------------

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        planned = batch.payload
        if not isinstance(planned, _Planned):
            raise TypeError("a batch planned by another store")  # a bug in the caller
        generation = next(g for g in self._generations if g.name == planned.generation)
        guard = self._guard(generation, planned, cutoff)
        if planned.anonymize:
            result = self._apply_anonymize(generation, planned, guard)
        else:
            result = self._apply_delete(generation, planned, guard, batch.number)
        self._applied = (batch, result)
        return result

    def _guard(self, generation: Generation, planned: _Planned, cutoff: datetime) -> Clause:
        """What a planned call must still be to be acted on: as planned, never wider."""
        time = f"c.{self._calls.q(generation.time)}"
        bound = {"bound": self._calls.bound(generation, cutoff)}
        held = negated(self._calls.held(generation, planned.holds))
        if planned.subject is None:
            return all_of(Clause(f"{time} < :bound", bound), held)
        names = self._calls.names(generation, planned.subject, "subject")
        if names is None:
            raise TypeError("an erasure planned on a layout that cannot tell whose a call is")
        erasable = Clause(f"({time} < :bound OR {time} IS NULL)", bound)
        return all_of(erasable, names, held)

    def _apply_delete(
        self, generation: Generation, planned: _Planned, guard: Clause, number: int
    ) -> BatchResult:
        def attempt(connection: Connection) -> Deleted:
            return delete_calls(self._calls, connection, generation, list(planned.keys), guard)

        def settle(connection: Connection, lost: Deleted) -> Deleted:
            """The batch's commit got no reply: keep its result if its calls are gone, else
            delete again; when only some are gone, the lost commit's calls are unconfirmed."""
            # Locking waits for the lost transaction, should the server still hold it.
            present = len(self._calls.lock(connection, generation, list(lost.keys), Clause("TRUE")))
            if present == 0:
                return self._settled(number, "went through", lost)
            again = attempt(connection)
            again.unconfirmed = lost.unconfirmed
            if present >= len(lost.keys):
                return self._settled(number, "did not go through", again)
            # Some are gone: taken by someone else after it rolled back, or by it after all
            again.unconfirmed += len(lost.keys)
            return self._settled(number, "unknown", again)

        started = clock.monotonic()
        try:
            deleted = self._db.retrying("deleting a batch", attempt, write=True, settle=settle)
        except RolledBack as error:
            raise BatchFailed(
                str(error), BatchResult(deleted=0), error.code, error.sqlstate
            ) from None
        self._applied_seconds = clock.monotonic() - started
        log.debug(
            "3cx store deleted a batch",
            store=self.label,
            generation=generation.name,
            calls=deleted.count,
            **deleted.counts,
        )
        result = BatchResult(
            deleted=deleted.count, span=self._calls.day_span(generation, deleted.bounds)
        )
        if deleted.unconfirmed:
            # As a reconciled run says it: at most this many more, unconfirmed
            result = replace(result, counts={UNCONFIRMED_DELETED_MAX: deleted.unconfirmed})
        return result

    def _settled(self, number: int, commit: str, kept: Deleted) -> Deleted:
        """Log what became of a batch's commit whose reply was lost, and keep `kept`."""
        log.warning(
            "3cx store checked a lost commit",
            store=self.label,
            batch=number,
            commit=commit,
            deleted=kept.count,
            **({UNCONFIRMED_DELETED_MAX: kept.unconfirmed} if kept.unconfirmed else {}),
        )
        return kept

    # -- anonymizing -----------------------------------------------------------------------------

    def _apply_anonymize(
        self, generation: Generation, planned: _Planned, guard: Clause
    ) -> BatchResult:
        plan = self._anonymization[generation.name]
        try:
            locked, changed = self._db.retrying(
                "anonymizing a batch",
                lambda connection: anonymize_calls(
                    self._calls, connection, generation, plan, list(planned.keys), guard
                ),
                write=True,
            )
        except RolledBack as error:
            raise BatchFailed(
                str(error), BatchResult(deleted=0), error.code, error.sqlstate
            ) from None
        unchanged = len(locked) - len(changed)
        log.debug(
            "3cx store anonymized a batch",
            store=self.label,
            generation=generation.name,
            calls=len(changed),
            unchanged=unchanged,
        )
        times = [when for key, when in locked if key in changed]
        return BatchResult(
            deleted=0,
            span=self._calls.day_span(generation, times),
            anonymized=len(changed),
            counts={"unchanged": unchanged},
        )

    def smallest_group(self, cutoff: datetime) -> int | None:
        """The smallest group of expired calls alike in every transformed field that is not
        blanked or made constant (those are alike in every call); None without expired calls.

        A call is compared by all of its rows: per table, the sorted list of its rows' values
        of those fields (cl_party_info through the call's participants). In cdroutput a call
        is the expired segments sharing a call_history_id. Values are compared as stored.
        """
        if not self._anonymization:
            return None
        smallest: int | None = None
        for generation in self._generations:
            plan = self._anonymization.get(generation.name)
            if plan is None:
                continue
            statement, params = group_sizes(self._calls, generation, plan, cutoff)
            size = self._db.retrying(
                "measuring the smallest group", partial(_read_scalar, statement, params)
            )
            if size is not None:
                smallest = int(size) if smallest is None else min(smallest, int(size))
        return smallest

    def _require_anonymization(self) -> None:
        if not self._anonymization:
            raise StoreError(
                f"{self.label}: this store has no anonymize: transforms; the 3cx preset gives "
                "them, or list table.column: transform under the store"
            )

    # -- clocks ----------------------------------------------------------------------------------

    def clock_skew(self) -> timedelta | None:
        return self._db.clock_skew()


def _read_scalar(statement: TextClause, params: dict[str, Any], connection: Connection) -> Any:
    return connection.execute(statement, params).scalar()


def _floor(kind: TimeKind) -> datetime:
    return DATETIME_FLOOR.replace(tzinfo=UTC) if kind == "aware" else DATETIME_FLOOR

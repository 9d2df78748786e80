"""3CX call history (v18, v20) in its PostgreSQL database `database_single`, deleted call by call.

3CX has kept its call history in two table layouts, neither documented; `open` finds by reflection
which one this PBX has (both, after an upgrade that left the old tables behind):

- cl_* (v18, and v20 before Update 6): one row per call in cl_calls; its legs in cl_participants,
  whose numbers and names sit in cl_party_info (a row there may serve several calls); the call's
  steps in cl_segments and voice quality reports in cl_quality.
- cdroutput (v20 Update 6 and later): one row per call segment, its billing in cdrbilling.

A call expires by its start time (cl_calls.start_time, cdroutput.cdr_started_at): the call's
business time, as a CDR's calldate is. A call that began before the cutoff goes whole, with every
segment and participant, even when it ended after the cutoff.

Each batch is one transaction: it locks the planned calls that are still expired, deletes the rows
that belong to them, then the calls. 3CX's own databases carry no foreign keys between these
tables, so the order is fixed here; foreign keys that do exist decide which column links a table,
and any other table referring to these is named by `describe`. Recording files and the
`recordings` table are another store (`sql` with file_column).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Connection, TextClause, text
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.exc import DBAPIError

from retentiond.config.model import ConnectionConfig, ThreeCxCallsStoreConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import Batch, BatchResult, Store, Survey
from retentiond.stores.sql import (
    DATETIME_FLOOR,
    KIND_WORDS,
    Database,
    TimeKind,
    driver_message,
    stored_instant,
    time_bound,
    time_kind,
)

log = structlog.get_logger()

UNDATED = "undated"  # a call without a start time: never expires, counted in the survey

_FOLLOWS_DELETE = ("CASCADE", "SET NULL", "SET DEFAULT")


@dataclass(frozen=True)
class _Link:
    """A table whose rows belong to a row of another table through one column."""

    table: str
    column: str
    found_by: str  # for describe: the foreign key, or the column name 3CX uses
    indexed: bool


@dataclass(frozen=True)
class _PartyInfo:
    """cl_party_info rows the deleted participants pointed to; kept while others still do."""

    table: str
    key: str
    via: _Link  # cl_participants.info_id


@dataclass(frozen=True)
class _Generation:
    """One layout of 3CX's call history as found in this database."""

    name: str  # "cl_*" or "cdroutput"
    title: str
    table: str  # one row per call (cl_calls) or per call segment (cdroutput)
    key: str
    time: str
    kind: TimeKind
    expiry: str  # for describe: what one object is and what its time means
    time_index: str | None
    dependents: tuple[_Link, ...]  # deleted first, in this order
    party: _PartyInfo | None
    notes: tuple[str, ...]  # what was not found or is left alone, and why


@dataclass(frozen=True)
class _Planned:
    """A batch's payload: the calls of one generation. The keys never show in a repr."""

    generation: str
    keys: tuple[Any, ...] = field(repr=False)


class ThreeCxCallsStore(Store):
    """The call history of one 3CX PBX; see the module docstring."""

    kind = "3cx_call_history"
    unit = "calls"

    def __init__(
        self, store: ThreeCxCallsStoreConfig, connection: ConnectionConfig, zone: tzinfo
    ) -> None:
        self.label = store.label
        self.pause = store.pause
        self._store = store
        self._zone = zone
        self._db = Database(store.connection, connection, store.label)
        self._generations: tuple[_Generation, ...] = ()
        self._other_referrers: tuple[str, ...] = ()
        self._applied: tuple[Batch, BatchResult] | None = None

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        connection = self._db.open()
        try:
            with connection:
                if self._db.family != "postgresql":
                    raise StoreError(
                        f"{self.label}: 3CX keeps its call history in PostgreSQL, but connection "
                        f"{self._store.connection} is {self._db.server}; point it at 3CX's "
                        "database (database_single, see DbHost/DbPort in 3CX's config.json)"
                    )
                self._reflect(sqlalchemy_inspect(connection))
        except DBAPIError as exc:
            self.close()
            raise StoreError(
                f"{self.label}: cannot read the table definitions: {driver_message(exc)}"
            ) from None
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
            generations.append(self._cl_generation(inspector, tables, foreign_keys))
        if "cdroutput" in tables:
            generations.append(self._cdroutput_generation(inspector, tables, foreign_keys))
        if not generations:
            raise self._no_call_history(tables)
        self._generations = tuple(generations)
        self._other_referrers = tuple(_other_referrers(self._generations, foreign_keys))

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

    def _cl_generation(
        self, inspector: Inspector, tables: set[str], foreign_keys: Mapping[str, list[Any]]
    ) -> _Generation:
        calls = "cl_calls"
        kind = self._require_call_columns(inspector, calls, "id", "start_time")
        notes: list[str] = []
        dependents = []
        absent = {
            "cl_segments": "cl_segments: not found; no call segments to delete",
            "cl_quality": (
                "cl_quality: not present in this 3CX version; no quality reports to delete"
            ),
            "cl_participants": (
                "warning: cl_participants: not found; no participants to delete, and "
                "cl_party_info is left alone"
            ),
        }
        for table, missing in absent.items():
            if table not in tables:
                notes.append(missing)
                continue
            link = _link(inspector, foreign_keys, table, "call_id", calls, "id", notes)
            if link is not None:
                dependents.append(link)
        party = self._party_info(inspector, tables, foreign_keys, dependents, notes)
        return _Generation(
            name="cl_*",
            title="cl_* tables (3CX v18, and v20 before Update 6)",
            table=calls,
            key="id",
            time="start_time",
            kind=kind,
            expiry=(
                "the call's start: a call that began before the cutoff is deleted whole, with "
                "its segments and participants, even when it ended after the cutoff"
            ),
            time_index=_leading_index(inspector, calls, "start_time"),
            dependents=tuple(dependents),
            party=party,
            notes=tuple(notes),
        )

    def _party_info(
        self,
        inspector: Inspector,
        tables: set[str],
        foreign_keys: Mapping[str, list[Any]],
        dependents: Sequence[_Link],
        notes: list[str],
    ) -> _PartyInfo | None:
        if not any(link.table == "cl_participants" for link in dependents):
            return None
        if "cl_party_info" not in tables:
            notes.append("cl_party_info: not found; no party details to delete")
            return None
        if "id" not in _column_names(inspector, "cl_party_info"):
            notes.append(
                "warning: cl_party_info has no column id; its rows are left alone (retentiond "
                "does not guess which column the participants point to)"
            )
            return None
        via = _link(
            inspector, foreign_keys, "cl_participants", "info_id", "cl_party_info", "id", notes
        )
        return None if via is None else _PartyInfo("cl_party_info", "id", via)

    def _cdroutput_generation(
        self, inspector: Inspector, tables: set[str], foreign_keys: Mapping[str, list[Any]]
    ) -> _Generation:
        calls = "cdroutput"
        kind = self._require_call_columns(inspector, calls, "cdr_id", "cdr_started_at")
        notes: list[str] = []
        dependents = []
        if "cdrbilling" in tables:
            link = _link(inspector, foreign_keys, "cdrbilling", "cdr_id", calls, "cdr_id", notes)
            if link is not None:
                dependents.append(link)
        else:
            notes.append("cdrbilling: not present in this 3CX version; no billing rows to delete")
        return _Generation(
            name="cdroutput",
            title="cdroutput (3CX v20 Update 6 and later), one row per call segment",
            table=calls,
            key="cdr_id",
            time="cdr_started_at",
            kind=kind,
            expiry="each row (one segment of a call) by its own start",
            time_index=_leading_index(inspector, calls, "cdr_started_at"),
            dependents=tuple(dependents),
            party=None,
            notes=tuple(notes),
        )

    def _require_call_columns(
        self, inspector: Inspector, table: str, key: str, time: str
    ) -> TimeKind:
        columns = {column["name"]: column for column in inspector.get_columns(table)}
        missing = [name for name in (key, time) if name not in columns]
        if missing:
            raise StoreError(
                f"{self.label}: table {table} has no column {' and '.join(missing)}; this is not "
                f"a 3CX call history retentiond knows (its columns: {', '.join(columns)})"
            )
        kind = time_kind(columns[time]["type"], "postgresql")
        if kind not in ("aware", "local"):
            raise StoreError(
                f"{self.label}: {table}.{time} has type {columns[time]['type']!r}; 3CX writes "
                "a timestamp there, so this is not a 3CX call history retentiond knows"
            )
        return kind

    # -- describing ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        lines = [f"{self.label}: {self._db.server}"]
        for generation in self._generations:
            lines.extend(self._describe_generation(generation))
        for referrer in self._other_referrers:
            lines.append(referrer)
        lines.append(f"batches of up to {self._store.batch_size} calls, oldest first")
        return lines

    def _describe_generation(self, generation: _Generation) -> list[str]:
        table, time = generation.table, generation.time
        lines = [
            f"generation: {generation.title}",
            f"calls: {table} by {time} ({KIND_WORDS[generation.kind]}), {generation.expiry}",
        ]
        if generation.time_index is None:
            lines.append(
                f"warning: no index on {table}.{time}: every batch reads the whole table; "
                f"CREATE INDEX {table}_{time}_idx ON {table} ({time}) would fix it"
            )
        else:
            lines.append(f"index {generation.time_index} on {time}")
        for link in generation.dependents:
            lines.append(f"found: {link.table}, linked to {table} by {link.found_by}")
        if generation.party is not None:
            via = generation.party.via
            lines.append(
                f"found: {generation.party.table}, linked from {via.table} by {via.found_by}"
            )
        lines.extend(generation.notes)
        for link in (*generation.dependents, *([generation.party.via] if generation.party else [])):
            if not link.indexed:
                lines.append(
                    f"warning: no index on {link.table}.{link.column}: each batch reads "
                    f"{link.table} whole; CREATE INDEX {link.table}_{link.column}_idx ON "
                    f"{link.table} ({link.column}) would fix it"
                )
        lines.append(f"each batch, in one transaction: {_order(generation)}")
        return lines

    # -- surveying -------------------------------------------------------------------------------

    def survey(self, cutoff: datetime) -> Survey:
        total = expired = undated = 0
        oldest: datetime | None = None
        for generation in self._generations:
            counts = self._db.retrying(
                "surveying", partial(self._count, generation=generation, cutoff=cutoff)
            )
            total += counts[0]
            expired += counts[1]
            undated += counts[3]
            first = stored_instant(counts[2], generation.kind, self._zone)
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        return Survey(
            unit=self.unit,
            total=total,
            expired=expired,
            oldest=oldest,
            skipped={UNDATED: undated} if undated else {},
        )

    def _count(
        self, connection: Connection, *, generation: _Generation, cutoff: datetime
    ) -> tuple[int, int, Any, int]:
        table, time = self._q(generation.table), self._q(generation.time)
        row = connection.execute(
            text(
                f"SELECT COUNT(*), COUNT(*) FILTER (WHERE {time} < :bound), "
                f"MIN({time}) FILTER (WHERE {time} >= :floor), "
                f"COUNT(*) FILTER (WHERE {time} IS NULL) FROM {table}"
            ),
            {"bound": self._bound(generation, cutoff), "floor": _floor(generation.kind)},
        ).one()
        return int(row[0]), int(row[1]), row[2], int(row[3])

    # -- planning --------------------------------------------------------------------------------

    def batches(self, cutoff: datetime) -> Iterator[Batch]:
        number = 0
        for generation in self._generations:
            size = self._store.batch_size
            statement = text(
                f"SELECT {self._q(generation.key)}, {self._q(generation.time)} "
                f"FROM {self._q(generation.table)} "
                f"WHERE {self._q(generation.time)} < :bound ORDER BY {self._q(generation.time)} "
                "LIMIT :n"
            )
            params = {"bound": self._bound(generation, cutoff), "n": size}
            while True:
                rows = self._db.retrying("planning a batch", partial(_read_rows, statement, params))
                if not rows:
                    break
                number += 1
                batch = Batch(
                    number=number,
                    planned=len(rows),
                    span=self._day_span(generation, [row[1] for row in rows]),
                    payload=_Planned(generation.name, tuple(row[0] for row in rows)),
                )
                self._applied = None
                yield batch
                applied = self._applied
                if applied is None or applied[0] is not batch:
                    return  # not applied (a dry run): the next batch would be this one again
                if len(rows) < size or applied[1].deleted == 0:
                    break  # none left, or none deletable: the verifying survey tells

    # -- deleting --------------------------------------------------------------------------------

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        planned = batch.payload
        if not isinstance(planned, _Planned):
            raise TypeError("a batch planned by another store")  # a bug in the caller
        generation = next(g for g in self._generations if g.name == planned.generation)
        bound = self._bound(generation, cutoff)
        times, counts = self._db.retrying(
            "deleting a batch",
            lambda connection: self._delete(connection, generation, list(planned.keys), bound),
            write=True,
        )
        log.debug(
            "3cx store deleted a batch",
            store=self.label,
            generation=generation.name,
            calls=len(times),
            **counts,
        )
        result = BatchResult(deleted=len(times), span=self._day_span(generation, times))
        self._applied = (batch, result)
        return result

    def _delete(
        self, connection: Connection, generation: _Generation, keys: list[Any], bound: Any
    ) -> tuple[list[Any], dict[str, int]]:
        """One batch: the calls' rows in dependency order, then the calls; times deleted."""
        table, key, time = (
            self._q(generation.table),
            self._q(generation.key),
            self._q(generation.time),
        )
        # Lock first, in key order: rows that belong to a call are deleted only for a call that
        # is still there and still expired, and no one changes it until the batch commits.
        keys = list(
            connection.execute(
                text(
                    f"SELECT {key} FROM {table} WHERE {key} = ANY(:keys) AND {time} < :bound "
                    f"ORDER BY {key} FOR UPDATE"
                ),
                {"keys": keys, "bound": bound},
            ).scalars()
        )
        if not keys:
            return [], {}
        counts: dict[str, int] = {}
        party = generation.party
        pointed_to: list[Any] = []
        for link in generation.dependents:
            statement = (
                f"DELETE FROM {self._q(link.table)} WHERE {self._q(link.column)} = ANY(:keys)"
            )
            if party is not None and link.table == party.via.table:
                result = connection.execute(
                    text(f"{statement} RETURNING {self._q(party.via.column)}"), {"keys": keys}
                )
                values = result.scalars().all()
                pointed_to = [value for value in values if value is not None]
                counts[link.table] = len(values)
            else:
                counts[link.table] = connection.execute(text(statement), {"keys": keys}).rowcount
        if party is not None and pointed_to:
            counts[party.table] = self._delete_unused_party_info(connection, party, pointed_to)
        times = list(
            connection.execute(
                text(
                    f"DELETE FROM {table} WHERE {key} = ANY(:keys) AND {time} < :bound "
                    f"RETURNING {time}"
                ),
                {"keys": keys, "bound": bound},
            ).scalars()
        )
        return times, counts

    def _delete_unused_party_info(
        self, connection: Connection, party: _PartyInfo, pointed_to: list[Any]
    ) -> int:
        """The party rows the deleted participants pointed to and no remaining one does."""
        table, key = self._q(party.table), self._q(party.key)
        participants, column = self._q(party.via.table), self._q(party.via.column)
        result = connection.execute(
            text(
                f"DELETE FROM {table} AS party WHERE party.{key} = ANY(:ids) AND NOT EXISTS "
                f"(SELECT 1 FROM {participants} AS p WHERE p.{column} = party.{key})"
            ),
            {"ids": list(dict.fromkeys(pointed_to))},
        )
        return result.rowcount

    # -- clocks ----------------------------------------------------------------------------------

    def clock_skew(self) -> timedelta | None:
        return self._db.clock_skew()

    # -- helpers ---------------------------------------------------------------------------------

    def _q(self, name: str) -> str:
        return str(self._db.preparer.quote(name))

    def _bound(self, generation: _Generation, cutoff: datetime) -> Any:
        return time_bound(generation.kind, "postgresql", cutoff, self._zone)

    def _day_span(self, generation: _Generation, values: Sequence[Any]) -> tuple[date, date] | None:
        days = []
        for value in values:
            instant = stored_instant(value, generation.kind, self._zone)
            if instant is not None:
                days.append(instant.astimezone(self._zone).date())
        return (min(days), max(days)) if days else None


def _link(
    inspector: Inspector,
    foreign_keys: Mapping[str, list[Any]],
    table: str,
    column: str,
    parent: str,
    parent_key: str,
    notes: list[str],
) -> _Link | None:
    """How `table` names a row of `parent`: its foreign key, else 3CX's column, else not at all."""
    for key in foreign_keys.get(table, []):
        constrained = key.get("constrained_columns") or []
        if (
            key.get("referred_table") == parent
            and key.get("referred_columns") == [parent_key]
            and len(constrained) == 1
        ):
            name = key.get("name") or "unnamed"
            found_by = f"{constrained[0]} (foreign key {name})"
            return _Link(
                table, constrained[0], found_by, _is_indexed(inspector, table, constrained[0])
            )
    if column in _column_names(inspector, table):
        found_by = f"{column} (no foreign key, as in 3CX's own databases)"
        return _Link(table, column, found_by, _is_indexed(inspector, table, column))
    notes.append(
        f"warning: {table} has no column {column} and no foreign key to {parent}; its rows are "
        f"left alone (retentiond does not guess which column names the {parent} row)"
    )
    return None


def _other_referrers(
    generations: Sequence[_Generation], foreign_keys: Mapping[str, list[Any]]
) -> Iterator[str]:
    """Describe lines for other tables' foreign keys pointing at the tables deleted from.

    Keys among the deleted tables need nothing: a batch deletes the referring rows first.
    """
    deleted: set[str] = set()
    for generation in generations:
        deleted.add(generation.table)
        deleted.update(link.table for link in generation.dependents)
        if generation.party is not None:
            deleted.add(generation.party.table)
    for table in sorted(set(foreign_keys) - deleted):
        for key in foreign_keys[table]:
            target = key.get("referred_table")
            if target not in deleted:
                continue
            columns = ", ".join(key.get("constrained_columns") or [])
            on_delete = str((key.get("options") or {}).get("ondelete") or "NO ACTION").upper()
            if on_delete in _FOLLOWS_DELETE:
                consequence = f"its rows follow (ON DELETE {on_delete})"
            else:
                consequence = (
                    f"ON DELETE {on_delete}: a batch fails while {table} still names a row it "
                    "deletes; purge that table first (a store listed before this one)"
                )
            yield f"note: {table}.{columns} refers to {target}; {consequence}"


def _order(generation: _Generation) -> str:
    steps = [f"lock the batch's rows of {generation.table} that are still expired"]
    steps.extend(f"delete {link.table}" for link in generation.dependents)
    if generation.party is not None:
        steps.append(
            f"delete the {generation.party.table} rows no remaining "
            f"{generation.party.via.table} row points to"
        )
    steps.append(f"delete {generation.table}")
    return ", ".join(steps)


def _read_rows(
    statement: TextClause, params: dict[str, Any], connection: Connection
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(statement, params)]


def _column_names(inspector: Inspector, table: str) -> set[str]:
    return {column["name"] for column in inspector.get_columns(table)}


def _leading_index(inspector: Inspector, table: str, column: str) -> str | None:
    """An index (or the primary key) whose first column is `column`."""
    for index in inspector.get_indexes(table):
        names = index.get("column_names") or []
        if names and names[0] == column:
            return str(index.get("name") or "unnamed")
    primary = inspector.get_pk_constraint(table).get("constrained_columns") or []
    if primary and primary[0] == column:
        return "PRIMARY KEY"
    return None


def _is_indexed(inspector: Inspector, table: str, column: str) -> bool:
    return _leading_index(inspector, table, column) is not None


def _floor(kind: TimeKind) -> datetime:
    return DATETIME_FLOOR.replace(tzinfo=UTC) if kind == "aware" else DATETIME_FLOOR

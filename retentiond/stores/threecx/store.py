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

Whose a call is: the numbers of its parties (cl_party_info through cl_participants, cl_quality;
in cdroutput the source and destination numbers of every segment of the same call). A hold by
number keeps, and `erase` removes, the whole call when any of them is one of the subject's stored
forms (blanks and `-./()` ignored, as `Subject.matches` does). The numbers are bound parameters.

Anonymization rewrites the configured `table.column` fields of every row of a call. A
cl_party_info row can serve many calls (an extension's row serves all of its calls), so it is
never rewritten in place: the anonymized call's participants get an anonymized copy, and the
original goes once no call points to it any more, as after a deletion.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Connection, TextClause, text
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import sqltypes

from retentiond.config.model import ConnectionConfig, ThreeCxCallsStoreConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.anonymize import (
    Blank,
    Constant,
    MapValues,
    Transform,
    TruncateDigits,
    anonymize_row,
)
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchFailed, BatchResult, Found, Store, Survey
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import PostgreSQL
from retentiond.stores.db.errors import describe
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.retries import UNCONFIRMED_DELETED_MAX, RolledBack
from retentiond.stores.db.rows import read_rows
from retentiond.stores.db.timecols import (
    DATETIME_FLOOR,
    KIND_WORDS,
    TimeKind,
    stored_instant,
    time_bound,
    time_kind,
)

log = structlog.get_logger()

UNDATED = "undated"  # a call without a start time: never expires, counted in the survey

_FOLLOWS_DELETE = ("CASCADE", "SET NULL", "SET DEFAULT")

# The columns that hold a party's number, where 3CX has them. display_name and firstlastname
# hold names, which a subject (numbers, extensions) never matches.
_NUMBER_COLUMNS = {
    "cl_party_info": ("dn", "caller_number", "did_number"),
    "cl_quality": ("a_caller", "b_caller", "a_number", "b_number"),
    "cdroutput": (
        "source_dn_number",
        "source_participant_phone_number",
        "source_participant_trunk_did",
        "destination_dn_number",
        "destination_participant_phone_number",
    ),
}
# What `Subject.matches` takes out of a stored number before comparing: blanks and -./()
_SEPARATORS = " \t\r\n-./()"
_NO_SEPARATORS = str.maketrans("", "", _SEPARATORS)
# Wall-clock columns: a hold window is widened by this on each side, so no DST shift lets a
# held call out (3CX writes timestamptz; this is for a database that does not).
_LOCAL_WINDOW_MARGIN = timedelta(hours=2)

# The tables of both layouts whose rows belong to a call, for `anonymize:` keys.
_LAYOUT_TABLES = (
    "cl_calls",
    "cl_participants",
    "cl_party_info",
    "cl_segments",
    "cl_quality",
    "cdroutput",
    "cdrbilling",
)

# For the 3cx preset (`action: anonymize`): every column of either layout that carries a number,
# a name or a file name naming them; the layout this PBX does not have is ignored. Numbers keep
# all but their last three digits (area and exchange stay for statistics); names and caller ids
# that may be either are blanked. Internal ids (uuids, participant ids) only link a call's rows.
DEFAULT_ANONYMIZE: dict[str, str | dict[str, Any]] = {
    "cl_party_info.dn": "truncate_digits",
    "cl_party_info.caller_number": "truncate_digits",
    "cl_party_info.did_number": "truncate_digits",
    "cl_party_info.display_name": "blank",
    "cl_party_info.firstlastname": "blank",
    "cl_participants.recording_url": "blank",
    "cl_quality.a_caller": "blank",
    "cl_quality.b_caller": "blank",
    "cl_quality.a_number": "truncate_digits",
    "cl_quality.b_number": "truncate_digits",
    "cl_quality.a_name": "blank",
    "cl_quality.b_name": "blank",
    "cdroutput.source_dn_number": "truncate_digits",
    "cdroutput.source_dn_name": "blank",
    "cdroutput.source_participant_name": "blank",
    "cdroutput.source_participant_phone_number": "truncate_digits",
    "cdroutput.source_participant_trunk_did": "truncate_digits",
    "cdroutput.destination_dn_number": "truncate_digits",
    "cdroutput.destination_dn_name": "blank",
    "cdroutput.destination_participant_name": "blank",
    "cdroutput.destination_participant_phone_number": "truncate_digits",
}


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
class _Numbers:
    """Columns that name a call's parties, in rows reached from the call's row.

    The rows are those whose `call_column` equals the call's `call_key`; for cl_party_info,
    the rows the call's participants point to (`through`).
    """

    table: str
    columns: tuple[str, ...]
    call_column: str
    call_key: str
    through: _PartyInfo | None = None


@dataclass(frozen=True)
class _Rewrite:
    """One table's share of anonymizing a call: its rows by `call_column`, its transforms."""

    table: str
    call_column: str
    transforms: Mapping[str, Transform]


@dataclass(frozen=True)
class _Anonymization:
    """What anonymizing a call of one generation rewrites."""

    rewrites: tuple[_Rewrite, ...]
    party: Mapping[str, Transform]  # cl_party_info: copied, never rewritten in place
    party_columns: tuple[str, ...]  # every column of cl_party_info but its key, for the copy
    ignored: tuple[str, ...]  # tables of the other layout, or absent in this version


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
    numbers: tuple[_Numbers, ...] = ()  # whose a call is; empty: this layout cannot tell
    # The column naming the call a row of `table` belongs to, where rows are segments
    # (cdroutput.call_history_id); None: each row of `table` is a call of its own.
    call: str | None = None


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


@dataclass
class _Deleted:
    """One attempt at a deletion batch: the calls it locked and deleted, their times, and the
    rows per table. `unconfirmed` calls went with a commit whose reply was lost and that no
    check could attribute. Keys never show in a repr."""

    keys: tuple[Any, ...] = field(repr=False)
    times: list[Any] = field(repr=False)
    counts: dict[str, int]
    unconfirmed: int = 0


# Result columns of the anonymizing reads; no 3CX column is named like this.
_ROW = "retentiond_row"
_CALL = "retentiond_call"


@dataclass(frozen=True)
class _Clause:
    """An SQL condition on the call row `c` with its bound parameters."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)


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
        self._anonymization: dict[str, _Anonymization] = {}
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
            generations.append(self._cl_generation(inspector, tables, foreign_keys))
        if "cdroutput" in tables:
            generations.append(self._cdroutput_generation(inspector, tables, foreign_keys))
        if not generations:
            raise self._no_call_history(tables)
        self._generations = tuple(generations)
        self._other_referrers = tuple(_other_referrers(self._generations, foreign_keys))
        if self._store.anonymize:
            self._anonymization = self._plan_anonymization(inspector, tables, self._store.anonymize)

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
        numbers = _cl_numbers(inspector, dependents, party)
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
            time_index=leading_index(inspector, calls, "start_time"),
            dependents=tuple(dependents),
            party=party,
            notes=tuple(notes),
            numbers=numbers,
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
            time_index=leading_index(inspector, calls, "cdr_started_at"),
            dependents=tuple(dependents),
            party=None,
            notes=tuple(notes),
            numbers=_cdroutput_numbers(inspector),
            call="call_history_id"
            if "call_history_id" in _column_names(inspector, calls)
            else None,
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

    # -- anonymization plan ----------------------------------------------------------------------

    def _plan_anonymization(
        self, inspector: Inspector, tables: set[str], transforms: Mapping[str, Transform]
    ) -> dict[str, _Anonymization]:
        """Which rows of a call each `table.column` transform rewrites, checked against the
        tables found: a name that matches nothing would leave personal data in place."""
        by_table: dict[str, dict[str, Transform]] = {}
        for name, transform in transforms.items():
            table, _, column = name.partition(".")
            if not table or not column or "." in column:
                raise StoreError(
                    f"{self.label}: anonymize: {name!r} is not table.column; write the table "
                    "and the column, e.g. cl_party_info.caller_number"
                )
            if table not in _LAYOUT_TABLES:
                raise StoreError(
                    f"{self.label}: anonymize: {name} names table {table}, which is not part of "
                    f"3CX's call history; use one of {', '.join(_LAYOUT_TABLES)}"
                )
            by_table.setdefault(table, {})[column] = transform
        return {
            generation.name: self._anonymization_of(inspector, tables, generation, by_table)
            for generation in self._generations
        }

    def _anonymization_of(
        self,
        inspector: Inspector,
        tables: set[str],
        generation: _Generation,
        by_table: Mapping[str, Mapping[str, Transform]],
    ) -> _Anonymization:
        call_columns = {generation.table: generation.key}
        call_columns.update({link.table: link.column for link in generation.dependents})
        protected = {generation.key, *call_columns.values()}
        party = generation.party
        if party is not None:
            protected |= {party.key, party.via.column}
        family = _family_tables(generation)
        rewrites: list[_Rewrite] = []
        party_transforms: dict[str, Transform] = {}
        party_columns: tuple[str, ...] = ()
        ignored: list[str] = []
        for table, transforms in by_table.items():
            if table not in family or table not in tables:
                ignored.append(table)
                continue
            self._check_transforms(inspector, table, transforms, protected)
            if table in call_columns:
                rewrites.append(_Rewrite(table, call_columns[table], dict(transforms)))
            elif party is not None and table == party.table:
                party_transforms = dict(transforms)
                party_columns = self._party_columns(inspector, party)
            else:
                raise StoreError(
                    f"{self.label}: anonymize: {table} is left alone by this store (see "
                    f"`retentiond check`): its rows cannot be told apart by call; remove the "
                    f"{table}.* fields from anonymize: or give {table} a column naming the call"
                )
        if not rewrites and not party_transforms:
            raise StoreError(
                f"{self.label}: anonymize: no field names a table of the {generation.name} "
                "layout, so its calls would keep every number and name; add fields of "
                f"{', '.join(sorted(family & tables))} (the 3cx preset lists them all)"
            )
        return _Anonymization(tuple(rewrites), party_transforms, party_columns, tuple(ignored))

    def _check_transforms(
        self,
        inspector: Inspector,
        table: str,
        transforms: Mapping[str, Transform],
        protected: set[str],
    ) -> None:
        columns = {column["name"]: column for column in inspector.get_columns(table)}
        for name, transform in transforms.items():
            if name not in columns:
                raise StoreError(
                    f"{self.label}: anonymize: {table}.{name} names no column of {table} (its "
                    f"columns: {', '.join(columns)}); correct the name or remove it"
                )
            if name in protected:
                raise StoreError(
                    f"{self.label}: anonymize: {table}.{name} links the rows of a call; it "
                    "cannot be anonymized, remove it"
                )
            writes_text = isinstance(transform, Blank | TruncateDigits | MapValues)
            if writes_text and not isinstance(columns[name]["type"], sqltypes.String):
                raise StoreError(
                    f"{self.label}: anonymize: {table}.{name} is {columns[name]['type']}, not "
                    f"text, and {transform.name} writes text; remove it or use another transform"
                )

    def _party_columns(self, inspector: Inspector, party: _PartyInfo) -> tuple[str, ...]:
        """cl_party_info's columns for an anonymized copy, whose key the database must assign."""
        columns = {column["name"]: column for column in inspector.get_columns(party.table)}
        key = columns[party.key]
        if key.get("default") is None and not key.get("identity"):
            raise StoreError(
                f"{self.label}: anonymize: {party.table}.{party.key} has no default, so no "
                f"anonymized copy of a {party.table} row can be made (its rows serve several "
                f"calls and are not rewritten in place); remove the {party.table}.* fields "
                "from anonymize:"
            )
        return tuple(name for name in columns if name != party.key)

    # -- describing ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        lines = [f"{self.label}: {self._db.server}"]
        for generation in self._generations:
            lines.extend(self._describe_generation(generation))
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
        lines.extend(self._describe_anonymization())
        lines.append(f"batches of up to {self._store.batch_size} calls, oldest first")
        return lines

    def _describe_anonymization(self) -> list[str]:
        lines = []
        plans = self._anonymization.values()
        ignored = set.intersection(*(set(plan.ignored) for plan in plans)) if plans else set()
        for generation in self._generations:
            plan = self._anonymization.get(generation.name)
            if plan is None:
                continue
            for rewrite in plan.rewrites:
                for column, transform in rewrite.transforms.items():
                    lines.append(f"anonymize: {rewrite.table}.{column}: {transform.describe()}")
            if generation.party is not None and plan.party:
                party = generation.party
                for column, transform in plan.party.items():
                    lines.append(f"anonymize: {party.table}.{column}: {transform.describe()}")
                lines.append(
                    f"anonymize: {party.table} rows are shared by calls: an anonymized call's "
                    f"{party.via.table} point to an anonymized copy; the original goes when no "
                    "call points to it any more"
                )
        if ignored:
            lines.append(
                f"anonymize: fields of {', '.join(sorted(ignored))} ignored: no such table on "
                "this PBX (the other 3CX layout, or a table this version lacks)"
            )
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
        generation: _Generation,
        cutoff: datetime,
        holds: Holds,
        since: datetime | None,
    ) -> _Counts:
        time = f"c.{self._q(generation.time)}"
        due = self._due(generation, cutoff, since)
        scopes = [
            self._hold_clause(generation, scope, f"h{i}") for i, scope in enumerate(holds.scopes)
        ]
        held = _any(scopes)
        columns = [
            "COUNT(*)",
            f"COUNT(*) FILTER (WHERE {due.sql} AND NOT {held.sql})",
            f"MIN({time}) FILTER (WHERE {time} >= :floor)",
            f"COUNT(*) FILTER (WHERE {time} IS NULL)",
            f"COUNT(*) FILTER (WHERE {due.sql} AND {held.sql})",
            *(f"COUNT(*) FILTER (WHERE {due.sql} AND {scope.sql})" for scope in scopes),
        ]
        row = connection.execute(
            text(f"SELECT {', '.join(columns)} FROM {self._q(generation.table)} AS c"),
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
        for generation in self._generations:
            size = self._store.batch_size
            due = self._due(generation, cutoff, None)
            held = self._held(generation, holds)
            time = f"c.{self._q(generation.time)}"
            statement = text(
                f"SELECT c.{self._q(generation.key)}, {time} "
                f"FROM {self._q(generation.table)} AS c "
                f"WHERE {due.sql} AND NOT {held.sql} ORDER BY {time} LIMIT :n"
            )
            params = {**due.params, **held.params, "n": size}
            while True:
                rows = self._db.retrying("planning a batch", partial(read_rows, statement, params))
                if not rows:
                    break
                number += 1
                batch = self._batch(number, generation, rows, _Planned(generation.name, (), holds))
                self._applied = None
                yield batch
                applied = self._applied
                if applied is None or applied[0] is not batch:
                    return  # not applied (a dry run): the next batch would be this one again
                if len(rows) < size or applied[1].deleted == 0:
                    break  # none left, or none deletable: the verifying survey tells

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        """The subject's unheld calls of any age, walked forward by key (deleted or not)."""
        number = 0
        for generation in self._generations:
            names = self._names(generation, subject, "subject")
            if names is None:
                continue  # this layout cannot tell whose a call is
            held = self._held(generation, holds)
            planned = _Planned(generation.name, (), holds, subject)
            for rows in self._walk(generation, _all_of(names, _not(held)), by_time=False):
                number += 1
                yield self._batch(number, generation, rows, planned)

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        """Unheld calls in [since, cutoff), walked forward by (time, key): each is visited once."""
        self._require_anonymization()
        number = 0
        for generation in self._generations:
            due = self._due(generation, cutoff, since)
            held = self._held(generation, holds)
            planned = _Planned(generation.name, (), holds, anonymize=True)
            for rows in self._walk(generation, _all_of(due, _not(held)), by_time=True):
                number += 1
                yield self._batch(number, generation, rows, planned)

    def _walk(
        self, generation: _Generation, where: _Clause, *, by_time: bool
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of (key, time) of the calls `where` selects, forward from the last page read.

        A cursor, not a re-read: a page that was not applied, or that changed nothing, is never
        planned again, so a walk always ends.
        """
        key, time = f"c.{self._q(generation.key)}", f"c.{self._q(generation.time)}"
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
                f"SELECT {key}, {time} FROM {self._q(generation.table)} AS c "
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
        self, number: int, generation: _Generation, rows: list[tuple[Any, ...]], planned: _Planned
    ) -> Batch:
        return Batch(
            number=number,
            planned=len(rows),
            span=self._day_span(generation, [row[1] for row in rows]),
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
            names = self._names(generation, subject, "subject")
            if names is None:
                continue
            held = self._held(generation, holds)
            for rows in self._walk(generation, names, by_time=False):
                yield from self._found(generation, subject, held, [row[0] for row in rows])

    def _found(
        self, generation: _Generation, subject: Subject, held: _Clause, keys: list[Any]
    ) -> Iterator[Found]:
        key, time = self._q(generation.key), self._q(generation.time)
        statement = text(
            f"SELECT c.{key}, c.{time}, {held.sql} FROM {self._q(generation.table)} AS c "
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
                if (matched := {value for value in values if _is_subjects(subject, value)})
            }
            if instant is not None:
                fields[f"{generation.table}.{generation.time}"] = instant.astimezone(
                    self._zone
                ).isoformat(sep=" ", timespec="seconds")
            yield Found(when=instant, held=bool(is_held), where="call", fields=fields)

    def _named_values(
        self, connection: Connection, *, generation: _Generation, keys: list[Any]
    ) -> dict[Any, dict[str, set[str]]]:
        """Per call, every stored value of its number columns (`table.column` → values)."""
        values: dict[Any, dict[str, set[str]]] = {}
        for numbers in generation.numbers:
            source, link = self._numbers_source(numbers)
            columns = ", ".join(f"n.{self._q(column)}" for column in numbers.columns)
            rows = connection.execute(
                text(
                    f"SELECT c.{self._q(generation.key)}, {columns} "
                    f"FROM {self._q(generation.table)} AS c JOIN {source} ON {link} "
                    f"WHERE c.{self._q(generation.key)} = ANY(:keys)"
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

    def _guard(self, generation: _Generation, planned: _Planned, cutoff: datetime) -> _Clause:
        """What a planned call must still be to be acted on: as planned, never wider."""
        time = f"c.{self._q(generation.time)}"
        bound = {"bound": self._bound(generation, cutoff)}
        held = _not(self._held(generation, planned.holds))
        if planned.subject is None:
            return _all_of(_Clause(f"{time} < :bound", bound), held)
        names = self._names(generation, planned.subject, "subject")
        if names is None:
            raise TypeError("an erasure planned on a layout that cannot tell whose a call is")
        erasable = _Clause(f"({time} < :bound OR {time} IS NULL)", bound)
        return _all_of(erasable, names, held)

    def _apply_delete(
        self, generation: _Generation, planned: _Planned, guard: _Clause, number: int
    ) -> BatchResult:
        def attempt(connection: Connection) -> _Deleted:
            return self._delete(connection, generation, list(planned.keys), guard)

        def settle(connection: Connection, lost: _Deleted) -> _Deleted:
            """The batch's commit got no reply: keep its result if its calls are gone, else
            delete again; when only some are gone, the lost commit's calls are unconfirmed."""
            # Locking waits for the lost transaction, should the server still hold it.
            present = len(self._lock(connection, generation, list(lost.keys), _Clause("TRUE")))
            if present == 0:
                return self._settled(number, "went through", lost)
            again = attempt(connection)
            again.unconfirmed = lost.unconfirmed
            if present >= len(lost.keys):
                return self._settled(number, "did not go through", again)
            # Some are gone: taken by someone else after it rolled back, or by it after all
            again.unconfirmed += len(lost.keys)
            return self._settled(number, "unknown", again)

        try:
            deleted = self._db.retrying("deleting a batch", attempt, write=True, settle=settle)
        except RolledBack as error:
            raise BatchFailed(
                str(error), BatchResult(deleted=0), error.code, error.sqlstate
            ) from None
        log.debug(
            "3cx store deleted a batch",
            store=self.label,
            generation=generation.name,
            calls=len(deleted.times),
            **deleted.counts,
        )
        result = BatchResult(
            deleted=len(deleted.times), span=self._day_span(generation, deleted.times)
        )
        if deleted.unconfirmed:
            # As a reconciled run says it: at most this many more, unconfirmed
            result = replace(result, counts={UNCONFIRMED_DELETED_MAX: deleted.unconfirmed})
        return result

    def _settled(self, number: int, commit: str, kept: _Deleted) -> _Deleted:
        """Log what became of a batch's commit whose reply was lost, and keep `kept`."""
        log.warning(
            "3cx store checked a lost commit",
            store=self.label,
            batch=number,
            commit=commit,
            deleted=len(kept.times),
            **({UNCONFIRMED_DELETED_MAX: kept.unconfirmed} if kept.unconfirmed else {}),
        )
        return kept

    def _lock(
        self, connection: Connection, generation: _Generation, keys: list[Any], guard: _Clause
    ) -> list[tuple[Any, Any]]:
        """Lock the planned calls still matching `guard`, in key order; (key, time) of each.

        Rows that belong to a call are changed only for a call that is still there and still
        due, and no one changes it until the batch commits.
        """
        key, time = self._q(generation.key), self._q(generation.time)
        rows = connection.execute(
            text(
                f"SELECT c.{key}, c.{time} FROM {self._q(generation.table)} AS c "
                f"WHERE c.{key} = ANY(:keys) AND {guard.sql} ORDER BY c.{key} FOR UPDATE OF c"
            ),
            {**guard.params, "keys": keys},
        )
        return [(row[0], row[1]) for row in rows]

    def _delete(
        self, connection: Connection, generation: _Generation, keys: list[Any], guard: _Clause
    ) -> _Deleted:
        """One batch: the calls' rows in dependency order, then the calls."""
        keys = [key for key, _ in self._lock(connection, generation, keys, guard)]
        if not keys:
            return _Deleted((), [], {})
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
        table, key, time = (
            self._q(generation.table),
            self._q(generation.key),
            self._q(generation.time),
        )
        times = list(
            connection.execute(
                text(f"DELETE FROM {table} WHERE {key} = ANY(:keys) RETURNING {time}"),
                {"keys": keys},
            ).scalars()
        )
        return _Deleted(tuple(keys), times, counts)

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

    # -- anonymizing -----------------------------------------------------------------------------

    def _apply_anonymize(
        self, generation: _Generation, planned: _Planned, guard: _Clause
    ) -> BatchResult:
        plan = self._anonymization[generation.name]
        try:
            locked, changed = self._db.retrying(
                "anonymizing a batch",
                lambda connection: self._anonymize(
                    connection, generation, plan, list(planned.keys), guard
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
            span=self._day_span(generation, times),
            anonymized=len(changed),
            counts={"unchanged": unchanged},
        )

    def _anonymize(
        self,
        connection: Connection,
        generation: _Generation,
        plan: _Anonymization,
        keys: list[Any],
        guard: _Clause,
    ) -> tuple[list[tuple[Any, Any]], set[Any]]:
        """One batch in one transaction: lock the calls, rewrite their rows; the calls changed."""
        locked = self._lock(connection, generation, keys, guard)
        keys = [key for key, _ in locked]
        changed: set[Any] = set()
        if not keys:
            return locked, changed
        for rewrite in plan.rewrites:
            changed |= self._rewrite_rows(connection, rewrite, keys)
        if plan.party and generation.party is not None:
            changed |= self._copy_party_info(connection, generation, plan, keys)
        return locked, changed

    def _rewrite_rows(self, connection: Connection, rewrite: _Rewrite, keys: list[Any]) -> set[Any]:
        """Rewrite the fields of `rewrite.table`'s rows of these calls, where a value changes.

        Rows are addressed by ctid: 3CX's tables do not all have a key (cl_quality), and the
        rows are locked, so no ctid moves before the update.
        """
        table, call = self._q(rewrite.table), self._q(rewrite.call_column)
        columns = ", ".join(self._q(column) for column in rewrite.transforms)
        rows = connection.execute(
            text(
                f"SELECT CAST(ctid AS text) AS {_ROW}, {call} AS {_CALL}, {columns} FROM {table} "
                f"WHERE {call} = ANY(:keys) FOR UPDATE"
            ),
            {"keys": keys},
        ).mappings()
        changed: set[Any] = set()
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            changes = anonymize_row(rewrite.transforms, dict(row))
            if changes:
                changed.add(row[_CALL])
                names = tuple(sorted(changes))
                params = {f"v{i}": changes[name] for i, name in enumerate(names)}
                updates.setdefault(names, []).append({**params, _ROW: row[_ROW]})
        for names, params_list in updates.items():
            sets = ", ".join(f"{self._q(name)} = :v{i}" for i, name in enumerate(names))
            connection.execute(
                text(f"UPDATE {table} SET {sets} WHERE ctid = CAST(:{_ROW} AS tid)"),
                params_list,
            )
        return changed

    def _copy_party_info(
        self, connection: Connection, generation: _Generation, plan: _Anonymization, keys: list[Any]
    ) -> set[Any]:
        """Point these calls' participants at anonymized copies of their party rows.

        A party row serves every call of an extension, young ones too: rewriting it would
        anonymize calls that are not due. The originals no call points to any more are deleted.
        """
        party = generation.party
        assert party is not None  # checked by the caller
        via = party.via
        call_column = next(link.column for link in generation.dependents if link.table == via.table)
        participants, parties = self._q(via.table), self._q(party.table)
        info, key, call = self._q(via.column), self._q(party.key), self._q(call_column)
        columns = ", ".join(f"n.{self._q(column)}" for column in plan.party)
        rows = connection.execute(
            text(
                f"SELECT p.{call} AS {_CALL}, n.{key} AS {_ROW}, {columns} FROM {participants} "
                f"AS p JOIN {parties} AS n ON n.{key} = p.{info} WHERE p.{call} = ANY(:keys) "
                "FOR UPDATE OF p"
            ),
            {"keys": keys},
        ).mappings()
        calls_of: dict[Any, set[Any]] = {}
        changes_of: dict[Any, dict[str, Any]] = {}
        for row in rows:
            changes = anonymize_row(plan.party, dict(row))
            if changes:
                calls_of.setdefault(row[_ROW], set()).add(row[_CALL])
                changes_of[row[_ROW]] = changes
        for original, changes in changes_of.items():
            copy = self._insert_party_copy(connection, party, plan, original, changes)
            connection.execute(
                text(
                    f"UPDATE {participants} SET {info} = :copy "
                    f"WHERE {info} = :original AND {call} = ANY(:keys)"
                ),
                {"copy": copy, "original": original, "keys": keys},
            )
        if changes_of:
            self._delete_unused_party_info(connection, party, list(changes_of))
        return {call_key for calls in calls_of.values() for call_key in calls}

    def _insert_party_copy(
        self,
        connection: Connection,
        party: _PartyInfo,
        plan: _Anonymization,
        original: Any,
        changes: Mapping[str, Any],
    ) -> Any:
        names = [self._q(column) for column in plan.party_columns]
        params: dict[str, Any] = {"original": original}
        values = []
        for i, column in enumerate(plan.party_columns):
            if column in changes:
                params[f"v{i}"] = changes[column]
                values.append(f":v{i}")
            else:
                values.append(self._q(column))
        table, key = self._q(party.table), self._q(party.key)
        return connection.execute(
            text(
                f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} "
                f"FROM {table} WHERE {key} = :original RETURNING {key}"
            ),
            params,
        ).scalar_one()

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
            statement, params = self._group_sizes(generation, plan, cutoff)
            size = self._db.retrying(
                "measuring the smallest group", partial(_read_scalar, statement, params)
            )
            if size is not None:
                smallest = int(size) if smallest is None else min(smallest, int(size))
        return smallest

    def _group_sizes(
        self, generation: _Generation, plan: _Anonymization, cutoff: datetime
    ) -> tuple[TextClause, dict[str, Any]]:
        """The smallest group of one layout's expired calls, as one statement."""
        key = f"c.{self._q(generation.key)}"
        parts = []
        for rewrite in plan.rewrites:
            columns = _grouping(rewrite.transforms)
            if not columns:
                continue
            if rewrite.table == generation.table:
                parts.append(self._row_text("c", columns))
                continue
            parts.append(
                f"ARRAY(SELECT {self._row_text('t', columns)} FROM {self._q(rewrite.table)} AS t "
                f"WHERE t.{self._q(rewrite.call_column)} = {key} ORDER BY 1)"
            )
        party = generation.party
        party_columns = _grouping(plan.party)
        if party is not None and party_columns:
            via = party.via
            call_column = next(
                link.column for link in generation.dependents if link.table == via.table
            )
            parts.append(
                f"ARRAY(SELECT {self._row_text('n', party_columns)} FROM {self._q(via.table)} "
                f"AS p JOIN {self._q(party.table)} AS n ON n.{self._q(party.key)} = "
                f"p.{self._q(via.column)} WHERE p.{self._q(call_column)} = {key} ORDER BY 1)"
            )
        alike = f"CAST(ROW({', '.join(parts)}) AS text)" if parts else "''"
        if generation.call is None:
            call = f"CAST({key} AS text)"
        else:  # a segment without a call is a call of its own
            call = (
                f"COALESCE('c' || CAST(c.{self._q(generation.call)} AS text), CAST({key} AS text))"
            )
        due = self._due(generation, cutoff, None)
        statement = text(
            "SELECT MIN(size) FROM (SELECT COUNT(*) AS size FROM ("
            f"SELECT array_agg({_ROW} ORDER BY {_ROW}) AS alike FROM ("
            f"SELECT {call} AS {_CALL}, {alike} AS {_ROW} FROM {self._q(generation.table)} AS c "
            f"WHERE {due.sql}) AS segments GROUP BY {_CALL}) AS calls GROUP BY alike) AS groups"
        )
        return statement, dict(due.params)

    def _row_text(self, alias: str, columns: Sequence[str]) -> str:
        """Some columns of one row as one text, NULL told apart from the empty string."""
        values = ", ".join(f"{alias}.{self._q(column)}" for column in columns)
        return f"CAST(ROW({values}) AS text)"

    def _require_anonymization(self) -> None:
        if not self._anonymization:
            raise StoreError(
                f"{self.label}: this store has no anonymize: transforms; the 3cx preset gives "
                "them, or list table.column: transform under the store"
            )

    # -- holds and subjects as SQL ---------------------------------------------------------------

    def _due(self, generation: _Generation, cutoff: datetime, since: datetime | None) -> _Clause:
        """Calls older than the cutoff (and not older than `since`)."""
        time = f"c.{self._q(generation.time)}"
        params = {"bound": self._bound(generation, cutoff)}
        if since is None:
            return _Clause(f"{time} < :bound", params)
        params["since"] = self._bound(generation, since)
        return _Clause(f"({time} < :bound AND {time} >= :since)", params)

    def _held(self, generation: _Generation, holds: Holds) -> _Clause:
        """Calls any of the holds covers."""
        return _any(
            [self._hold_clause(generation, scope, f"h{i}") for i, scope in enumerate(holds.scopes)]
        )

    def _hold_clause(self, generation: _Generation, scope: HoldScope, prefix: str) -> _Clause:
        """Calls one hold covers: in its window (or undated) and, if it names someone, theirs.

        A layout without number columns cannot tell whose a call is: the hold keeps them all.
        """
        time = f"c.{self._q(generation.time)}"
        start, end = self._window(generation, scope)
        sides, params = [], {}
        if start is not None:
            sides.append(f"{time} >= :{prefix}_start")
            params[f"{prefix}_start"] = start
        if end is not None:
            sides.append(f"{time} < :{prefix}_end")
            params[f"{prefix}_end"] = end
        parts = [_Clause(f"({time} IS NULL OR ({' AND '.join(sides)}))", params)] if sides else []
        if scope.subject:
            names = self._names(generation, scope.subject, f"{prefix}_subject")
            if names is not None:
                parts.append(names)
        return _all_of(*parts)

    def _window(self, generation: _Generation, scope: HoldScope) -> tuple[Any, Any]:
        if generation.kind == "aware":
            return (
                None if scope.start is None else scope.start.astimezone(UTC),
                None if scope.end is None else scope.end.astimezone(UTC),
            )

        def wall(instant: datetime) -> datetime:
            return instant.astimezone(self._zone).replace(tzinfo=None)

        return (
            None if scope.start is None else wall(scope.start) - _LOCAL_WINDOW_MARGIN,
            None if scope.end is None else wall(scope.end) + _LOCAL_WINDOW_MARGIN,
        )

    def _names(self, generation: _Generation, subject: Subject, param: str) -> _Clause | None:
        """Calls with a party number that is one of the subject's stored forms; None when this
        layout has no number columns."""
        if not generation.numbers:
            return None
        tests = []
        for numbers in generation.numbers:
            source, link = self._numbers_source(numbers)
            matches = " OR ".join(
                f"translate(n.{self._q(column)}, :separators, '') = ANY(:{param})"
                for column in numbers.columns
            )
            tests.append(f"EXISTS (SELECT 1 FROM {source} WHERE {link} AND ({matches}))")
        return _Clause(
            f"({' OR '.join(tests)})",
            {param: sorted(subject.values), "separators": _SEPARATORS},
        )

    def _numbers_source(self, numbers: _Numbers) -> tuple[str, str]:
        """FROM clause (`n` holds the columns) and the condition joining it to the call `c`."""
        call = f"c.{self._q(numbers.call_key)}"
        if numbers.through is None:
            return (
                f"{self._q(numbers.table)} AS n",
                f"n.{self._q(numbers.call_column)} = {call}",
            )
        via = numbers.through.via
        return (
            f"({self._q(via.table)} AS p JOIN {self._q(numbers.table)} AS n "
            f"ON n.{self._q(numbers.through.key)} = p.{self._q(via.column)})",
            f"p.{self._q(numbers.call_column)} = {call}",
        )

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


def _grouping(transforms: Mapping[str, Transform]) -> list[str]:
    """The transformed columns that can tell calls apart: not blanked, not made constant."""
    return sorted(
        column
        for column, transform in transforms.items()
        if transform.groups and not isinstance(transform, Blank | Constant)
    )


def _read_scalar(statement: TextClause, params: dict[str, Any], connection: Connection) -> Any:
    return connection.execute(statement, params).scalar()


def _column_names(inspector: Inspector, table: str) -> set[str]:
    return {column["name"] for column in inspector.get_columns(table)}


def _is_indexed(inspector: Inspector, table: str, column: str) -> bool:
    return leading_index(inspector, table, column) is not None


def _floor(kind: TimeKind) -> datetime:
    return DATETIME_FLOOR.replace(tzinfo=UTC) if kind == "aware" else DATETIME_FLOOR


def _cl_numbers(
    inspector: Inspector, dependents: Sequence[_Link], party: _PartyInfo | None
) -> tuple[_Numbers, ...]:
    """Where a cl_calls call's numbers are: its parties' rows, and its quality reports."""
    links = {link.table: link for link in dependents}
    found = []
    if party is not None and party.via.table in links:
        columns = _present(inspector, party.table, _NUMBER_COLUMNS["cl_party_info"])
        if columns:
            found.append(_Numbers(party.table, columns, links[party.via.table].column, "id", party))
    quality = links.get("cl_quality")
    if quality is not None:
        columns = _present(inspector, quality.table, _NUMBER_COLUMNS["cl_quality"])
        if columns:
            found.append(_Numbers(quality.table, columns, quality.column, "id"))
    return tuple(found)


def _cdroutput_numbers(inspector: Inspector) -> tuple[_Numbers, ...]:
    """A cdroutput row's own numbers, and those of the other segments of its call: a hold or an
    erasure takes the whole call, not the one segment that shows the number."""
    columns = _present(inspector, "cdroutput", _NUMBER_COLUMNS["cdroutput"])
    if not columns:
        return ()
    found = [_Numbers("cdroutput", columns, "cdr_id", "cdr_id")]
    if "call_history_id" in _column_names(inspector, "cdroutput"):
        found.append(_Numbers("cdroutput", columns, "call_history_id", "call_history_id"))
    return tuple(found)


def _present(inspector: Inspector, table: str, wanted: Sequence[str]) -> tuple[str, ...]:
    names = _column_names(inspector, table)
    return tuple(column for column in wanted if column in names)


def _family_tables(generation: _Generation) -> set[str]:
    """The tables of a generation's layout, found here or not."""
    if generation.name == "cdroutput":
        return {"cdroutput", "cdrbilling"}
    return {"cl_calls", "cl_participants", "cl_party_info", "cl_segments", "cl_quality"}


def _is_subjects(subject: Subject, value: str) -> bool:
    """The Python twin of the SQL match in `_names`: separators out, then one of the forms."""
    return value.translate(_NO_SEPARATORS) in subject.values


def _all_of(*clauses: _Clause) -> _Clause:
    if not clauses:
        return _Clause("TRUE")
    params: dict[str, Any] = {}
    for clause in clauses:
        params.update(clause.params)
    return _Clause(f"({' AND '.join(clause.sql for clause in clauses)})", params)


def _any(clauses: Sequence[_Clause]) -> _Clause:
    if not clauses:
        return _Clause("FALSE")
    params: dict[str, Any] = {}
    for clause in clauses:
        params.update(clause.params)
    return _Clause(f"({' OR '.join(clause.sql for clause in clauses)})", params)


def _not(clause: _Clause) -> _Clause:
    return _Clause(f"(NOT {clause.sql})", clause.params)

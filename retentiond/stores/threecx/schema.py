"""The two layouts of 3CX's call history, found by reflection: which tables a call's rows are in,
how they link, where its numbers are, and what `describe` says about them.

- cl_* (v18, and v20 before Update 6): one row per call in cl_calls; its legs in cl_participants,
  whose numbers and names sit in cl_party_info (a row there may serve several calls); the call's
  steps in cl_segments and voice quality reports in cl_quality.
- cdroutput (v20 Update 6 and later): one row per call segment, its billing in cdrbilling.

3CX's own databases carry no foreign keys between these tables: foreign keys that do exist
decide which column links a table, else 3CX's column name does; a table linked by neither is
left alone and named.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine.reflection import Inspector

from retentiond.errors import StoreError
from retentiond.stores.db.dialects import POSTGRESQL
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.timecols import time_kind
from retentiond.stores.db.timekinds import KIND_WORDS, TimeKind

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


@dataclass(frozen=True)
class _Link:
    """A table whose rows belong to a row of another table through one column."""

    table: str
    column: str
    found_by: str  # for describe: the foreign key, or the column name 3CX uses
    indexed: bool


@dataclass(frozen=True)
class PartyInfo:
    """cl_party_info rows the deleted participants pointed to; kept while others still do."""

    table: str
    key: str
    via: _Link  # cl_participants.info_id


@dataclass(frozen=True)
class Numbers:
    """Columns that name a call's parties, in rows reached from the call's row.

    The rows are those whose `call_column` equals the call's `call_key`; for cl_party_info,
    the rows the call's participants point to (`through`).
    """

    table: str
    columns: tuple[str, ...]
    call_column: str
    call_key: str
    through: PartyInfo | None = None


@dataclass(frozen=True)
class Generation:
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
    party: PartyInfo | None
    notes: tuple[str, ...]  # what was not found or is left alone, and why
    numbers: tuple[Numbers, ...] = ()  # whose a call is; empty: this layout cannot tell
    # The column naming the call a row of `table` belongs to, where rows are segments
    # (cdroutput.call_history_id); None: each row of `table` is a call of its own.
    call: str | None = None


def cl_generation(
    inspector: Inspector, tables: set[str], foreign_keys: Mapping[str, list[Any]], label: str
) -> Generation:
    """The cl_* layout (cl_calls and the tables of its calls' rows) as found here."""
    calls = "cl_calls"
    kind = _require_call_columns(label, inspector, calls, "id", "start_time")
    notes: list[str] = []
    dependents = []
    absent = {
        "cl_segments": "cl_segments: not found; no call segments to delete",
        "cl_quality": ("cl_quality: not present in this 3CX version; no quality reports to delete"),
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
    party = _party_info(inspector, tables, foreign_keys, dependents, notes)
    numbers = _cl_numbers(inspector, dependents, party)
    return Generation(
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
    inspector: Inspector,
    tables: set[str],
    foreign_keys: Mapping[str, list[Any]],
    dependents: Sequence[_Link],
    notes: list[str],
) -> PartyInfo | None:
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
    via = _link(inspector, foreign_keys, "cl_participants", "info_id", "cl_party_info", "id", notes)
    return None if via is None else PartyInfo("cl_party_info", "id", via)


def cdroutput_generation(
    inspector: Inspector, tables: set[str], foreign_keys: Mapping[str, list[Any]], label: str
) -> Generation:
    """The cdroutput layout (cdroutput, cdrbilling) as found here."""
    calls = "cdroutput"
    kind = _require_call_columns(label, inspector, calls, "cdr_id", "cdr_started_at")
    notes: list[str] = []
    dependents = []
    if "cdrbilling" in tables:
        link = _link(inspector, foreign_keys, "cdrbilling", "cdr_id", calls, "cdr_id", notes)
        if link is not None:
            dependents.append(link)
    else:
        notes.append("cdrbilling: not present in this 3CX version; no billing rows to delete")
    return Generation(
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
        call="call_history_id" if "call_history_id" in _column_names(inspector, calls) else None,
    )


def _require_call_columns(
    label: str, inspector: Inspector, table: str, key: str, time: str
) -> TimeKind:
    columns = {column["name"]: column for column in inspector.get_columns(table)}
    missing = [name for name in (key, time) if name not in columns]
    if missing:
        raise StoreError(
            f"{label}: table {table} has no column {' and '.join(missing)}; this is not "
            f"a 3CX call history retentiond knows (its columns: {', '.join(columns)})"
        )
    kind = time_kind(columns[time]["type"], POSTGRESQL)
    if kind not in ("aware", "local"):
        raise StoreError(
            f"{label}: {table}.{time} has type {columns[time]['type']!r}; 3CX writes "
            "a timestamp there, so this is not a 3CX call history retentiond knows"
        )
    return kind


def describe_generation(generation: Generation) -> list[str]:
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
        lines.append(f"found: {generation.party.table}, linked from {via.table} by {via.found_by}")
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


def other_referrers(
    generations: Sequence[Generation], foreign_keys: Mapping[str, list[Any]]
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


def _order(generation: Generation) -> str:
    steps = [f"lock the batch's rows of {generation.table} that are still expired"]
    steps.extend(f"delete {link.table}" for link in generation.dependents)
    if generation.party is not None:
        steps.append(
            f"delete the {generation.party.table} rows no remaining "
            f"{generation.party.via.table} row points to"
        )
    steps.append(f"delete {generation.table}")
    return ", ".join(steps)


def _column_names(inspector: Inspector, table: str) -> set[str]:
    return {column["name"] for column in inspector.get_columns(table)}


def _is_indexed(inspector: Inspector, table: str, column: str) -> bool:
    return leading_index(inspector, table, column) is not None


def _cl_numbers(
    inspector: Inspector, dependents: Sequence[_Link], party: PartyInfo | None
) -> tuple[Numbers, ...]:
    """Where a cl_calls call's numbers are: its parties' rows, and its quality reports."""
    links = {link.table: link for link in dependents}
    found = []
    if party is not None and party.via.table in links:
        columns = _present(inspector, party.table, _NUMBER_COLUMNS["cl_party_info"])
        if columns:
            found.append(Numbers(party.table, columns, links[party.via.table].column, "id", party))
    quality = links.get("cl_quality")
    if quality is not None:
        columns = _present(inspector, quality.table, _NUMBER_COLUMNS["cl_quality"])
        if columns:
            found.append(Numbers(quality.table, columns, quality.column, "id"))
    return tuple(found)


def _cdroutput_numbers(inspector: Inspector) -> tuple[Numbers, ...]:
    """A cdroutput row's own numbers, and those of the other segments of its call: a hold or an
    erasure takes the whole call, not the one segment that shows the number."""
    columns = _present(inspector, "cdroutput", _NUMBER_COLUMNS["cdroutput"])
    if not columns:
        return ()
    found = [Numbers("cdroutput", columns, "cdr_id", "cdr_id")]
    if "call_history_id" in _column_names(inspector, "cdroutput"):
        found.append(Numbers("cdroutput", columns, "call_history_id", "call_history_id"))
    return tuple(found)


def _present(inspector: Inspector, table: str, wanted: Sequence[str]) -> tuple[str, ...]:
    names = _column_names(inspector, table)
    return tuple(column for column in wanted if column in names)


def family_tables(generation: Generation) -> set[str]:
    """The tables of a generation's layout, found here or not."""
    if generation.name == "cdroutput":
        return {"cdroutput", "cdrbilling"}
    return {"cl_calls", "cl_participants", "cl_party_info", "cl_segments", "cl_quality"}

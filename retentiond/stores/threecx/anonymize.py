"""Anonymizing 3CX calls: the `table.column` transforms checked against the layouts found, the
rows rewritten, and the smallest group of calls alike after it.

A cl_party_info row can serve many calls (an extension's row serves all of its calls), so it is
never rewritten in place: the anonymized call's participants get an anonymized copy, and the
original goes once no call points to it any more, as after a deletion. The 3cx preset's list of
fields is data of the config (`retentiond.config.presets.transforms.THREECX_ANONYMIZE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.sql import sqltypes

from retentiond.errors import StoreError
from retentiond.policy.anonymize import (
    Blank,
    Constant,
    MapValues,
    Transform,
    TruncateDigits,
    anonymize_row,
)
from retentiond.stores.threecx.deletion import delete_unused_party_info
from retentiond.stores.threecx.queries import CallQueries, Clause
from retentiond.stores.threecx.schema import Generation, PartyInfo, family_tables

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


@dataclass(frozen=True)
class _Rewrite:
    """One table's share of anonymizing a call: its rows by `call_column`, its transforms."""

    table: str
    call_column: str
    transforms: Mapping[str, Transform]


@dataclass(frozen=True)
class Anonymization:
    """What anonymizing a call of one generation rewrites."""

    rewrites: tuple[_Rewrite, ...]
    party: Mapping[str, Transform]  # cl_party_info: copied, never rewritten in place
    party_columns: tuple[str, ...]  # every column of cl_party_info but its key, for the copy
    ignored: tuple[str, ...]  # tables of the other layout, or absent in this version


_ROW = "retentiond_row"
_CALL = "retentiond_call"


def plan_anonymization(
    inspector: Inspector,
    tables: set[str],
    transforms: Mapping[str, Transform],
    generations: Sequence[Generation],
    label: str,
) -> dict[str, Anonymization]:
    """Which rows of a call each `table.column` transform rewrites, checked against the
    tables found: a name that matches nothing would leave personal data in place."""
    by_table: dict[str, dict[str, Transform]] = {}
    for name, transform in transforms.items():
        table, _, column = name.partition(".")
        if not table or not column or "." in column:
            raise StoreError(
                f"{label}: anonymize: {name!r} is not table.column; write the table "
                "and the column, e.g. cl_party_info.caller_number"
            )
        if table not in _LAYOUT_TABLES:
            raise StoreError(
                f"{label}: anonymize: {name} names table {table}, which is not part of "
                f"3CX's call history; use one of {', '.join(_LAYOUT_TABLES)}"
            )
        by_table.setdefault(table, {})[column] = transform
    return {
        generation.name: _anonymization_of(inspector, tables, generation, by_table, label)
        for generation in generations
    }


def _anonymization_of(
    inspector: Inspector,
    tables: set[str],
    generation: Generation,
    by_table: Mapping[str, Mapping[str, Transform]],
    label: str,
) -> Anonymization:
    call_columns = {generation.table: generation.key}
    call_columns.update({link.table: link.column for link in generation.dependents})
    protected = {generation.key, *call_columns.values()}
    party = generation.party
    if party is not None:
        protected |= {party.key, party.via.column}
    family = family_tables(generation)
    rewrites: list[_Rewrite] = []
    party_transforms: dict[str, Transform] = {}
    party_columns: tuple[str, ...] = ()
    ignored: list[str] = []
    for table, transforms in by_table.items():
        if table not in family or table not in tables:
            ignored.append(table)
            continue
        _check_transforms(label, inspector, table, transforms, protected)
        if table in call_columns:
            rewrites.append(_Rewrite(table, call_columns[table], dict(transforms)))
        elif party is not None and table == party.table:
            party_transforms = dict(transforms)
            party_columns = _party_columns(label, inspector, party)
        else:
            raise StoreError(
                f"{label}: anonymize: {table} is left alone by this store (see "
                f"`retentiond check`): its rows cannot be told apart by call; remove the "
                f"{table}.* fields from anonymize: or give {table} a column naming the call"
            )
    if not rewrites and not party_transforms:
        raise StoreError(
            f"{label}: anonymize: no field names a table of the {generation.name} "
            "layout, so its calls would keep every number and name; add fields of "
            f"{', '.join(sorted(family & tables))} (the 3cx preset lists them all)"
        )
    return Anonymization(tuple(rewrites), party_transforms, party_columns, tuple(ignored))


def _check_transforms(
    label: str,
    inspector: Inspector,
    table: str,
    transforms: Mapping[str, Transform],
    protected: set[str],
) -> None:
    columns = {column["name"]: column for column in inspector.get_columns(table)}
    for name, transform in transforms.items():
        if name not in columns:
            raise StoreError(
                f"{label}: anonymize: {table}.{name} names no column of {table} (its "
                f"columns: {', '.join(columns)}); correct the name or remove it"
            )
        if name in protected:
            raise StoreError(
                f"{label}: anonymize: {table}.{name} links the rows of a call; it "
                "cannot be anonymized, remove it"
            )
        writes_text = isinstance(transform, Blank | TruncateDigits | MapValues)
        if writes_text and not isinstance(columns[name]["type"], sqltypes.String):
            raise StoreError(
                f"{label}: anonymize: {table}.{name} is {columns[name]['type']}, not "
                f"text, and {transform.name} writes text; remove it or use another transform"
            )


def _party_columns(label: str, inspector: Inspector, party: PartyInfo) -> tuple[str, ...]:
    """cl_party_info's columns for an anonymized copy, whose key the database must assign."""
    columns = {column["name"]: column for column in inspector.get_columns(party.table)}
    key = columns[party.key]
    if key.get("default") is None and not key.get("identity"):
        raise StoreError(
            f"{label}: anonymize: {party.table}.{party.key} has no default, so no "
            f"anonymized copy of a {party.table} row can be made (its rows serve several "
            f"calls and are not rewritten in place); remove the {party.table}.* fields "
            "from anonymize:"
        )
    return tuple(name for name in columns if name != party.key)


def describe_anonymization(
    anonymization: Mapping[str, Anonymization], generations: Sequence[Generation]
) -> list[str]:
    lines = []
    plans = anonymization.values()
    ignored = set.intersection(*(set(plan.ignored) for plan in plans)) if plans else set()
    for generation in generations:
        plan = anonymization.get(generation.name)
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


def anonymize_calls(
    calls: CallQueries,
    connection: Connection,
    generation: Generation,
    plan: Anonymization,
    keys: list[Any],
    guard: Clause,
) -> tuple[list[tuple[Any, Any]], set[Any]]:
    """One batch in one transaction: lock the calls, rewrite their rows; the calls changed."""
    locked = calls.lock(connection, generation, keys, guard)
    keys = [key for key, _ in locked]
    changed: set[Any] = set()
    if not keys:
        return locked, changed
    for rewrite in plan.rewrites:
        changed |= _rewrite_rows(calls, connection, rewrite, keys)
    if plan.party and generation.party is not None:
        changed |= _copy_party_info(calls, connection, generation, plan, keys)
    return locked, changed


def _rewrite_rows(
    calls: CallQueries, connection: Connection, rewrite: _Rewrite, keys: list[Any]
) -> set[Any]:
    """Rewrite the fields of `rewrite.table`'s rows of these calls, where a value changes.

    Rows are addressed by ctid: 3CX's tables do not all have a key (cl_quality), and the
    rows are locked, so no ctid moves before the update.
    """
    table, call = calls.q(rewrite.table), calls.q(rewrite.call_column)
    columns = ", ".join(calls.q(column) for column in rewrite.transforms)
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
        sets = ", ".join(f"{calls.q(name)} = :v{i}" for i, name in enumerate(names))
        connection.execute(
            text(f"UPDATE {table} SET {sets} WHERE ctid = CAST(:{_ROW} AS tid)"),
            params_list,
        )
    return changed


def _copy_party_info(
    calls: CallQueries,
    connection: Connection,
    generation: Generation,
    plan: Anonymization,
    keys: list[Any],
) -> set[Any]:
    """Point these calls' participants at anonymized copies of their party rows.

    A party row serves every call of an extension, young ones too: rewriting it would
    anonymize calls that are not due. The originals no call points to any more are deleted.
    """
    party = generation.party
    assert party is not None  # checked by the caller
    via = party.via
    call_column = next(link.column for link in generation.dependents if link.table == via.table)
    participants, parties = calls.q(via.table), calls.q(party.table)
    info, key, call = calls.q(via.column), calls.q(party.key), calls.q(call_column)
    columns = ", ".join(f"n.{calls.q(column)}" for column in plan.party)
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
        copy = _insert_party_copy(calls, connection, party, plan, original, changes)
        connection.execute(
            text(
                f"UPDATE {participants} SET {info} = :copy "
                f"WHERE {info} = :original AND {call} = ANY(:keys)"
            ),
            {"copy": copy, "original": original, "keys": keys},
        )
    if changes_of:
        delete_unused_party_info(calls, connection, party, list(changes_of))
    return {call_key for calls in calls_of.values() for call_key in calls}


def _insert_party_copy(
    calls: CallQueries,
    connection: Connection,
    party: PartyInfo,
    plan: Anonymization,
    original: Any,
    changes: Mapping[str, Any],
) -> Any:
    names = [calls.q(column) for column in plan.party_columns]
    params: dict[str, Any] = {"original": original}
    values = []
    for i, column in enumerate(plan.party_columns):
        if column in changes:
            params[f"v{i}"] = changes[column]
            values.append(f":v{i}")
        else:
            values.append(calls.q(column))
    table, key = calls.q(party.table), calls.q(party.key)
    return connection.execute(
        text(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} "
            f"FROM {table} WHERE {key} = :original RETURNING {key}"
        ),
        params,
    ).scalar_one()


def group_sizes(
    calls: CallQueries, generation: Generation, plan: Anonymization, cutoff: datetime
) -> tuple[TextClause, dict[str, Any]]:
    """The smallest group of one layout's expired calls, as one statement."""
    key = f"c.{calls.q(generation.key)}"
    parts = []
    for rewrite in plan.rewrites:
        columns = _grouping(rewrite.transforms)
        if not columns:
            continue
        if rewrite.table == generation.table:
            parts.append(_row_text(calls, "c", columns))
            continue
        parts.append(
            f"ARRAY(SELECT {_row_text(calls, 't', columns)} FROM {calls.q(rewrite.table)} AS t "
            f"WHERE t.{calls.q(rewrite.call_column)} = {key} ORDER BY 1)"
        )
    party = generation.party
    party_columns = _grouping(plan.party)
    if party is not None and party_columns:
        via = party.via
        call_column = next(link.column for link in generation.dependents if link.table == via.table)
        parts.append(
            f"ARRAY(SELECT {_row_text(calls, 'n', party_columns)} FROM {calls.q(via.table)} "
            f"AS p JOIN {calls.q(party.table)} AS n ON n.{calls.q(party.key)} = "
            f"p.{calls.q(via.column)} WHERE p.{calls.q(call_column)} = {key} ORDER BY 1)"
        )
    alike = f"CAST(ROW({', '.join(parts)}) AS text)" if parts else "''"
    if generation.call is None:
        call = f"CAST({key} AS text)"
    else:  # a segment without a call is a call of its own
        call = f"COALESCE('c' || CAST(c.{calls.q(generation.call)} AS text), CAST({key} AS text))"
    due = calls.due(generation, cutoff, None)
    statement = text(
        "SELECT MIN(size) FROM (SELECT COUNT(*) AS size FROM ("
        f"SELECT array_agg({_ROW} ORDER BY {_ROW}) AS alike FROM ("
        f"SELECT {call} AS {_CALL}, {alike} AS {_ROW} FROM {calls.q(generation.table)} AS c "
        f"WHERE {due.sql}) AS segments GROUP BY {_CALL}) AS calls GROUP BY alike) AS groups"
    )
    return statement, dict(due.params)


def _row_text(calls: CallQueries, alias: str, columns: Sequence[str]) -> str:
    """Some columns of one row as one text, NULL told apart from the empty string."""
    values = ", ".join(f"{alias}.{calls.q(column)}" for column in columns)
    return f"CAST(ROW({values}) AS text)"


def _grouping(transforms: Mapping[str, Transform]) -> list[str]:
    """The transformed columns that can tell calls apart: not blanked, not made constant."""
    return sorted(
        column
        for column, transform in transforms.items()
        if transform.groups and not isinstance(transform, Blank | Constant)
    )

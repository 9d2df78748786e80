"""Deleting a batch of 3CX calls in one transaction: their rows in dependency order, then the calls.

The planned calls still due are locked first (CallQueries.lock), so rows that belong to a call
are deleted only for a call that is still there and still due. cl_party_info rows may serve
several calls: those the deleted participants pointed to go once no remaining one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from retentiond.stores.threecx.queries import CallQueries, Clause
from retentiond.stores.threecx.schema import Generation, PartyInfo


@dataclass
class Deleted:
    """One attempt at a deletion batch: the calls it locked, how many it deleted and the earliest
    and latest of their times (`bounds`, empty when none is dated), and the rows per table.
    `unconfirmed` calls went with a commit whose reply was lost and that no check could
    attribute. Keys and times never show in a repr."""

    keys: tuple[Any, ...] = field(repr=False)
    count: int
    bounds: tuple[Any, ...] = field(repr=False)
    counts: dict[str, int]
    unconfirmed: int = 0


def delete_calls(
    calls: CallQueries,
    connection: Connection,
    generation: Generation,
    keys: list[Any],
    guard: Clause,
) -> Deleted:
    """One batch: the calls' rows in dependency order, then the calls.

    Each statement answers with one row (an array, counts, the earliest and latest time), not a
    row per call: the client decodes a few values instead of thousands.
    """
    keys = calls.lock_keys(connection, generation, keys, guard)
    if not keys:
        return Deleted((), 0, (), {})
    counts: dict[str, int] = {}
    party = generation.party
    pointed_to: list[Any] = []
    for link in generation.dependents:
        statement = f"DELETE FROM {calls.q(link.table)} WHERE {calls.q(link.column)} = ANY(:keys)"
        if party is not None and link.table == party.via.table:
            column = calls.q(party.via.column)
            row = connection.execute(
                text(
                    f"WITH gone AS ({statement} RETURNING {column} AS v) SELECT COUNT(*), "
                    "array_agg(DISTINCT v) FILTER (WHERE v IS NOT NULL) FROM gone"
                ),
                {"keys": keys},
            ).one()
            counts[link.table] = int(row[0])
            pointed_to = list(row[1] or ())
        else:
            counts[link.table] = connection.execute(text(statement), {"keys": keys}).rowcount
    if party is not None and pointed_to:
        counts[party.table] = delete_unused_party_info(calls, connection, party, pointed_to)
    table, key, time = (
        calls.q(generation.table),
        calls.q(generation.key),
        calls.q(generation.time),
    )
    count, first, last = connection.execute(
        text(
            f"WITH gone AS (DELETE FROM {table} WHERE {key} = ANY(:keys) RETURNING {time} AS t) "
            "SELECT COUNT(*), MIN(t), MAX(t) FROM gone"
        ),
        {"keys": keys},
    ).one()
    bounds = () if first is None else (first, last)
    return Deleted(tuple(keys), int(count), bounds, counts)


def delete_unused_party_info(
    calls: CallQueries, connection: Connection, party: PartyInfo, pointed_to: list[Any]
) -> int:
    """The party rows the deleted participants pointed to and no remaining one does."""
    table, key = calls.q(party.table), calls.q(party.key)
    participants, column = calls.q(party.via.table), calls.q(party.via.column)
    result = connection.execute(
        text(
            f"DELETE FROM {table} AS party WHERE party.{key} = ANY(:ids) AND NOT EXISTS "
            f"(SELECT 1 FROM {participants} AS p WHERE p.{column} = party.{key})"
        ),
        {"ids": list(dict.fromkeys(pointed_to))},
    )
    return result.rowcount

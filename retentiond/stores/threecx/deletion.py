"""Deleting a batch of 3CX calls in one transaction: their rows in dependency order, then the calls.

The planned calls still due are locked first (as CallQueries.lock does), so rows that belong to a
call are deleted only for a call that is still there and still due; the lock and the deletions
are one statement (one round trip). cl_party_info rows may serve several calls: those the
deleted participants pointed to go once no remaining one does, in a second statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from retentiond.stores.threecx.queries import CallQueries, Clause, key_array
from retentiond.stores.threecx.schema import Generation, PartyInfo


@dataclass
class Deleted:
    """One attempt at a deletion batch: the calls it locked, how many it deleted and the earliest
    and latest of their times (`bounds`, empty when none is dated), and the rows deleted from
    the tables whose deletion answers anyway (the participants, the party rows; the other
    dependents' rows are deleted uncounted, see `delete_calls`). `unconfirmed` calls went with
    a commit whose reply was lost and that no check could attribute. Keys and times never show
    in a repr."""

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

    One statement locks the planned calls still matching `guard` (as `CallQueries.lock`) and
    deletes their rows and them: one round trip instead of one per table. It is atomic and its
    parts see one snapshot, so no one ever sees a call without its rows or rows without their
    call; foreign keys between these tables are checked at its end, once all are gone. The
    party rows no remaining participant points to go in a second statement, which sees the
    participants the first one deleted gone. Each answers with one row (counts, the earliest
    and latest time, an array), not a row per call. Only deletions whose rows are needed
    (the participants' party keys, the calls' times) have a RETURNING: PostgreSQL fetches each
    row a DELETE ... RETURNING deleted once more, and counting the segments and quality rows
    cost 4-6% of a batch's server CPU; they go uncounted. No list of keys is built
    in Python that the server could keep: the planned keys go as one array literal
    (`key_array`), the locked ones come back only when fewer than planned, and the party keys
    come back as their array's text and go back as they came.
    """
    q = calls.q
    key, time, table = q(generation.key), q(generation.time), q(generation.table)
    party = generation.party
    listed, bound = key_array("keys", keys)
    # ARRAY(...) rather than IN (SELECT ...): an index scan over the sorted keys
    locked = "ARRAY(SELECT k FROM locked)"
    parts = [
        f"locked AS (SELECT c.{key} AS k FROM {table} AS c "
        f"WHERE c.{key} = ANY({listed}) AND {guard.sql} ORDER BY c.{key} FOR UPDATE OF c)"
    ]
    answers = []
    counted = []
    pointing = None
    for number, link in enumerate(generation.dependents):
        deleting = f"DELETE FROM {q(link.table)} WHERE {q(link.column)} = ANY({locked})"
        if party is not None and link.table == party.via.table:
            # The participants' party keys are needed: they come back, and so their count
            pointing = f"d{number}"
            parts.append(f"{pointing} AS ({deleting} RETURNING {q(party.via.column)} AS v)")
            answers.append(f"(SELECT COUNT(*) FROM {pointing})")
            counted.append(link.table)
        else:
            # No RETURNING: it would fetch each deleted row again only to count it
            parts.append(f"d{number} AS ({deleting})")
    parts.append(
        f"gone AS (DELETE FROM {table} AS c WHERE c.{key} = ANY({locked}) RETURNING c.{time} AS t)"
    )
    # The party keys in the array's text form ('{1,2,3}'), handed back as they came
    pointed = (
        f"(SELECT CAST(array_agg(DISTINCT v) AS text) FROM {pointing} WHERE v IS NOT NULL)"
        if pointing
        else "NULL"
    )
    # The locked keys come back only when some planned call was not locked (gone, or no
    # longer due): otherwise they are the planned keys, and a batch's keys are not decoded
    # once more.
    row = connection.execute(
        text(
            f"WITH {', '.join(parts)} SELECT (SELECT COUNT(*) FROM locked), "
            f"CASE WHEN (SELECT COUNT(*) FROM locked) < :planned THEN {locked} END, "
            f"(SELECT COUNT(*) FROM gone), (SELECT MIN(t) FROM gone), (SELECT MAX(t) FROM gone), "
            f"{pointed}" + "".join(f", {answer}" for answer in answers)
        ),
        {**guard.params, "keys": bound, "planned": len(keys)},
    ).one()
    if not row[0]:
        return Deleted((), 0, (), {})
    counts = {table: int(count) for table, count in zip(counted, row[6:], strict=True)}
    if party is not None and row[5]:
        counts[party.table] = _delete_unused_pointed(calls, connection, party, row[5])
    bounds = () if row[3] is None else (row[3], row[4])
    locked_keys = tuple(keys) if row[1] is None else tuple(row[1])
    return Deleted(locked_keys, int(row[2]), bounds, counts)


def delete_unused_party_info(
    calls: CallQueries, connection: Connection, party: PartyInfo, pointed_to: list[Any]
) -> int:
    """The party rows the deleted participants pointed to and no remaining one does."""
    listed, bound = key_array("ids", list(dict.fromkeys(pointed_to)))
    return _delete_unused(calls, connection, party, f"= ANY({listed})", bound)


def _delete_unused_pointed(
    calls: CallQueries, connection: Connection, party: PartyInfo, pointed_to: str
) -> int:
    """As `delete_unused_party_info`, with the keys in the text form of their array as the
    server wrote it ('{1,2,3}'), handed back untouched: bound as a string of unknown type, the
    server reads it as an array of the key's own type (the input of the output it wrote), and
    no list is decoded and encoded again on the way."""
    return _delete_unused(calls, connection, party, "= ANY(:ids)", pointed_to)


def _delete_unused(
    calls: CallQueries,
    connection: Connection,
    party: PartyInfo,
    matches: str,
    bound: Any,
) -> int:
    table, key = calls.q(party.table), calls.q(party.key)
    participants, column = calls.q(party.via.table), calls.q(party.via.column)
    result = connection.execute(
        text(
            f"DELETE FROM {table} AS party WHERE party.{key} {matches} AND NOT EXISTS "
            f"(SELECT 1 FROM {participants} AS p WHERE p.{column} = party.{key})"
        ),
        {"ids": bound},
    )
    return result.rowcount

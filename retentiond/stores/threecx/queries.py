"""SQL conditions on 3CX calls: due, held, a subject's; the quoting, bounds and locks they need.

A condition is a `Clause` on the call row `c`, with its bound parameters: numbers and time
bounds are always parameters, never SQL text. Whose a call is: the numbers of its parties, with
blanks and `-./()` taken out as `Subject.matches` does, compared with the subject's stored forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import Connection, text

from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import POSTGRESQL
from retentiond.stores.db.timecols import stored_instant, time_bound
from retentiond.stores.threecx.schema import Generation, Numbers

# What `Subject.matches` takes out of a stored number before comparing: blanks and -./()
_SEPARATORS = " \t\r\n-./()"
_NO_SEPARATORS = str.maketrans("", "", _SEPARATORS)
# Wall-clock columns: a hold window is widened by this on each side, so no DST shift lets a
# held call out (3CX writes timestamptz; this is for a database that does not).
_LOCAL_WINDOW_MARGIN = timedelta(hours=2)
# The range of PostgreSQL's bigint: integer keys within it go as one array literal (`key_array`)
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Clause:
    """An SQL condition on the call row `c` with its bound parameters."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)


class CallQueries:
    """The SQL of one 3CX database's calls: quoted names, time bounds, conditions, locks."""

    def __init__(self, db: Database, zone: tzinfo) -> None:
        self._db = db
        self._zone = zone

    def lock(
        self, connection: Connection, generation: Generation, keys: list[Any], guard: Clause
    ) -> list[tuple[Any, Any]]:
        """Lock the planned calls still matching `guard`, in key order; (key, time) of each.

        Rows that belong to a call are changed only for a call that is still there and still
        due, and no one changes it until the batch commits.
        """
        key, time = self.q(generation.key), self.q(generation.time)
        listed, bound = key_array("keys", keys)
        rows = connection.execute(
            text(
                f"SELECT c.{key}, c.{time} FROM {self.q(generation.table)} AS c "
                f"WHERE c.{key} = ANY({listed}) AND {guard.sql} ORDER BY c.{key} FOR UPDATE OF c"
            ),
            {**guard.params, "keys": bound},
        )
        return [(row[0], row[1]) for row in rows]

    def due(self, generation: Generation, cutoff: datetime, since: datetime | None) -> Clause:
        """Calls older than the cutoff (and not older than `since`)."""
        time = f"c.{self.q(generation.time)}"
        params = {"bound": self.bound(generation, cutoff)}
        if since is None:
            return Clause(f"{time} < :bound", params)
        params["since"] = self.bound(generation, since)
        return Clause(f"({time} < :bound AND {time} >= :since)", params)

    def held(self, generation: Generation, holds: Holds) -> Clause:
        """Calls any of the holds covers."""
        return any_of(
            [self.hold_clause(generation, scope, f"h{i}") for i, scope in enumerate(holds.scopes)]
        )

    def hold_clause(self, generation: Generation, scope: HoldScope, prefix: str) -> Clause:
        """Calls one hold covers: in its window (or undated) and, if it names someone, theirs.

        A layout without number columns cannot tell whose a call is: the hold keeps them all.
        """
        time = f"c.{self.q(generation.time)}"
        start, end = self._window(generation, scope)
        sides, params = [], {}
        if start is not None:
            sides.append(f"{time} >= :{prefix}_start")
            params[f"{prefix}_start"] = start
        if end is not None:
            sides.append(f"{time} < :{prefix}_end")
            params[f"{prefix}_end"] = end
        parts = [Clause(f"({time} IS NULL OR ({' AND '.join(sides)}))", params)] if sides else []
        if scope.subject:
            names = self.names(generation, scope.subject, f"{prefix}_subject")
            if names is not None:
                parts.append(names)
        return all_of(*parts)

    def _window(self, generation: Generation, scope: HoldScope) -> tuple[Any, Any]:
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

    def names(self, generation: Generation, subject: Subject, param: str) -> Clause | None:
        """Calls with a party number that is one of the subject's stored forms; None when this
        layout has no number columns."""
        if not generation.numbers:
            return None
        tests = []
        for numbers in generation.numbers:
            source, link = self.numbers_source(numbers)
            matches = " OR ".join(
                f"translate(n.{self.q(column)}, :separators, '') = ANY(:{param})"
                for column in numbers.columns
            )
            tests.append(f"EXISTS (SELECT 1 FROM {source} WHERE {link} AND ({matches}))")
        return Clause(
            f"({' OR '.join(tests)})",
            {param: sorted(subject.values), "separators": _SEPARATORS},
        )

    def numbers_source(self, numbers: Numbers) -> tuple[str, str]:
        """FROM clause (`n` holds the columns) and the condition joining it to the call `c`."""
        call = f"c.{self.q(numbers.call_key)}"
        if numbers.through is None:
            return (
                f"{self.q(numbers.table)} AS n",
                f"n.{self.q(numbers.call_column)} = {call}",
            )
        via = numbers.through.via
        return (
            f"({self.q(via.table)} AS p JOIN {self.q(numbers.table)} AS n "
            f"ON n.{self.q(numbers.through.key)} = p.{self.q(via.column)})",
            f"p.{self.q(numbers.call_column)} = {call}",
        )

    def q(self, name: str) -> str:
        return str(self._db.preparer.quote(name))

    def bound(self, generation: Generation, cutoff: datetime) -> Any:
        return time_bound(generation.kind, POSTGRESQL, cutoff, self._zone)

    def day_span(self, generation: Generation, values: Sequence[Any]) -> tuple[date, date] | None:
        days = []
        for value in values:
            instant = stored_instant(value, generation.kind, self._zone)
            if instant is not None:
                days.append(instant.astimezone(self._zone).date())
        return (min(days), max(days)) if days else None


def key_array(param: str, keys: Sequence[Any]) -> tuple[str, Any]:
    """The operand of `= ANY(...)` for these keys, and the value to bind to `param`.

    Integer keys (3CX's ids) go as one text literal of an array, `{1,2,3}`, cast on the server:
    psycopg dumps a list element by element in Python (about 40 ms for 20,000 keys, twice a
    batch), a string in one piece (about 1 ms). Any other keys go as a list.
    """
    if keys and all(type(key) is int and _BIGINT_MIN <= key <= _BIGINT_MAX for key in keys):
        return f"CAST(:{param} AS bigint[])", "{" + ",".join(map(str, keys)) + "}"
    return f":{param}", list(keys)


def is_subjects(subject: Subject, value: str) -> bool:
    """The Python twin of the SQL match in `_names`: separators out, then one of the forms."""
    return value.translate(_NO_SEPARATORS) in subject.values


def all_of(*clauses: Clause) -> Clause:
    if not clauses:
        return Clause("TRUE")
    params: dict[str, Any] = {}
    for clause in clauses:
        params.update(clause.params)
    return Clause(f"({' AND '.join(clause.sql for clause in clauses)})", params)


def any_of(clauses: Sequence[Clause]) -> Clause:
    if not clauses:
        return Clause("FALSE")
    params: dict[str, Any] = {}
    for clause in clauses:
        params.update(clause.params)
    return Clause(f"({' OR '.join(clause.sql for clause in clauses)})", params)


def negated(clause: Clause) -> Clause:
    return Clause(f"(NOT {clause.sql})", clause.params)

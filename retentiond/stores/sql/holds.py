"""Holds in every statement, and the search for a person's rows (`find`).

A hold covers the rows in its window (a row of unknown time is in every window) and, where the
table tells whose a row is, naming its subject. A hold's window is widened, never narrowed,
where a wall-clock column is ambiguous. The predicates are never NULL, so NOT of them is safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any

from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Found
from retentiond.stores.db.rows import read_rows
from retentiond.stores.db.timecols import Side, hold_bound, stored_instant
from retentiond.stores.sql.predicates import EVERY_ROW, Predicate, bind
from retentiond.stores.sql.subjects import SubjectMatching


class HeldRows(SubjectMatching):
    """Rows the holds in force cover, and a person's rows as `find` reports them."""

    def _unheld(self, where: Predicate, holds: Holds) -> Predicate:
        held = self._held_any(holds)
        return where if held is None else where & held.negated()

    def _held_any(self, holds: Holds) -> Predicate | None:
        return Predicate.any_of(
            [self._hold_predicate(index, scope) for index, scope in enumerate(holds.scopes)]
        )

    def _hold_predicate(self, index: int, scope: HoldScope) -> Predicate:
        """Rows `scope` covers: in its window (a row of unknown time is in every window) and,
        where the table tells whose a row is, naming its subject. Never NULL, so NOT of it is
        safe."""
        time_sql = self._time_sql
        parts: list[str] = []
        params: dict[str, Any] = {}
        window: list[str] = []
        edges: tuple[tuple[Side, datetime | None, str], ...] = (
            ("from", scope.start, ">="),
            ("to", scope.end, "<"),
        )
        for side, edge, operator in edges:
            if edge is not None:
                name = f"hold{index}_{side}"
                params[name] = self._hold_bound(edge, side)
                window.append(f"{time_sql} {operator} :{name}")
        if window:
            guard = self._time_guard()
            unknown = f"{time_sql} IS NULL" + (f" OR NOT ({guard})" if guard else "")
            parts.append(f"({unknown} OR ({' AND '.join(window)}))")
        expanding: frozenset[str] = frozenset()
        naming = None
        if scope.subject is not None:
            naming = self._subject_naming(scope.subject, f"hold{index}_who")
        if naming is not None:
            params.update(naming.params)
            expanding = naming.expanding
            parts.append(naming.sql)
        return Predicate(" AND ".join(parts) or EVERY_ROW.sql, params, expanding)

    def _hold_bound(self, instant: datetime, side: Side) -> Any:
        return hold_bound(self._time_kind, self._dialect, instant, self._zone, side)

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        naming = self._naming(subject)
        held = self._held_any(holds)
        flag = "0" if held is None else f"CASE WHEN {held.sql} THEN 1 ELSE 0 END"
        shown = list(self._subject_sql)
        if self._file_parts is not None:
            shown.append(self._file_sql)
        statement = bind(
            f"SELECT {', '.join([self._time_sql, flag, *shown])} "
            f"FROM {self._table_sql} WHERE {naming.sql} ORDER BY {self._time_sql}",
            naming,
            held,
        )
        rows = self._db.retrying("searching for a person's rows", partial(read_rows, *statement))
        return iter([self._found(row) for row in rows])

    def _found(self, row: tuple[Any, ...]) -> Found:
        """What a row says about its subject: the time, the subject columns and the file's base
        name (the folders name nobody), nothing else."""
        fields = {self._time_name: _shown(row[0])} if row[0] is not None else {}
        for name, value in zip(self.subject_fields(), row[2:], strict=True):
            if value is None:
                continue
            shown = _shown(value)
            fields[name] = shown.rsplit("/", 1)[-1] if name == self._file_name else shown
        return Found(
            when=stored_instant(row[0], self._time_kind, self._zone),
            held=bool(row[1]),
            where=self.label,
            fields=fields,
        )


def _shown(value: Any) -> str:
    """A stored value as `find` prints it."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

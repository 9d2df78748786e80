"""Conditions on rows with their bound parameters (`Predicate`), and statements that embed them.

Values are always parameters: the SQL text holds only reflected, quoted identifiers. Holds are
part of every statement's predicate: a held row is never read into a batch, and the delete (or
update) of a batch re-checks the predicate its batch was planned with, carried in the payload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import TextClause, bindparam, text


@dataclass(frozen=True)
class Predicate:
    """A condition on rows with its bound parameters; `expanding` names bind lists (`IN :name`).

    Values are always parameters: the SQL text holds only reflected, quoted identifiers.
    """

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    expanding: frozenset[str] = frozenset()

    def __and__(self, other: Predicate) -> Predicate:
        return Predicate(
            f"{self.sql} AND {other.sql}",
            {**self.params, **other.params},
            self.expanding | other.expanding,
        )

    def negated(self) -> Predicate:
        return Predicate(f"NOT ({self.sql})", self.params, self.expanding)

    @staticmethod
    def any_of(parts: Sequence[Predicate]) -> Predicate | None:
        if not parts:
            return None
        params: dict[str, Any] = {}
        for part in parts:
            params.update(part.params)
        return Predicate(
            "(" + " OR ".join(f"({part.sql})" for part in parts) + ")",
            params,
            frozenset().union(*(part.expanding for part in parts)),
        )


EVERY_ROW = Predicate("1 = 1")


def bind(sql: str, *parts: Predicate | None, **params: Any) -> tuple[TextClause, dict[str, Any]]:
    """`sql`, which embeds the `parts`, with their parameters and `params` bound."""
    merged: dict[str, Any] = {}
    expanding: set[str] = set()
    for part in parts:
        if part is not None:
            merged.update(part.params)
            expanding |= part.expanding
    merged.update(params)
    statement = text(sql).bindparams(
        *(bindparam(name, expanding=True) for name in sorted(expanding))
    )
    return statement, merged

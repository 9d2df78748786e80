"""What the report reads from one entry of a deletion log: its time, its count and text fields,
and the figures of the `stores` list a run, erasure or search entry carries. Whatever a field
holds, a reader gives a value of its type (a log from another version may lack a field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from retentiond.evidence import log as audit
from retentiond.evidence.report.values import SubjectStore
from retentiond.evidence.report.wording import ENGLISH, whole
from retentiond.i18n import Words


def entry_time(entry: audit.Entry) -> datetime:
    """When the entry was written, in UTC."""
    return datetime.fromisoformat(entry.ts).astimezone(UTC)


def as_int(value: Any) -> int:
    """A count field of an entry; 0 where it is missing or not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_text(value: Any) -> str:
    """A text field of an entry; "" where it is missing or not text."""
    return value if isinstance(value, str) else ""


def subject_stores(stores: Any) -> list[SubjectStore]:
    """The stores of an erasure or a search, with what each found, held and deleted."""
    if not isinstance(stores, list):
        return []
    return [
        SubjectStore(
            rule=as_text(store.get("rule")),
            store=as_text(store.get("store")),
            unit=as_text(store.get("unit")) or "objects",
            found=as_int(store.get("found")),
            held=as_int(store.get("held")),
            deleted=store["deleted"] if is_int(store.get("deleted")) else None,
            unsearchable=bool(store.get("unsearchable")),
        )
        for store in stores
        if isinstance(store, dict)
    ]


def held_by(stores: Any) -> dict[str, dict[str, int]]:
    """store label -> hold -> objects held, from a run entry's stores; a store listed for both
    stages of a two-stage rule counts the larger of the two."""
    result: dict[str, dict[str, int]] = {}
    if not isinstance(stores, list):
        return result
    for store in stores:
        if not isinstance(store, dict) or store.get("absent"):
            continue
        by_hold = result.setdefault(as_text(store.get("store")), {})
        for hold, count in (store.get("held_by") or {}).items():
            if is_int(count):
                by_hold[str(hold)] = max(by_hold.get(str(hold), 0), count)
    return result


def undated_failures(stores: list[dict[str, Any]], said: Words = ENGLISH) -> list[str]:
    """Why a run failed for objects that cannot be dated, from its stores' counts."""
    reasons: dict[str, str] = {}
    for store in stores:
        if not store.get("undated_failed"):
            continue
        tolerated = store.get("undated_tolerated")
        share = said.gettext("unknown")
        if isinstance(tolerated, int | float):
            shown = f"{tolerated * 100:.3g}"
            share = f"{shown if said.language == 'en' else shown.replace('.', ',')}%"
        reasons.setdefault(
            as_text(store.get("store")),
            said.gettext(
                "{store}: {count} objects cannot be dated and are never deleted "
                "(tolerated: {share})"
            ).format(
                store=as_text(store.get("store")),
                count=whole(said, as_int(store.get("undated"))),
                share=share,
            ),
        )
    return list(reasons.values())


def held_total(stores: Any) -> int | None:
    """Objects a run left alone because of holds, over its stores (larger stage per store)."""
    if not isinstance(stores, list):
        return None
    per_store: dict[str, int] = {}
    for store in stores:
        if isinstance(store, dict):
            label = as_text(store.get("store"))
            per_store[label] = max(per_store.get(label, 0), as_int(store.get("held")))
    return sum(per_store.values())


def is_int(value: Any) -> bool:
    """A whole number, not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def remaining_total(stores: Any) -> int | None:
    """Expired objects left after a run, summed over its stores; None if any store is unknown."""
    if not isinstance(stores, list):
        return None
    total = 0
    for store in stores:
        value = store.get("remaining") if isinstance(store, dict) else None
        if not isinstance(value, int):
            return None
        total += value
    return total

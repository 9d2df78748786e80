"""One person's records across every store: found (Art. 15) or erased (Art. 17).

`search` counts and, for `find`, lists what each store holds of the subject, any age. `erase`
deletes every unheld match in audited batches: the log gets the ticket id and counts, never a
number. Holds win over erasure: held objects are counted and reported, not deleted (Art. 17(3)(e)
lets a controller keep data needed for legal claims). A request with nothing to erase (no match,
every match held) is recorded all the same, with its `outcome`: the proof it was answered.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from retentiond import __version__
from retentiond.engine.engine import Engine
from retentiond.errors import RetentiondError, StoreError
from retentiond.evidence.log import AuditLog
from retentiond.policy.subjects import Subject, named_in
from retentiond.stores import BatchFailed, Found, Store

log = structlog.get_logger()

TICKET_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/#:-]{0,63}$")


class TicketError(RetentiondError):
    exit_code = 2


def check_ticket(ticket: str, subject: Subject) -> str:
    """A ticket id goes into the audit log: it must be an id, and must not carry the number."""
    if not TICKET_PATTERN.match(ticket):
        raise TicketError(
            "--ticket takes your request's reference, e.g. T-123 or DSR-2026-041 (letters, "
            "digits and . _ / # : -, at most 64)"
        )
    if named_in(ticket, subject):
        raise TicketError(
            "--ticket contains the subject's number or extension; the ticket goes into the "
            "audit log, which never holds a number. Use the reference of the request instead"
        )
    return ticket


@dataclass
class StoreMatches:
    """What one store holds of the subject."""

    rule: str
    label: str
    kind: str
    unit: str
    found: int = 0
    held: int = 0
    deleted: int = 0
    unsearchable: str | None = None  # why the store cannot be searched
    objects: list[Found] = field(default_factory=list)  # only for `find`

    @property
    def erasable(self) -> int:
        return self.found - self.held


# Why a request ended as it did, recorded with its counts: the DPO's proof it was answered.
NOT_SEARCHED = "not searched"  # no store could be searched (absent, or no subject fields)
NO_MATCH = "no match"  # no store searched holds anything of the subject
ALL_HELD = "all held"  # everything found is under a hold, and kept
ERASED = "erased"
FOUND = "found"


def outcome(matches: list[StoreMatches], *, done: str) -> str:
    """NOT_SEARCHED, NO_MATCH, ALL_HELD, or `done` (ERASED or FOUND) when something was there
    to erase."""
    if not sum(m.found for m in matches):
        return NO_MATCH if any(not m.unsearchable for m in matches) else NOT_SEARCHED
    if not sum(m.erasable for m in matches if not m.unsearchable):
        return ALL_HELD
    return done


Confirm = Callable[[list[StoreMatches]], bool]


def _stores(engine: Engine, rule_names: list[str] | None) -> Iterator[tuple[str, list[Store]]]:
    """Every store of every rule (or of the named ones), each place once."""
    seen: set[tuple[str, str]] = set()
    for rule in engine.config.rules:
        if rule_names and rule.name not in rule_names:
            continue
        with engine.open_stores(rule) as stores:
            fresh = [s for s in stores if (s.kind, s.label) not in seen]
            seen |= {(s.kind, s.label) for s in fresh}
            yield rule.name, fresh


def search(
    engine: Engine, subject: Subject, rule_names: list[str] | None = None, *, keep: bool = False
) -> list[StoreMatches]:
    """Count (and with `keep`, collect) the subject's objects in every store. Reads only."""
    results = []
    for rule_name, stores in _stores(engine, rule_names):
        holds = engine.holds(engine.config.rule(rule_name))
        for store in stores:
            match = StoreMatches(rule_name, store.label, store.kind, store.unit)
            results.append(match)
            if not store.subject_fields():
                match.unsearchable = _unsearchable(store)
                continue
            for found in store.find(subject, holds):
                match.found += 1
                match.held += found.held
                if keep:
                    match.objects.append(found)
    return results


def _unsearchable(store: Store) -> str:
    reason = getattr(store, "reason", None)
    if reason:
        return f"not found (optional): {reason}"
    return "cannot tell whose its objects are (no subject fields configured)"


def erase(
    engine: Engine,
    audit: AuditLog,
    subject: Subject,
    ticket: str,
    rule_names: list[str] | None = None,
    *,
    now: datetime,
) -> list[StoreMatches]:
    """Delete the subject's unheld objects everywhere, in audited batches."""
    run_id = uuid.uuid4().hex[:16]
    counted = search(engine, subject, rule_names)
    _erasure_started(engine, audit, run_id, ticket, counted)
    done = {(m.rule, m.label): m for m in counted}
    status, message = "done", None
    try:
        for rule_name, stores in _stores(engine, rule_names):
            holds = engine.holds(engine.config.rule(rule_name))
            for store in stores:
                match = done.get((rule_name, store.label))
                if match is None or match.unsearchable or not match.erasable:
                    continue
                for batch in store.subject_batches(subject, holds):
                    intent = {"store": store.label, "batch": batch.number}
                    audit.append(
                        "batch_intent",
                        run_id=run_id,
                        stage="erase",
                        planned=batch.planned,
                        **intent,
                    )
                    try:
                        result = store.apply(batch, now)
                    except BatchFailed as failure:
                        # What the failed batch did is known: its result, then the erasure stops
                        match.deleted += failure.result.deleted
                        audit.append(
                            "batch_done",
                            run_id=run_id,
                            stage="erase",
                            deleted=failure.result.deleted,
                            failed=True,
                            **failure.error_fields(),
                            **intent,
                        )
                        raise
                    match.deleted += result.deleted
                    audit.append(
                        "batch_done", run_id=run_id, stage="erase", deleted=result.deleted, **intent
                    )
    except StoreError as error:
        status, message = "failed", str(error)
        log.error("erasure failed", reason=message)
    _erasure_finished(audit, run_id, ticket, counted, status, message)
    if status != "done":
        raise StoreError(f"erasure {ticket} stopped: {message}")
    return counted


def record_unerased(
    engine: Engine, audit: AuditLog, ticket: str, matches: list[StoreMatches]
) -> str:
    """An erasure with nothing to delete (no match, or every match held) is answered all the
    same: the log gets its ticket, its counts and why, and no store is touched. Returns why."""
    run_id = uuid.uuid4().hex[:16]
    _erasure_started(engine, audit, run_id, ticket, matches)
    _erasure_finished(audit, run_id, ticket, matches, "done", None)
    return outcome(matches, done=ERASED)


def _erasure_started(
    engine: Engine, audit: AuditLog, run_id: str, ticket: str, matches: list[StoreMatches]
) -> None:
    audit.append(
        "erasure_started",
        run_id=run_id,
        ticket=ticket,
        version=__version__,
        config_sha256=engine.loaded.sha256,
        stores=[_fields(m) for m in matches],
    )


def _erasure_finished(
    audit: AuditLog,
    run_id: str,
    ticket: str,
    matches: list[StoreMatches],
    status: str,
    message: str | None,
) -> None:
    fields: dict[str, object] = {"status": status, "reason": message}
    if status == "done":
        fields["outcome"] = outcome(matches, done=ERASED)
    audit.append(
        "erasure_finished",
        run_id=run_id,
        ticket=ticket,
        **fields,
        deleted=sum(m.deleted for m in matches),
        held=sum(m.held for m in matches),
        stores=[_fields(m) | {"deleted": m.deleted} for m in matches],
    )


def record_search(audit: AuditLog, ticket: str, matches: list[StoreMatches]) -> str:
    """An Art. 15 search leaves a trace with counts only: who asked, when, how much was found,
    and why nothing was (no match, or all of it held). Returns that outcome."""
    why = outcome(matches, done=FOUND)
    audit.append(
        "subject_search",
        ticket=ticket,
        version=__version__,
        outcome=why,
        stores=[_fields(m) for m in matches],
    )
    return why


def _fields(match: StoreMatches) -> dict[str, object]:
    fields: dict[str, object] = {
        "rule": match.rule,
        "store": match.label,
        "unit": match.unit,
        "found": match.found,
        "held": match.held,
    }
    if match.unsearchable:
        fields["unsearchable"] = True
    return fields

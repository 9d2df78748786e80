"""Recording holds in the audit log: added, changed, ended. Each change exactly once.

What the log says about a hold is its `summary` (id, reason, approver, dates, rules, how many
numbers and extensions), never a number. A change that swaps one number for another is noticed
through a keyed fingerprint kept beside the log (`holds.json`, see `fingerprints`), not in it.

A hold ends only by an explicit action (safety rule 10): its `until` date passes, or the
operator ends it (`run --once --end-hold ID` or `--force`). A hold the log shows in force that
the config no longer has (a holds folder not found, a file removed) has *vanished*: it is not
recorded as ended, and runs of its rules are refused until it is found again or ended.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime, tzinfo
from typing import Any

import structlog

from retentiond.config.model import Config, HoldConfig
from retentiond.evidence.fingerprints import Fingerprints, read_fingerprints, write_fingerprints
from retentiond.evidence.history import History, read_history
from retentiond.evidence.log import AuditWriter, Entry
from retentiond.evidence.log.opening import log_path
from retentiond.evidence.report.wording import ENDED_BY, UNTIL_PASSED
from retentiond.policy.rules import day_over, hold_in_force

log = structlog.get_logger()


def vanished_holds(
    logged: Mapping[str, Mapping[str, Any]],
    holds: Sequence[HoldConfig],
    now: datetime,
    zone: tzinfo,
    rule: str | None = None,
) -> list[str]:
    """Ids of the holds the log shows in force (over `rule`, or any) that the config does not
    have, and whose logged until date has not passed: they end only by an explicit action."""
    configured = {hold.id for hold in holds}
    return sorted(
        hold_id
        for hold_id, summary in logged.items()
        if hold_id not in configured
        and not _until_passed(summary, now, zone)
        and (rule is None or _covers_rule(summary, rule))
    )


def end_hold_refusal(config: Config, end_holds: Collection[str], now: datetime) -> str | None:
    """--end-hold ends only a hold the log shows in force that the config no longer has: why the
    first one that is not such a hold cannot be ended; None when every one can."""
    if not end_holds:
        return None
    history = read_history(log_path(config))
    vanished = vanished_holds(history.holds, config.holds, now, config.zone())
    for hold_id in end_holds:
        if hold_id in vanished:
            continue
        if any(hold.id == hold_id for hold in config.holds):
            why = "is in the config: remove its file or entry first, or give it an until: date"
        else:
            why = "is not in force in the audit log"
        return f"--end-hold {hold_id}: this hold {why}"
    return None


def _until_passed(summary: Mapping[str, Any], now: datetime, zone: tzinfo) -> bool:
    try:
        until = date.fromisoformat(str(summary.get("until")))
    except ValueError:
        return False  # no until (or not readable): only an explicit action ends it
    return day_over(until, now, zone)


def _covers_rule(summary: Mapping[str, Any], rule: str) -> bool:
    rules = summary.get("rules")
    return not isinstance(rules, list) or rule in rules  # None: every rule


def hold_changes(
    logged: Mapping[str, Mapping[str, Any]],
    prints: Fingerprints,
    holds: Sequence[HoldConfig],
    now: datetime,
    zone: tzinfo,
    end: Mapping[str, str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(entry type, fields) for every hold whose state differs from what the log last said.

    `end` names vanished holds the operator ends now (id -> the option that ended it)."""
    in_force = {hold.id: hold for hold in holds if hold_in_force(hold, now, zone)}
    changes: list[tuple[str, dict[str, Any]]] = []
    for hold_id, hold in in_force.items():
        summary = hold.summary()
        before = logged.get(hold_id)
        if before is None:
            changes.append(("hold_added", summary))
            continue
        changed = sorted(key for key in summary if before.get(key) != summary[key])
        if not changed and prints.changed(hold_id, hold.definition()):
            changed = ["numbers or extensions"]
        if changed:
            changes.append(("hold_changed", summary | {"changed": changed}))
    vanished = set(vanished_holds(logged, holds, now, zone))
    for hold_id in logged:
        if hold_id in in_force:
            continue
        if hold_id not in vanished:
            changes.append(("hold_ended", {"hold": hold_id, "ended": UNTIL_PASSED}))
        elif end and hold_id in end:
            ended = f"{ENDED_BY}{end[hold_id]}"  # the report says both in its language
            changes.append(("hold_ended", {"hold": hold_id, "ended": ended}))
    return changes


def record_hold_changes(
    audit: AuditWriter,
    holds: Sequence[HoldConfig],
    now: datetime,
    zone: tzinfo,
    covers: Mapping[str, Mapping[str, int]] | None = None,
    *,
    history: History | None = None,
    end: Mapping[str, str] | None = None,
) -> list[Entry]:
    """Append an entry per changed hold; `covers` (hold id -> store -> objects held) is added
    where the caller has just counted them. `history` is the log as the caller last read it
    (read here when not given); `end`: vanished holds the operator ends (see hold_changes).
    Raises AuditError when the log cannot be written."""
    if history is None:
        history = read_history(audit.path)
    if not history.readable:
        return []  # a broken log is reported by verify; do not pile entries onto it
    prints = read_fingerprints(audit.path)
    changes = hold_changes(history.holds, prints, holds, now, zone, end)
    entries = []
    for kind, fields in changes:
        hold_id = str(fields["hold"])
        if covers is not None and kind != "hold_ended":
            fields = fields | {"covers": dict(covers.get(hold_id, {}))}
        entries.append(audit.append(kind, **fields))
        log.info(kind.replace("_", " "), hold=hold_id)
    current = {hold.id: hold.definition() for hold in holds if hold_in_force(hold, now, zone)}
    if prints.outdated(current):
        write_fingerprints(audit.path, current)
    return entries

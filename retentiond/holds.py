"""Recording holds in the audit log: added, changed, ended. Each change exactly once.

What the log says about a hold is its `summary` (id, reason, approver, dates, rules, how many
numbers and extensions), never a number. A change that swaps one number for another is noticed
through a keyed fingerprint kept beside the log (`holds.json`, see `fingerprints`), not in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

import structlog

from retentiond.audit import AuditWriter, Entry
from retentiond.config.model import HoldConfig
from retentiond.fingerprints import Fingerprints, read_fingerprints, write_fingerprints
from retentiond.history import History, read_history
from retentiond.rules import hold_in_force

log = structlog.get_logger()


def hold_changes(
    logged: Mapping[str, Mapping[str, Any]],
    prints: Fingerprints,
    holds: Sequence[HoldConfig],
    now: datetime,
    zone: tzinfo,
) -> list[tuple[str, dict[str, Any]]]:
    """(entry type, fields) for every hold whose state differs from what the log last said."""
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
    configured = {hold.id for hold in holds}
    for hold_id in logged:
        if hold_id not in in_force:
            why = "its until date has passed" if hold_id in configured else "removed"
            changes.append(("hold_ended", {"hold": hold_id, "ended": why}))
    return changes


def record_hold_changes(
    audit: AuditWriter,
    holds: Sequence[HoldConfig],
    now: datetime,
    zone: tzinfo,
    covers: Mapping[str, Mapping[str, int]] | None = None,
    *,
    history: History | None = None,
) -> list[Entry]:
    """Append an entry per changed hold; `covers` (hold id -> store -> objects held) is added
    where the caller has just counted them. `history` is the log as the caller last read it
    (read here when not given). Raises AuditError when the log cannot be written."""
    if history is None:
        history = read_history(audit.path)
    if not history.readable:
        return []  # a broken log is reported by verify; do not pile entries onto it
    prints = read_fingerprints(audit.path)
    changes = hold_changes(history.holds, prints, holds, now, zone)
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

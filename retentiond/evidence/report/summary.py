"""The report's first page: the answers a DPO files, drawn from the report's own figures.

Which systems and period, each rule's verdict per system with a mark, what was deleted, what is
held and until when, whether each log is intact and signed. Nothing here is a new figure: it is
the report's values, summed or picked, for the page that comes before the detail.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date

from retentiond.evidence.report import verdicts as verdict
from retentiond.evidence.report.values import ComplianceRow, LogInfo, Report
from retentiond.i18n import LANGUAGES, N_, Words, words

# The mark before each verdict: met (green), met with a reservation (amber), not met (red).
MARKS = {"green": "✓", "amber": "!", "red": "✗"}
# The verdict in a word or two, for a column per system; the mark tells met from met with a
# reservation, and section 2 has the full verdict and why.
SHORT_VERDICTS = {verdict.MET_SINCE_FIRST: verdict.MET, verdict.EXCEEDED: N_("exceeded")}
INTACT = N_("intact")


def mark(level: str) -> str:
    return MARKS.get(level, "?")


def short_verdict(verdict: str) -> str:
    """The verdict shortened, in the language it is written in."""
    return _short_verdicts().get(verdict, verdict)


@functools.cache
def _short_verdicts() -> dict[str, str]:
    """SHORT_VERDICTS in every language: a row's verdict is already in the report's language."""
    return {
        words(language).gettext(long): words(language).gettext(short)
        for language in LANGUAGES
        for long, short in SHORT_VERDICTS.items()
    }


def verdict_cell(row: ComplianceRow, systems: int) -> str:
    """The mark and the verdict as the first page writes it: in full for one system, short
    where a column per system leaves the rule's name a line of its own."""
    return f"{mark(row.level)} {row.verdict if systems <= 1 else short_verdict(row.verdict)}"


@dataclass(frozen=True)
class RuleLine:
    """One rule: its verdict on each system (None where the system never ran it)."""

    rule: str
    verdicts: list[ComplianceRow | None]


@dataclass(frozen=True)
class HoldLine:
    id: str
    until: date | None
    review_by: date
    review_overdue: bool
    matches_nothing: bool
    held: int | None  # objects held when last counted, over every store and system; None: never


@dataclass(frozen=True)
class LogLine:
    system: str
    intact: bool
    level: str
    state: str  # intact | BROKEN at line N | NOT intact, in the report's language
    entries: int
    signed_seq: int | None  # the last entry a checkpoint's signature covers
    unsigned_tail: int


@dataclass(frozen=True)
class Summary:
    systems: list[str]
    rules: list[RuleLine]
    verdict_width: int  # percent of the page per system's column; the rule's name has the rest
    counts: dict[str, int]  # level: number of (system, rule) verdicts
    all_met: bool  # every verdict on every system is "met" with no reservation (green)
    deleted: list[tuple[str, int]]  # unit, objects deleted in the period, all systems
    anonymized: list[tuple[str, int]]
    bytes: int | None  # size of what was deleted, where the stores know it
    holds: list[HoldLine]
    holds_ended: int  # holds added, changed or ended in the period: see section 5
    logs: list[LogLine]
    incidents: int


def summary(report: Report) -> Summary:
    systems = report.systems
    rules: dict[str, list[ComplianceRow | None]] = {}
    for row in report.compliance:
        verdicts = rules.setdefault(row.rule, [None] * len(systems))
        if row.system in systems:
            verdicts[systems.index(row.system)] = row
    counts = {level: 0 for level in MARKS}
    for row in report.compliance:
        counts[row.level] = counts.get(row.level, 0) + 1
    deleted: dict[str, int] = {}
    anonymized: dict[str, int] = {}
    sizes = [t.bytes for t in report.totals if t.bytes is not None]
    for total in report.totals:
        deleted[total.unit] = deleted.get(total.unit, 0) + total.deleted
        if total.anonymized:
            anonymized[total.unit] = anonymized.get(total.unit, 0) + total.anonymized
    holds = [
        HoldLine(
            hold.id,
            hold.until,
            hold.review_by,
            hold.review_overdue,
            hold.matches_nothing,
            _held(report, hold.id),
        )
        for hold in report.holds.in_force
    ]
    return Summary(
        systems=systems,
        verdict_width=30 if len(systems) <= 1 else min(15, 60 // len(systems)),
        rules=[RuleLine(rule, verdicts) for rule, verdicts in rules.items()],
        counts=counts,
        all_met=bool(report.compliance) and all(r.level == "green" for r in report.compliance),
        deleted=sorted(deleted.items()),
        anonymized=sorted(anonymized.items()),
        bytes=sum(sizes) if sizes else None,
        holds=holds,
        holds_ended=len({e.hold for e in report.holds.history if e.event == "ended"}),
        logs=[_log_line(log, words(report.language)) for log in report.logs],
        incidents=len(report.incidents),
    )


def _held(report: Report, hold: str) -> int | None:
    counts = [c.held for c in report.holds.held if c.hold == hold]
    return sum(counts) if counts else None


def _log_line(log: LogInfo, said: Words) -> LogLine:
    if log.intact:
        state = said.gettext(INTACT)
    elif log.broken_line is not None:
        state = said.gettext("BROKEN at line {line}").format(line=log.broken_line)
    else:
        state = said.gettext("NOT intact")
    checkpoint = log.checkpoint
    return LogLine(
        system=log.system,
        intact=log.intact,
        level=log.level,
        state=state,
        entries=log.entries,
        signed_seq=checkpoint.signed_seq if checkpoint else None,
        unsigned_tail=log.unsigned_tail,
    )

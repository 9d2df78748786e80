"""The figures of the DPO report, read from the deletion logs; the rules come from the config.

Everything here is category level, like the log it is read from: counts, dates, rule names,
store labels and hashes. A log from another PBX is read the same way; its runs name their host,
and that host is the system the figures are grouped by. Logs that share a host (two test PBXs on
one machine) are told apart by their file: the system is then "host (log path)". Rotated files
of one log (`audit.jsonl.1`, `audit.jsonl`) are one system.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

from retentiond import __version__
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Config, HoldConfig, Rule
from retentiond.errors import AuditError
from retentiond.evidence import log as audit
from retentiond.policy import rules
from retentiond.policy.durations import Duration, parse_duration
from retentiond.policy.rules import earliest_instant, hold_in_force, review_overdue

NOT_SET = "not set"
CONTROLLER_NOT_SET = "not set (add organisation: to the config)"
UNKNOWN_RULE = "(unknown rule)"
# A rule without a schedule is run by retentiond-once.timer, daily.
UNSCHEDULED_INTERVAL = timedelta(days=1)

# How each store kind deletes (README, "How it deletes"): the Umsetzungsvorgabe per store.
METHODS: dict[str, tuple[str, str]] = {
    "sql": (
        "SQL table",
        "Batched SQL DELETE along an index (the time column's index, or the primary key where "
        "the time column has none), each batch one short transaction with lock and statement "
        "timeouts; the cutoff is bound explicitly in every statement. Logical deletion: the "
        "database frees the rows' space for reuse; copies in binary logs, WAL archives and "
        "backups are listed under residual copies.",
    ),
    "files": (
        "Folder of files",
        "unlink() relative to an open folder descriptor, never following a symlink, never "
        "leaving the root or its filesystem; each file is re-checked (same inode, regular file, "
        "still expired) just before it is unlinked. Logical deletion: the blocks are freed, "
        "not overwritten (full-disk encryption and TRIM protect the freed blocks).",
    ),
    "asterisk_voicemail": (
        "Asterisk voicemail spool",
        "Each message is deleted as a group (audio in every format and its .txt metadata), "
        "aged by origtime, under Asterisk's folder lock held for at most half a second; "
        "greetings are never touched.",
    ),
    "csv": (
        "CSV call records",
        "Atomic rewrite: the file is written anew without the expired lines into a temporary "
        "file beside it and renamed into place, keeping every line Asterisk appends meanwhile.",
    ),
    "3cx_call_history": (
        "3CX call history",
        "A batch of calls and their dependent rows (segments, quality, participants, party "
        "information no remaining call uses) deleted in one transaction.",
    ),
}


# --- the values of the report -------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole days in the config's zone, both included."""

    first_day: date
    last_day: date
    zone: tzinfo

    @property
    def start(self) -> datetime:
        return earliest_instant(datetime.combine(self.first_day, time()), self.zone)

    @property
    def end(self) -> datetime:
        """The first instant after the period."""
        return earliest_instant(
            datetime.combine(self.last_day + timedelta(days=1), time()), self.zone
        )

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def weeks(self) -> list[Week]:
        monday = self.first_day - timedelta(days=self.first_day.weekday())
        weeks = []
        while monday <= self.last_day:
            weeks.append(Week.of(monday))
            monday += timedelta(days=7)
        return weeks

    def week_of(self, moment: datetime) -> Week:
        return Week.of(moment.astimezone(self.zone).date())


@dataclass(frozen=True)
class Week:
    label: str  # ISO week, e.g. 2026-W47
    monday: date

    @classmethod
    def of(cls, day: date) -> Week:
        year, number, _ = day.isocalendar()
        return cls(f"{year}-W{number:02d}", day - timedelta(days=day.weekday()))


@dataclass(frozen=True)
class Organisation:
    controller: str
    dpo_contact: str
    processing_record: str
    configured: bool


@dataclass(frozen=True)
class StoreRef:
    kind: str
    label: str
    optional: bool


@dataclass(frozen=True)
class RuleRow:
    """One line of the rule catalogue (Regelkatalog), as the config states it."""

    name: str
    description: str  # the data category (cluster of PII)
    purpose: str
    legal_basis: str
    start_event: str
    keep: str
    deadline: str  # the regular deletion period: keep + run interval + grace
    action: str
    schedule: str
    stores: list[StoreRef]
    keep_days: float  # for sorting by period, as DIN 66398 sorts its catalogue
    # what happens when: "delete", "anonymize", or "anonymize after 3 months, delete after 1y"
    stages: str = ""
    then_delete_after: str | None = None  # two stages: deleted this long after the object's time
    delete_deadline: str | None = None  # the deadline of the delete stage of a two-stage rule
    min_keep: str | None = None
    k_anonymity: int | None = None  # anonymize rules: the group size that makes it anonymous


@dataclass(frozen=True)
class WeekDeletion:
    week: str
    week_start: date
    system: str
    rule: str
    unit: str
    deleted: int
    bytes: int | None
    anonymized: int = 0


@dataclass(frozen=True)
class StoreDeletion:
    system: str
    rule: str
    store: str
    unit: str
    deleted: int
    bytes: int | None
    batches: int
    first_day: str | None  # day range of the deleted objects' own dates
    last_day: str | None
    skipped: dict[str, int]
    anonymized: int = 0


@dataclass(frozen=True)
class RuleTotal:
    system: str
    rule: str
    unit: str
    deleted: int
    bytes: int | None
    anonymized: int = 0


@dataclass(frozen=True)
class RunCount:
    system: str
    rule: str
    status: str
    runs: int


@dataclass(frozen=True)
class Incident:
    at: datetime
    system: str
    rule: str
    # refused | failed | incomplete | interrupted | no end recorded | batch unconfirmed | forced
    kind: str
    reason: str


@dataclass(frozen=True)
class ComplianceRow:
    system: str
    rule: str
    keep: str
    deadline: str
    last_success: datetime | None  # the last run in the period that ended done (verified)
    last_run: datetime | None
    last_status: str | None
    remaining: int | None  # expired objects left after the last run
    verdict: str
    level: str  # green | amber | red
    note: str
    held: int | None = None  # objects the last run left alone because of holds


@dataclass(frozen=True)
class ConfigSeen:
    system: str
    sha256: str
    first_seen: datetime
    last_seen: datetime
    runs: int


@dataclass(frozen=True)
class ConfigReload:
    at: datetime
    system: str
    old_sha256: str
    new_sha256: str
    rules_changed: list[str]
    rules_added: list[str]
    rules_removed: list[str]


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    at: datetime
    signed_seq: int | None
    signed_hash: str | None
    key_fingerprint: str | None
    signature: str | None


# What `retentiond audit verify` reports about a log, as it names it ('audit.jsonl:12: ...'):
# a problem (the log is not intact) or, of the kinds in _UNFINISHED, a warning (intact, but an
# interruption left something for the next run to finish).
LogFinding = audit.Problem


@dataclass(frozen=True)
class LogRepair:
    """A `log_repaired` entry: an incomplete last line moved aside to a side file next to the
    log. Its size, its SHA-256 and the side file's name; never the bytes themselves."""

    at: datetime
    seq: int
    reason: str
    removed_bytes: int
    removed_sha256: str
    moved_to: str


@dataclass(frozen=True)
class LogInfo:
    path: str
    system: str
    hosts: list[str]
    entries: int
    intact: bool  # as `retentiond audit verify` says: no problem (warnings aside)
    broken_line: int | None
    broken_reason: str | None
    head_seq: int
    head_hash: str
    first_entry: datetime | None
    last_entry: datetime | None
    checkpoint: Checkpoint | None
    begins_after: str | None  # the rotated file the oldest one present goes on from, if removed
    verify_commands: list[str]
    problems: list[LogFinding] = field(default_factory=list)
    warnings: list[LogFinding] = field(default_factory=list)
    unsigned_tail: int = 0  # entries after the last checkpoint, not yet signed
    torn_tail: audit.TornTail | None = None  # an incomplete last line, not yet moved aside
    repairs: list[LogRepair] = field(default_factory=list)
    level: str = "green"  # green: intact | amber: intact, with warnings | red: not intact


@dataclass(frozen=True)
class Method:
    kind: str
    title: str
    statement: str


@dataclass(frozen=True)
class Finding:
    """One residual-copy detection (`evidence.report.residual`): found, none, or not checked."""

    check: str
    place: str
    state: str  # found | none | not checked
    detail: str
    attention: bool = False  # copies that may outlive the rules' periods


@dataclass(frozen=True)
class HoldRow:
    """A hold in force in the config: its scope by counts only, never a number."""

    id: str
    reason: str
    approved_by: str
    review_by: date
    review_overdue: bool
    until: date | None
    rules: list[str] | None  # None: every rule
    from_day: date | None
    to_day: date | None
    numbers: int
    extensions: int
    # at the last run of each of its rules, no object of any age was in its scope
    matches_nothing: bool = False


@dataclass(frozen=True)
class HoldEvent:
    """A hold added, changed or ended, as the log recorded it."""

    at: datetime
    system: str
    hold: str
    event: str  # added | changed | ended
    detail: str
    reason: str | None = None
    approved_by: str | None = None
    review_by: str | None = None
    until: str | None = None
    rules: list[str] | None = None
    from_day: str | None = None
    to_day: str | None = None
    numbers: int | None = None
    extensions: int | None = None
    changed: list[str] = field(default_factory=list)
    covers: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HeldCount:
    """What a hold kept in one store when it was last counted (by a run, or when recorded)."""

    hold: str
    system: str
    store: str
    held: int
    counted_at: datetime


@dataclass(frozen=True)
class HoldReport:
    in_force: list[HoldRow]
    history: list[HoldEvent]
    held: list[HeldCount]


@dataclass(frozen=True)
class FieldTransform:
    field: str
    transform: str


@dataclass(frozen=True)
class StoreAnonymization:
    store: str
    kind: str
    fields: list[FieldTransform]
    # the latest measured k (smallest group of equal anonymized records) per system; None:
    # the last run could not measure it
    smallest_group: int | None
    measured: bool
    wording: str


@dataclass(frozen=True)
class Anonymization:
    """How a rule anonymizes, and whether the result may be called anonymous."""

    rule: str
    k_anonymity: int
    wording: str  # anonymized | pseudonymized (smallest group N < k) | ... (not measured)
    anonymous: bool
    stores: list[StoreAnonymization]


@dataclass(frozen=True)
class SubjectStore:
    rule: str
    store: str
    unit: str
    found: int
    held: int
    deleted: int | None
    unsearchable: bool


@dataclass(frozen=True)
class Erasure:
    """An Art. 17 erasure: its ticket and counts, never whose records they were."""

    system: str
    ticket: str
    started: datetime | None
    finished: datetime | None
    status: str  # done | failed | no end recorded
    reason: str | None
    found: int
    deleted: int
    held: int
    stores: list[SubjectStore]
    outcome: str | None = None  # erased | no match | all held | not searched; None: older logs


@dataclass(frozen=True)
class SubjectSearch:
    """An Art. 15 search with a ticket: counts found per store."""

    at: datetime
    system: str
    ticket: str
    found: int
    held: int
    stores: list[SubjectStore]
    outcome: str | None = None  # found | no match | all held | not searched


@dataclass(frozen=True)
class Catalogue:
    """The rule catalogue alone (`report --rules`): the deletion concept for the Art. 30 record."""

    organisation: Organisation
    generated_at: datetime
    version: str
    config_path: str
    config_sha256: str
    grace: str
    rules: list[RuleRow]


@dataclass(frozen=True)
class Report:
    organisation: Organisation
    first_day: date
    last_day: date
    zone: str
    generated_at: datetime
    version: str
    config_path: str
    config_sha256: str
    systems: list[str]
    rules: list[RuleRow]
    compliance: list[ComplianceRow]
    weeks: list[Week]
    deletions_by_week: list[WeekDeletion]
    deletions_by_store: list[StoreDeletion]
    totals: list[RuleTotal]
    runs: list[RunCount]
    incidents: list[Incident]
    holds: HoldReport
    config_hashes: list[ConfigSeen]
    config_reloads: list[ConfigReload]
    logs: list[LogInfo]
    residual_host: str
    residual: list[Finding]
    methods: list[Method]
    grace: str = ""
    notes: list[str] = field(default_factory=list)
    anonymization: list[Anonymization] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    subject_searches: list[SubjectSearch] = field(default_factory=list)


# --- organisation and rule catalogue ------------------------------------------------------------


def organisation(config: Config) -> Organisation:
    org = config.organisation
    if org is None:
        return Organisation(CONTROLLER_NOT_SET, NOT_SET, NOT_SET, configured=False)
    return Organisation(
        org.controller,
        org.dpo_contact or NOT_SET,
        org.processing_record or NOT_SET,
        configured=True,
    )


def catalogue(loaded: LoadedConfig, generated_at: datetime | None = None) -> Catalogue:
    config = loaded.config
    return Catalogue(
        organisation(config),
        (generated_at or datetime.now(UTC)).astimezone(UTC),
        __version__,
        str(loaded.path),
        loaded.sha256,
        str(config.safety.deadline_grace),
        rule_rows(config),
    )


def rule_rows(config: Config) -> list[RuleRow]:
    """The rules in the order DIN 66398 lists them: by period, shortest first."""
    rows = [_rule_row(rule, config) for rule in config.rules]
    return sorted(rows, key=lambda row: (row.keep_days, row.name))


def _rule_row(rule: Rule, config: Config) -> RuleRow:
    _, interval = schedule_interval(rule)
    grace = config.safety.deadline_grace
    then = rule.then_delete_after
    stages: str = rule.action
    if then is not None:
        stages = f"anonymize after {rule.keep}, delete after {then}"
    return RuleRow(
        name=rule.name,
        description=rule.description or NOT_SET,
        purpose=rule.purpose or NOT_SET,
        legal_basis=rule.legal_basis or NOT_SET,
        start_event=rule.start_event,
        keep=str(rule.keep),
        deadline=deadline_text(rule.keep, interval, config.safety.deadline_grace),
        action=rule.action,
        schedule=rule.schedule.text if rule.schedule else "none (retentiond-once.timer, daily)",
        stores=[StoreRef(s.type, s.label, s.optional) for s in rule.stores],
        keep_days=approximate_days(rule.keep),
        stages=stages,
        then_delete_after=str(then) if then is not None else None,
        delete_deadline=deadline_text(then, interval, grace) if then is not None else None,
        min_keep=str(rule.min_keep) if rule.min_keep is not None else None,
        k_anonymity=rule.k_anonymity if rule.action == "anonymize" else None,
    )


def approximate_days(period: Duration) -> float:
    return period.years * 365.25 + period.months * 30.44 + period.weeks * 7 + period.days


def schedule_interval(rule: Rule) -> tuple[timedelta, str]:
    """The longest gap between two scheduled runs of the rule, and its text, as `status` has it."""
    interval = rules.schedule_interval(rule.schedule)
    return interval, rules.interval_text(interval)


def deadline_text(keep: Duration, interval: str, grace: Duration) -> str:
    """The regular deletion period as its three parts: keep + run interval + grace."""
    return f"{keep} + {interval} + {grace}"


def span_text(span: timedelta) -> str:
    """'1 day', '3 days', '1 hour', '1 day 6 hours' (as `retentiond status` names an interval)."""
    hours, rest = divmod(span.seconds, 3600)
    parts = [(span.days, "day"), (hours, "hour"), (rest // 60, "minute")]
    return " ".join(f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in parts if n) or "0 minutes"


# --- reading the logs ----------------------------------------------------------------------------


@dataclass
class _Run:
    system: str
    rule: str
    started: datetime | None = None
    units: dict[str, str] = field(default_factory=dict)
    ended: datetime | None = None
    status: str | None = None
    intents: set[tuple[str, int]] = field(default_factory=set)
    done: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class _Log:
    path: Path
    base: str
    entries: list[audit.Entry]
    check: audit.LogCheck
    hosts: list[str]
    system: str = ""

    @property
    def verification(self) -> audit.Verification:
        return self.check.chain


# What an interrupted run or a power loss leaves for the next run to finish: with `strict`,
# check_log names it as a problem of these kinds; the report shows it as a warning.
_UNFINISHED = frozenset({"unsigned_tail", "torn_tail"})


def _read_log(path: Path) -> _Log:
    """Every intact entry. A broken log still yields what precedes the break; the report shows
    where it breaks (from the check) instead of quietly leaving the rest out."""
    # The check `retentiond audit verify` makes (without a key: signatures are the DPO's to
    # check); strict, so that what is unfinished comes with its kind, file and line.
    check = audit.check_log(path, strict=True)
    verification = check.chain
    entries: list[audit.Entry] = []
    try:
        entries.extend(audit.read_entries(path))
    except AuditError:
        if verification.ok:  # the file changed between the two reads
            raise
    hosts: list[str] = []
    for entry in entries:
        host = entry.fields.get("host")
        if isinstance(host, str) and host and host not in hosts:
            hosts.append(host)
    base = re.sub(r"\.\d+$", "", str(path.absolute()))
    return _Log(path, base, entries, check, hosts)


def _name_systems(logs: list[_Log], config_log: Path, own_system: str | None) -> None:
    """host, or organisation.system for the config's own log; "host (log path)" where two logs
    that are not rotations of one another share a name."""
    own_base = re.sub(r"\.\d+$", "", str(config_log.absolute()))
    for log in logs:
        if own_system and log.base == own_base:
            log.system = own_system
        elif log.hosts:
            log.system = log.hosts[-1]
        else:
            log.system = Path(log.base).name
    bases_by_name: dict[str, set[str]] = defaultdict(set)
    for log in logs:
        bases_by_name[log.system].add(log.base)
    for log in logs:
        if len(bases_by_name[log.system]) > 1:
            log.system = f"{log.system} ({log.base})"


def _when(entry: audit.Entry) -> datetime:
    return datetime.fromisoformat(entry.ts).astimezone(UTC)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# --- the report -----------------------------------------------------------------------------------


def build_report(
    loaded: LoadedConfig,
    log_paths: Sequence[Path],
    period: Period,
    *,
    residual: Sequence[Finding] = (),
    residual_host: str = "",
    generated_at: datetime | None = None,
) -> Report:
    """All figures for the period from the given logs (default: the config's audit.path)."""
    config = loaded.config
    generated = (generated_at or datetime.now(UTC)).astimezone(UTC)
    paths = list(log_paths) or [config.audit.path]
    own_system = config.organisation.system if config.organisation else None
    logs = [_read_log(path) for path in paths]
    _name_systems(logs, config.audit.path, own_system)
    systems = list(dict.fromkeys(log.system for log in logs))
    figures = _Figures(config, period, generated)
    # Rotated files of one system in the order they were written.
    for log in sorted(logs, key=lambda lg: (lg.system, _first_ts(lg))):
        figures.read(log.system, log.entries)
    figures.finish()
    log_infos = [_log_info(log) for log in logs]
    notes = [
        f"The audit log {log.path} is broken at line {log.verification.broken_at}"
        f"{_in_file(log.verification)} ({log.verification.reason}): figures after that line "
        "are missing."
        for log in logs
        if not log.verification.ok
    ]
    notes += [
        f"The audit log {info.path} does not verify: {info.problems[0]}."
        for info in log_infos
        if info.problems and info.broken_line is None
    ]
    in_force = [
        replace(hold, matches_nothing=figures.matching_nothing(hold.id, _hold_rules(hold, config)))
        for hold in hold_rows(config.holds, generated, period.zone)
    ]
    notes += [
        f"Hold {hold.id} matches nothing: at the last run of each of its rules no object of any "
        "age was in its scope, so it protects nothing. Check its numbers (international form, "
        "in quotes), extensions, from/to and rules."
        for hold in in_force
        if hold.matches_nothing
    ]
    notes += [
        f"Hold {hold.id} was due for review on {hold.review_by}: it keeps holding until it is "
        "reviewed (extend review_by, or end it with until:)."
        for hold in in_force
        if hold.review_overdue
    ]
    return Report(
        organisation=organisation(config),
        first_day=period.first_day,
        last_day=period.last_day,
        zone=str(period.zone),
        generated_at=generated,
        version=__version__,
        config_path=str(loaded.path),
        config_sha256=loaded.sha256,
        systems=systems,
        rules=rule_rows(config),
        compliance=figures.compliance(systems),
        weeks=period.weeks(),
        deletions_by_week=figures.by_week(),
        deletions_by_store=figures.by_store(),
        totals=figures.totals(),
        runs=figures.run_counts(),
        incidents=sorted(figures.incidents, key=lambda i: (i.at, i.system, i.rule)),
        holds=HoldReport(in_force, figures.hold_history(), figures.held()),
        config_hashes=figures.config_hashes(),
        config_reloads=figures.reloads,
        logs=log_infos,
        residual_host=residual_host,
        residual=list(residual),
        methods=_methods(config, figures.kinds),
        grace=str(config.safety.deadline_grace),
        notes=notes,
        anonymization=figures.anonymization(),
        erasures=figures.erasures_in_period(),
        subject_searches=sorted(figures.searches, key=lambda s: (s.at, s.system)),
    )


def _hold_rules(hold: HoldRow, config: Config) -> list[str]:
    return hold.rules if hold.rules is not None else [rule.name for rule in config.rules]


def hold_rows(holds: Iterable[HoldConfig], now: datetime, zone: tzinfo) -> list[HoldRow]:
    """The holds in force at `now`, by counts of numbers and extensions only."""
    return [
        HoldRow(
            id=hold.id,
            reason=hold.reason,
            approved_by=hold.approved_by,
            review_by=hold.review_by,
            review_overdue=review_overdue(hold, now, zone),
            until=hold.until,
            rules=list(hold.rules) if hold.rules is not None else None,
            from_day=hold.from_,
            to_day=hold.to,
            numbers=len(hold.numbers),
            extensions=len(hold.extensions),
        )
        for hold in holds
        if hold_in_force(hold, now, zone)
    ]


def _in_file(result: audit.Verification) -> str:
    """' of audit.jsonl.2' where the break is in a rotated file (audit logs that rotate)."""
    broken_file = getattr(result, "broken_file", None)
    return f" of {broken_file}" if broken_file else ""


def _first_ts(log: _Log) -> str:
    return log.entries[0].ts if log.entries else ""


def _methods(config: Config, seen: Iterable[str]) -> list[Method]:
    kinds = {store.type for rule in config.rules for store in rule.stores} | set(seen)
    return [Method(kind, *METHODS[kind]) for kind in METHODS if kind in kinds]


def _findings(check: audit.LogCheck) -> tuple[list[LogFinding], list[LogFinding]]:
    """(problems, warnings) of the check, each with the file and line it names."""
    problems: list[LogFinding] = []
    warnings: list[LogFinding] = []
    for problem in check.problems:
        (warnings if problem.kind in _UNFINISHED else problems).append(problem)
    return problems, warnings


def _repairs(entries: Iterable[audit.Entry]) -> list[LogRepair]:
    return [
        LogRepair(
            at=_when(entry),
            seq=entry.seq,
            reason=_text(entry.fields.get("reason")),
            removed_bytes=_int(entry.fields.get("removed_bytes")),
            removed_sha256=_text(entry.fields.get("removed_sha256")),
            moved_to=_text(entry.fields.get("moved_to")),
        )
        for entry in entries
        if entry.type == audit.LOG_REPAIRED
    ]


def _log_info(log: _Log) -> LogInfo:
    result = log.verification
    problems, warnings = _findings(log.check)
    checkpoint = None
    for entry in reversed(log.entries):
        if entry.type == "checkpoint":
            fields = entry.fields
            checkpoint = Checkpoint(
                seq=entry.seq,
                at=_when(entry),
                signed_seq=_int(fields.get("signed_seq")) if "signed_seq" in fields else None,
                signed_hash=_text(fields.get("signed_hash")) or None,
                key_fingerprint=_text(fields.get("key_fingerprint")) or None,
                signature=_text(fields.get("signature")) or None,
            )
            break
    return LogInfo(
        path=str(log.path),
        system=log.system,
        hosts=log.hosts,
        entries=result.entries,
        intact=not problems,
        broken_line=result.broken_at,
        broken_reason=result.reason,
        head_seq=result.head[0],
        head_hash=result.head[1],
        first_entry=_when(log.entries[0]) if log.entries else None,
        last_entry=_when(log.entries[-1]) if log.entries else None,
        checkpoint=checkpoint,
        begins_after=getattr(result, "begins_after", None),
        verify_commands=_verify_commands(log.path, result, checkpoint),
        problems=problems,
        warnings=warnings,
        unsigned_tail=log.check.unsigned_tail if log.check.checkpoints else 0,
        torn_tail=log.check.torn_tail,
        repairs=_repairs(log.entries),
        level="red" if problems else "amber" if warnings else "green",
    )


def _verify_commands(
    path: Path, result: audit.Verification, checkpoint: Checkpoint | None
) -> list[str]:
    """How the DPO checks the log: the chain; that this report's head is still in it; and,
    where runs are signed, the signatures with the public key."""
    commands = [f"retentiond audit verify {path}"]
    if result.ok and result.head[0] > 0:
        seq, head = result.head
        key = " --public-key PUBLIC-KEY.pub" if checkpoint is not None else ""
        commands.append(f"retentiond audit verify {path}{key} --head {seq}:{head}")
    return commands


class _Figures:
    """Accumulates the figures while the logs are read, one entry at a time."""

    def __init__(self, config: Config, period: Period, generated: datetime) -> None:
        self.config = config
        self.period = period
        self.generated = generated
        self.runs: dict[tuple[str, str], _Run] = {}
        self.week: dict[tuple[str, str, str, str], list[int | None]] = defaultdict(
            lambda: [0, None]
        )
        self.week_anonymized: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.store: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.status: dict[tuple[str, str, str], int] = defaultdict(int)
        self.incidents: list[Incident] = []
        self.hashes: dict[tuple[str, str], list[Any]] = {}
        self.reloads: list[ConfigReload] = []
        self.kinds: set[str] = set()
        # per system and rule: times of verified runs (any time up to the period end), and the
        # last run that ended in the period
        self.successes: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        self.last: dict[tuple[str, str], tuple[datetime, str, int | None, int | None]] = {}
        self.log_start: dict[str, datetime] = {}
        self.keeps: dict[tuple[str, str], str] = {}
        self.seen: dict[str, set[str]] = {}
        self.hold_events: list[HoldEvent] = []
        # (system, hold, store) -> when it was last counted, how many objects it kept there
        self.held_latest: dict[tuple[str, str, str], tuple[datetime, int]] = {}
        self.ended_holds: dict[str, set[str]] = {}
        # (system, rule, store) -> the latest anonymize run's smallest group (None: unknown)
        self.groups: dict[tuple[str, str, str], tuple[datetime, int | None]] = {}
        self.absent_seen: set[str] = set()  # optional stores reported absent at an anonymize run
        self.erasures: dict[tuple[str, str], _Erasure] = {}
        self.searches: list[SubjectSearch] = []
        # rule -> system -> the holds its latest run found matching nothing in its stores
        self.unmatched: dict[str, dict[str, set[str]]] = {}

    def read(self, system: str, entries: list[audit.Entry]) -> None:
        handlers: dict[str, Callable[[str, audit.Entry, datetime], None]] = {
            "run_started": self._started,
            "batch_intent": self._intent,
            "batch_done": self._batch_done,
            "run_finished": self._finished,
            "run_refused": self._refused,
            "run_failed": self._failed,
            "config_reloaded": self._reloaded,
            "hold_added": self._hold,
            "hold_changed": self._hold,
            "hold_ended": self._hold,
            "erasure_started": self._erasure_started,
            "erasure_finished": self._erasure_finished,
            "subject_search": self._subject_search,
        }
        seen = self.seen.setdefault(system, set())
        for entry in entries:
            if entry.hash in seen:  # a rotated file given on its own as well as with its log
                continue
            seen.add(entry.hash)
            at = _when(entry)
            self.log_start.setdefault(system, at)
            handler = handlers.get(entry.type)
            if handler is not None:
                handler(system, entry, at)

    def _run(self, system: str, entry: audit.Entry) -> _Run:
        run_id = _text(entry.fields.get("run_id"))
        run = self.runs.get((system, run_id))
        if run is None:
            run = self.runs[(system, run_id)] = _Run(
                system, _text(entry.fields.get("rule")) or UNKNOWN_RULE
            )
        return run

    def _seen_config(self, system: str, entry: audit.Entry, at: datetime) -> None:
        sha = _text(entry.fields.get("config_sha256"))
        if not sha or not self.period.contains(at):
            return
        seen = self.hashes.setdefault((system, sha), [at, at, 0])
        seen[0], seen[1], seen[2] = min(seen[0], at), max(seen[1], at), seen[2] + 1

    def _started(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._run(system, entry)
        run.started = at
        for store in entry.fields.get("stores") or []:
            if isinstance(store, dict):
                run.units[_text(store.get("store"))] = _text(store.get("unit")) or "objects"
                if store.get("kind") in METHODS:
                    self.kinds.add(str(store["kind"]))
        keep = _text(entry.fields.get("keep"))
        if keep:
            self.keeps[(system, run.rule)] = keep
        self._seen_config(system, entry, at)
        self._count_held(system, entry.fields.get("stores"), at)
        self._forced(system, run.rule, entry, at)
        self._unmatched(system, run.rule, entry)

    def _unmatched(self, system: str, rule: str, entry: audit.Entry) -> None:
        listed = entry.fields.get("holds_matching_nothing")
        holds = {str(hold) for hold in listed} if isinstance(listed, list) else set()
        self.unmatched.setdefault(rule, {})[system] = holds

    def matching_nothing(self, hold: str, rules: Iterable[str]) -> bool:
        """Whether the latest run of every rule the hold covers found nothing in its scope."""
        latest = [self.unmatched.get(rule, {}) for rule in rules]
        return all(
            by_system and all(hold in found for found in by_system.values()) for by_system in latest
        )

    def _forced(self, system: str, rule: str, entry: audit.Entry, at: datetime) -> None:
        forced = entry.fields.get("forced")
        if not forced or not isinstance(forced, list) or not self.period.contains(at):
            return
        reasons = "; ".join(str(reason) for reason in forced)
        self.incidents.append(
            Incident(at, system, rule, "forced", f"safety guard overridden with --force: {reasons}")
        )

    def _count_held(self, system: str, stores: Any, at: datetime) -> None:
        """The latest count of what each hold keeps per store, from a run's store fields. A hold
        in force counted in a store before and absent now keeps nothing there any more; an
        ended hold keeps its last count (what became due when it was released)."""
        if at >= self.period.end:
            return
        ended = self.ended_holds.setdefault(system, set())
        for label, by_hold in _held_by(stores).items():
            for sys_, hold, store in list(self.held_latest):
                if sys_ == system and store == label and hold not in by_hold and hold not in ended:
                    self._held(system, hold, store, 0, at)
            for hold, count in by_hold.items():
                self._held(system, hold, label, count, at)

    def _held(self, system: str, hold: str, store: str, count: int, at: datetime) -> None:
        key = (system, hold, store)
        if key not in self.held_latest or self.held_latest[key][0] <= at:
            self.held_latest[key] = (at, count)

    def _intent(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if self._erasure_batch(system, entry, at, done=False):
            return
        run = self._run(system, entry)
        run.intents.add((_text(entry.fields.get("store")), _int(entry.fields.get("batch"))))

    def _batch_done(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if self._erasure_batch(system, entry, at, done=True):
            return
        run = self._run(system, entry)
        fields = entry.fields
        store = _text(fields.get("store"))
        run.done.add((store, _int(fields.get("batch"))))
        if not self.period.contains(at):
            return
        unit = run.units.get(store, "objects")
        deleted = _int(fields.get("deleted"))
        anonymized = _int(fields.get("anonymized"))
        size = fields.get("bytes")
        week = self.period.week_of(at)
        totals = self.week[(week.label, system, run.rule, unit)]
        totals[0] = (totals[0] or 0) + deleted
        if isinstance(size, int):
            totals[1] = (totals[1] or 0) + size
        self.week_anonymized[(week.label, system, run.rule, unit)] += anonymized
        key = (system, run.rule, store, unit)
        figures = self.store.setdefault(
            key,
            {"deleted": 0, "anonymized": 0, "bytes": None, "batches": 0, "days": [], "skipped": {}},
        )
        figures["deleted"] += deleted
        figures["anonymized"] += anonymized
        figures["batches"] += 1
        if isinstance(size, int):
            figures["bytes"] = (figures["bytes"] or 0) + size
        for day in (fields.get("first_day"), fields.get("last_day")):
            if isinstance(day, str):
                figures["days"].append(day)
        for reason, count in (fields.get("skipped") or {}).items():
            figures["skipped"][reason] = figures["skipped"].get(reason, 0) + _int(count)

    def _end(self, system: str, entry: audit.Entry, at: datetime, status: str) -> _Run:
        run = self._run(system, entry)
        run.ended, run.status = at, status
        key = (system, run.rule)
        if status == "done" and at < self.period.end:
            self.successes[key].append(at)
        stores = entry.fields.get("stores")
        if self.period.contains(at):
            self.status[(system, run.rule, status)] += 1
            remaining = _remaining(stores)
            held = _held_total(stores)
            if key not in self.last or self.last[key][0] <= at:
                self.last[key] = (at, status, remaining, held)
            self._unconfirmed(run, at)
        self._count_held(system, stores, at)
        self._groups(system, run.rule, stores, at)
        return run

    def _groups(self, system: str, rule: str, stores: Any, at: datetime) -> None:
        if at >= self.period.end or not isinstance(stores, list):
            return
        for store in stores:
            if not isinstance(store, dict) or store.get("stage") != "anonymize":
                continue
            if store.get("absent"):
                self.absent_seen.add(_text(store.get("store")))
            if "smallest_group" not in store:
                continue  # an optional store that is not there holds nothing to group
            group = store.get("smallest_group")
            key = (system, rule, _text(store.get("store")))
            if key not in self.groups or self.groups[key][0] <= at:
                self.groups[key] = (at, group if _is_int(group) else None)

    def _finished(self, system: str, entry: audit.Entry, at: datetime) -> None:
        status = _text(entry.fields.get("status")) or "unknown"
        run = self._end(system, entry, at, status)
        if status == "done" or not self.period.contains(at):
            return
        if status == "interrupted":
            reason = "stopped on request after the current batch; the next run continues"
        elif status == "incomplete":
            left = _remaining(entry.fields.get("stores"))
            reason = (
                f"{left if left is not None else 'some'} expired objects remained after the run"
            )
        else:
            stores = [s for s in entry.fields.get("stores") or [] if isinstance(s, dict)]
            failed = [
                f"{_text(store.get('store'))}: {_text(store.get('failed'))}"
                for store in stores
                if store.get("failed")
            ]
            undated = _undated_failures(stores)
            reasons = (
                ["store failed, the rule's other stores were enforced: " + "; ".join(failed)]
                if failed
                else []
            )
            reasons += undated
            reason = "; ".join(reasons) or f"run ended with status {status}"
        self.incidents.append(Incident(at, system, run.rule, status, reason))

    def _refused(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._end(system, entry, at, "refused")
        if self.period.contains(at):
            reason = _text(entry.fields.get("reason")) or "no reason recorded"
            self.incidents.append(Incident(at, system, run.rule, "refused", reason))
        self._seen_config(system, entry, at)
        self._forced(system, run.rule, entry, at)
        self._unmatched(system, run.rule, entry)

    # --- holds, erasures, searches ---

    def _hold(self, system: str, entry: audit.Entry, at: datetime) -> None:
        fields = entry.fields
        hold = _text(fields.get("hold"))
        covers = {
            str(store): _int(count)
            for store, count in (fields.get("covers") or {}).items()
            if _is_int(count)
        }
        if at < self.period.end:
            for store, count in covers.items():
                self._held(system, hold, store, count, at)
            ended = self.ended_holds.setdefault(system, set())
            if entry.type == "hold_ended":
                ended.add(hold)
            else:
                ended.discard(hold)
        if not self.period.contains(at):
            return
        event = entry.type.removeprefix("hold_")
        changed = [str(name) for name in fields.get("changed") or []]
        if entry.type == "hold_ended":
            detail = f"ended: {_text(fields.get('ended')) or 'no reason recorded'}"
        elif entry.type == "hold_changed":
            detail = f"changed: {', '.join(changed) or 'not recorded'}"
        else:
            detail = "added"
        rules_field = fields.get("rules")

        def optional(key: str) -> str | None:
            return _text(fields.get(key)) or None

        def number(key: str) -> int | None:
            value = fields.get(key)
            return value if _is_int(value) else None

        self.hold_events.append(
            HoldEvent(
                at=at,
                system=system,
                hold=hold,
                event=event,
                detail=detail,
                reason=optional("reason"),
                approved_by=optional("approved_by"),
                review_by=optional("review_by"),
                until=optional("until"),
                rules=[str(r) for r in rules_field] if isinstance(rules_field, list) else None,
                from_day=optional("from"),
                to_day=optional("to"),
                numbers=number("numbers"),
                extensions=number("extensions"),
                changed=changed,
                covers=covers,
            )
        )

    def _erasure_started(self, system: str, entry: audit.Entry, at: datetime) -> None:
        fields = entry.fields
        erasure = self.erasures.setdefault(
            (system, _text(fields.get("run_id"))), _Erasure(_text(fields.get("ticket")))
        )
        erasure.started = at
        erasure.stores = _subject_stores(fields.get("stores"))
        self._seen_config(system, entry, at)

    def _erasure_finished(self, system: str, entry: audit.Entry, at: datetime) -> None:
        fields = entry.fields
        erasure = self.erasures.setdefault(
            (system, _text(fields.get("run_id"))), _Erasure(_text(fields.get("ticket")))
        )
        erasure.ticket = erasure.ticket or _text(fields.get("ticket"))
        erasure.finished = at
        erasure.status = _text(fields.get("status")) or "unknown"
        erasure.reason = _text(fields.get("reason")) or None
        erasure.final_deleted = _int(fields.get("deleted"))
        erasure.final_held = _int(fields.get("held"))
        erasure.outcome = _text(fields.get("outcome")) or None
        stores = _subject_stores(fields.get("stores"))
        if stores:
            erasure.stores = stores

    def _erasure_batch(self, system: str, entry: audit.Entry, at: datetime, *, done: bool) -> bool:
        """Batches of an Art. 17 erasure: counted with their erasure, not as regular deletion."""
        fields = entry.fields
        key = (system, _text(fields.get("run_id")))
        if fields.get("stage") != "erase" and key not in self.erasures:
            return False
        erasure = self.erasures.setdefault(key, _Erasure(""))
        batch = (_text(fields.get("store")), _int(fields.get("batch")))
        if done:
            erasure.done.add(batch)
            erasure.batch_deleted += _int(fields.get("deleted"))
        else:
            erasure.intents.add(batch)
        return True

    def _subject_search(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if not self.period.contains(at):
            return
        stores = _subject_stores(entry.fields.get("stores"))
        self.searches.append(
            SubjectSearch(
                at,
                system,
                _text(entry.fields.get("ticket")),
                sum(s.found for s in stores),
                sum(s.held for s in stores),
                stores,
                _text(entry.fields.get("outcome")) or None,
            )
        )

    def _failed(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._end(system, entry, at, "failed")
        if self.period.contains(at):
            reason = _text(entry.fields.get("reason")) or "no reason recorded"
            self.incidents.append(Incident(at, system, run.rule, "failed", reason))

    def _reloaded(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if not self.period.contains(at):
            return
        fields = entry.fields

        def names(key: str) -> list[str]:
            return [str(n) for n in fields.get(key) or []]

        self.reloads.append(
            ConfigReload(
                at,
                system,
                _text(fields.get("old_config_sha256")),
                _text(fields.get("new_config_sha256")),
                names("rules_changed"),
                names("rules_added"),
                names("rules_removed"),
            )
        )

    def _unconfirmed(self, run: _Run, at: datetime) -> None:
        missing = len(run.intents - run.done)
        if missing:
            self.incidents.append(
                Incident(
                    at,
                    run.system,
                    run.rule,
                    "batch unconfirmed",
                    f"{missing} batch intent(s) without a result: the process ended during a "
                    "batch; the next run's survey counts what is left",
                )
            )

    def finish(self) -> None:
        """After every log is read: runs that started in the period and never recorded an end."""
        for run in self.runs.values():
            if run.ended is not None or run.started is None:
                continue
            if not self.period.contains(run.started):
                continue
            self.status[(run.system, run.rule, "no end recorded")] += 1
            self._unconfirmed(run, run.started)
            self.incidents.append(
                Incident(
                    run.started,
                    run.system,
                    run.rule,
                    "no end recorded",
                    "the run started but recorded no end (crash, power loss, or still running "
                    "when the log was copied); the next run completes the work",
                )
            )

    # --- results ---

    def by_week(self) -> list[WeekDeletion]:
        mondays = {w.label: w.monday for w in self.period.weeks()}
        rows = [
            WeekDeletion(
                week,
                mondays.get(week, date.min),
                system,
                rule,
                unit,
                int(v[0] or 0),
                v[1],
                self.week_anonymized.get((week, system, rule, unit), 0),
            )
            for (week, system, rule, unit), v in self.week.items()
        ]
        return sorted(rows, key=lambda r: (r.week, r.system, r.rule, r.unit))

    def by_store(self) -> list[StoreDeletion]:
        rows = []
        for (system, rule, store, unit), f in self.store.items():
            days = sorted(f["days"])
            rows.append(
                StoreDeletion(
                    system,
                    rule,
                    store,
                    unit,
                    f["deleted"],
                    f["bytes"],
                    f["batches"],
                    days[0] if days else None,
                    days[-1] if days else None,
                    dict(sorted(f["skipped"].items())),
                    f["anonymized"],
                )
            )
        return sorted(rows, key=lambda r: (r.system, r.rule, r.store))

    def totals(self) -> list[RuleTotal]:
        sums: dict[tuple[str, str, str], list[int | None]] = defaultdict(lambda: [0, None, 0])
        for row in self.by_store():
            total = sums[(row.system, row.rule, row.unit)]
            total[0] = (total[0] or 0) + row.deleted
            total[2] = (total[2] or 0) + row.anonymized
            if row.bytes is not None:
                total[1] = (total[1] or 0) + row.bytes
        return [
            RuleTotal(system, rule, unit, int(v[0] or 0), v[1], int(v[2] or 0))
            for (system, rule, unit), v in sorted(sums.items())
        ]

    def hold_history(self) -> list[HoldEvent]:
        return sorted(self.hold_events, key=lambda e: (e.at, e.system, e.hold))

    def held(self) -> list[HeldCount]:
        rows = [
            HeldCount(hold, system, store, count, at)
            for (system, hold, store), (at, count) in self.held_latest.items()
        ]
        return sorted(rows, key=lambda r: (r.hold, r.system, r.store))

    def anonymization(self) -> list[Anonymization]:
        """Per anonymize rule: each store's transforms and latest measured smallest group.

        "anonymized" only when every store of the rule, on every system that anonymized it,
        last measured a smallest group of at least the rule's k; else "pseudonymized"."""
        results = []
        for rule in self.config.rules:
            if rule.action != "anonymize":
                continue
            k = rule.k_anonymity
            stores = []
            for store in rule.stores:
                transforms: dict[str, Any] = getattr(store, "anonymize", None) or {}
                named = store.type == "csv"
                fields = [
                    FieldTransform(f"field {key}" if named else key, transform.describe())
                    for key, transform in transforms.items()
                ]
                measured = [
                    group
                    for (_, rule_name, label), (_, group) in self.groups.items()
                    if rule_name == rule.name and label == store.label
                ]
                known = bool(measured) and all(g is not None for g in measured)
                smallest = min((g for g in measured if g is not None), default=None)
                stores.append(
                    StoreAnonymization(
                        store.label,
                        store.type,
                        fields,
                        smallest,
                        known,
                        _wording(smallest, known, k),
                    )
                )
            below = [s.smallest_group for s in stores if s.smallest_group is not None]
            lowest = min(below, default=None)
            # a group measured below k settles it; else every store that anonymized anything
            # must have been measured (an optional store absent everywhere holds nothing)
            below_k = lowest is not None and lowest < k
            measured_labels = {label for (_, _, label) in self.groups}
            absent_only = self.absent_seen - measured_labels
            present = [s for s in stores if s.measured or s.store not in absent_only]
            settled = below_k or (bool(present) and all(s.measured for s in present))
            wording = _wording(lowest, settled, k)
            results.append(Anonymization(rule.name, k, wording, wording == ANONYMIZED, stores))
        return results

    def erasures_in_period(self) -> list[Erasure]:
        rows = []
        for (system, _), e in self.erasures.items():
            moment = e.started or e.finished
            if moment is None or not self.period.contains(moment):
                continue
            stores = e.stores
            finished = e.finished is not None
            status, reason = e.status, e.reason
            if not finished:
                status = "no end recorded"
                reason = (
                    "the erasure started but recorded no end (crash or power loss); "
                    "run it again with the same ticket"
                )
            rows.append(
                Erasure(
                    system=system,
                    ticket=e.ticket,
                    started=e.started,
                    finished=e.finished,
                    status=status,
                    reason=reason,
                    found=sum(s.found for s in stores),
                    deleted=e.final_deleted if finished else e.batch_deleted,
                    held=e.final_held if finished else sum(s.held for s in stores),
                    stores=stores,
                    outcome=e.outcome if finished else None,
                )
            )
        return sorted(rows, key=lambda r: (r.started or r.finished or self.period.start, r.system))

    def run_counts(self) -> list[RunCount]:
        return [
            RunCount(system, rule, status, count)
            for (system, rule, status), count in sorted(self.status.items())
        ]

    def config_hashes(self) -> list[ConfigSeen]:
        rows = [
            ConfigSeen(system, sha, first, last, runs)
            for (system, sha), (first, last, runs) in self.hashes.items()
        ]
        return sorted(rows, key=lambda r: (r.system, r.first_seen))

    def compliance(self, systems: list[str]) -> list[ComplianceRow]:
        config = self.config
        rows = []
        window_end = min(self.period.end, self.generated)
        for system in systems:
            names = [rule.name for rule in config.rules]
            names += sorted({r.rule for r in self.runs.values() if r.system == system} - set(names))
            for name in names:
                rows.append(self._compliance_row(system, name, window_end))
        return rows

    def _compliance_row(self, system: str, name: str, window_end: datetime) -> ComplianceRow:
        config = self.config
        grace = config.safety.deadline_grace
        try:
            rule: Rule | None = config.rule(name)
        except KeyError:
            rule = None
        if rule is not None:
            keep: Duration | None = rule.keep
            interval, interval_text = schedule_interval(rule)
        else:
            keep = _parse_keep(self.keeps.get((system, name), ""))
            interval = UNSCHEDULED_INTERVAL
            interval_text = f"{span_text(interval)} (assumed)"
        keep_text = str(keep) if keep else "unknown"
        deadline = deadline_text(keep, interval_text, grace) if keep else "unknown"
        successes = sorted(self.successes.get((system, name), []))
        last = self.last.get((system, name))
        verdict, level, why = verdict_for(
            successes,
            last[1] if last else None,
            self.period.start,
            window_end,
            lambda t: t + interval + grace.delta(),
            self.period.zone,
        )
        if rule is None:
            why = f"{why}; the rule is not in this config (keep from the log)"
        return ComplianceRow(
            held=last[3] if last else None,
            system=system,
            rule=name,
            keep=keep_text,
            deadline=deadline,
            last_success=max((t for t in successes if self.period.contains(t)), default=None),
            last_run=last[0] if last else None,
            last_status=last[1] if last else None,
            remaining=last[2] if last else None,
            verdict=verdict,
            level=level,
            note=why,
        )


ANONYMIZED = "anonymized"


def _wording(smallest: int | None, measured: bool, k: int) -> str:
    if not measured or smallest is None:
        return "pseudonymized (group sizes not measured)"
    if smallest < k:
        return f"pseudonymized (smallest group {smallest} < {k})"
    return ANONYMIZED


@dataclass
class _Erasure:
    ticket: str
    started: datetime | None = None
    finished: datetime | None = None
    status: str = ""
    reason: str | None = None
    stores: list[SubjectStore] = field(default_factory=list)
    final_deleted: int = 0
    final_held: int = 0
    outcome: str | None = None
    batch_deleted: int = 0
    intents: set[tuple[str, int]] = field(default_factory=set)
    done: set[tuple[str, int]] = field(default_factory=set)


def _subject_stores(stores: Any) -> list[SubjectStore]:
    if not isinstance(stores, list):
        return []
    return [
        SubjectStore(
            rule=_text(store.get("rule")),
            store=_text(store.get("store")),
            unit=_text(store.get("unit")) or "objects",
            found=_int(store.get("found")),
            held=_int(store.get("held")),
            deleted=store["deleted"] if _is_int(store.get("deleted")) else None,
            unsearchable=bool(store.get("unsearchable")),
        )
        for store in stores
        if isinstance(store, dict)
    ]


def _held_by(stores: Any) -> dict[str, dict[str, int]]:
    """store label -> hold -> objects held, from a run entry's stores; a store listed for both
    stages of a two-stage rule counts the larger of the two."""
    result: dict[str, dict[str, int]] = {}
    if not isinstance(stores, list):
        return result
    for store in stores:
        if not isinstance(store, dict) or store.get("absent"):
            continue
        by_hold = result.setdefault(_text(store.get("store")), {})
        for hold, count in (store.get("held_by") or {}).items():
            if _is_int(count):
                by_hold[str(hold)] = max(by_hold.get(str(hold), 0), count)
    return result


def _undated_failures(stores: list[dict[str, Any]]) -> list[str]:
    """Why a run failed for objects that cannot be dated, from its stores' counts."""
    reasons: dict[str, str] = {}
    for store in stores:
        if not store.get("undated_failed"):
            continue
        tolerated = store.get("undated_tolerated")
        share = f"{tolerated * 100:.3g}%" if isinstance(tolerated, int | float) else "unknown"
        reasons.setdefault(
            _text(store.get("store")),
            f"{_text(store.get('store'))}: {_int(store.get('undated'))} objects cannot be dated "
            f"and are never deleted (tolerated: {share})",
        )
    return list(reasons.values())


def _held_total(stores: Any) -> int | None:
    """Objects a run left alone because of holds, over its stores (larger stage per store)."""
    if not isinstance(stores, list):
        return None
    per_store: dict[str, int] = {}
    for store in stores:
        if isinstance(store, dict):
            label = _text(store.get("store"))
            per_store[label] = max(per_store.get(label, 0), _int(store.get("held")))
    return sum(per_store.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_keep(text: str) -> Duration | None:
    try:
        return parse_duration(text) if text else None
    except ValueError:
        return None


def _remaining(stores: Any) -> int | None:
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


def verdict_for(
    successes: Sequence[datetime],
    last_status: str | None,
    start: datetime,
    end: datetime,
    covered_until: Callable[[datetime], datetime],
    zone: tzinfo = UTC,
) -> tuple[str, str, str]:
    """Whether the deadline held at every moment from `start` to `end`.

    A verified run (status done) at T leaves nothing older than keep, so until
    `covered_until(T)` = T + run interval + grace nothing can be older than the deadline. A moment
    not covered by any earlier verified run is a moment the deadline may have been exceeded.
    """
    if end <= start:
        return "not evaluated", "amber", "the period has not begun"
    done = sorted(t for t in successes if t <= end)
    if not done:
        return "no verified run", "red", "no run of this rule ended done (verified) by then"
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    earlier = [t for t in done if t <= start]
    covered = covered_until(earlier[-1]) if earlier else None
    leading: datetime | None = None
    if covered is None:
        leading = done[0]  # no verified run before the period: evidence starts with the first
        cursor = done[0]
        covered = covered_until(done[0])
    for moment in (t for t in done if t > cursor):
        if moment > covered:
            gaps.append((covered, moment))
        covered = max(covered, covered_until(moment))
    if covered < end:
        gaps.append((covered, end))
    if gaps:
        first, last = max(gaps, key=lambda g: g[1] - g[0])
        days = (last - first).total_seconds() / 86400
        return (
            "deadline exceeded",
            "red",
            f"no verified run for {days:.1f} days beyond the allowed interval "
            f"({_date(first, zone)} to {_date(last, zone)})",
        )
    if leading is not None and leading > start:
        return (
            "met since the first verified run",
            "amber",
            f"not evidenced before {_date(leading, zone)}: no verified run earlier in the log",
        )
    if last_status not in (None, "done"):
        return "met", "amber", f"the last run in the period ended {last_status}"
    return "met", "green", "every moment of the period was within the deadline"


def _date(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

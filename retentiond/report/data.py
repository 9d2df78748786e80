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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

from retentiond import __version__, audit, rules
from retentiond.config.durations import Duration, parse_duration
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Config, Rule
from retentiond.errors import AuditError
from retentiond.rules import earliest_instant

HOLDS_NOTE = "none (not available in this version)"
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


@dataclass(frozen=True)
class WeekDeletion:
    week: str
    week_start: date
    system: str
    rule: str
    unit: str
    deleted: int
    bytes: int | None


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


@dataclass(frozen=True)
class RuleTotal:
    system: str
    rule: str
    unit: str
    deleted: int
    bytes: int | None


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
    kind: str  # refused | failed | incomplete | interrupted | no end recorded | batch unconfirmed
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


@dataclass(frozen=True)
class LogInfo:
    path: str
    system: str
    hosts: list[str]
    entries: int
    intact: bool
    broken_line: int | None
    broken_reason: str | None
    head_seq: int
    head_hash: str
    first_entry: datetime | None
    last_entry: datetime | None
    checkpoint: Checkpoint | None
    begins_after: str | None  # the rotated file the oldest one present goes on from, if removed
    verify_commands: list[str]


@dataclass(frozen=True)
class Method:
    kind: str
    title: str
    statement: str


@dataclass(frozen=True)
class Finding:
    """One residual-copy detection (retentiond.report.residual): found, none, or not checked."""

    check: str
    place: str
    state: str  # found | none | not checked
    detail: str
    attention: bool = False  # copies that may outlive the rules' periods


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
    holds: str
    config_hashes: list[ConfigSeen]
    config_reloads: list[ConfigReload]
    logs: list[LogInfo]
    residual_host: str
    residual: list[Finding]
    methods: list[Method]
    grace: str = ""
    notes: list[str] = field(default_factory=list)


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
    verification: audit.Verification
    hosts: list[str]
    system: str = ""


def _read_log(path: Path) -> _Log:
    """Every intact entry. A broken log still yields what precedes the break; the report shows
    where it breaks (from verify) instead of quietly leaving the rest out."""
    verification = audit.verify(path)
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
    return _Log(path, base, entries, verification, hosts)


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
    notes = [
        f"The audit log {log.path} is broken at line {log.verification.broken_at}"
        f"{_in_file(log.verification)} ({log.verification.reason}): figures after that line "
        "are missing."
        for log in logs
        if not log.verification.ok
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
        holds=HOLDS_NOTE,
        config_hashes=figures.config_hashes(),
        config_reloads=figures.reloads,
        logs=[_log_info(log) for log in logs],
        residual_host=residual_host,
        residual=list(residual),
        methods=_methods(config, figures.kinds),
        grace=str(config.safety.deadline_grace),
        notes=notes,
    )


def _in_file(result: audit.Verification) -> str:
    """' of audit.jsonl.2' where the break is in a rotated file (audit logs that rotate)."""
    broken_file = getattr(result, "broken_file", None)
    return f" of {broken_file}" if broken_file else ""


def _first_ts(log: _Log) -> str:
    return log.entries[0].ts if log.entries else ""


def _methods(config: Config, seen: Iterable[str]) -> list[Method]:
    kinds = {store.type for rule in config.rules for store in rule.stores} | set(seen)
    return [Method(kind, *METHODS[kind]) for kind in METHODS if kind in kinds]


def _log_info(log: _Log) -> LogInfo:
    result = log.verification
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
        intact=result.ok,
        broken_line=result.broken_at,
        broken_reason=result.reason,
        head_seq=result.head[0],
        head_hash=result.head[1],
        first_entry=_when(log.entries[0]) if log.entries else None,
        last_entry=_when(log.entries[-1]) if log.entries else None,
        checkpoint=checkpoint,
        begins_after=getattr(result, "begins_after", None),
        verify_commands=_verify_commands(log.path, result, checkpoint),
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
        self.store: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.status: dict[tuple[str, str, str], int] = defaultdict(int)
        self.incidents: list[Incident] = []
        self.hashes: dict[tuple[str, str], list[Any]] = {}
        self.reloads: list[ConfigReload] = []
        self.kinds: set[str] = set()
        # per system and rule: times of verified runs (any time up to the period end), and the
        # last run that ended in the period
        self.successes: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        self.last: dict[tuple[str, str], tuple[datetime, str, int | None]] = {}
        self.log_start: dict[str, datetime] = {}
        self.keeps: dict[tuple[str, str], str] = {}
        self.seen: dict[str, set[str]] = {}

    def read(self, system: str, entries: list[audit.Entry]) -> None:
        handlers: dict[str, Callable[[str, audit.Entry, datetime], None]] = {
            "run_started": self._started,
            "batch_intent": self._intent,
            "batch_done": self._batch_done,
            "run_finished": self._finished,
            "run_refused": self._refused,
            "run_failed": self._failed,
            "config_reloaded": self._reloaded,
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

    def _intent(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._run(system, entry)
        run.intents.add((_text(entry.fields.get("store")), _int(entry.fields.get("batch"))))

    def _batch_done(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._run(system, entry)
        fields = entry.fields
        store = _text(fields.get("store"))
        run.done.add((store, _int(fields.get("batch"))))
        if not self.period.contains(at):
            return
        unit = run.units.get(store, "objects")
        deleted = _int(fields.get("deleted"))
        size = fields.get("bytes")
        week = self.period.week_of(at)
        totals = self.week[(week.label, system, run.rule, unit)]
        totals[0] = (totals[0] or 0) + deleted
        if isinstance(size, int):
            totals[1] = (totals[1] or 0) + size
        key = (system, run.rule, store, unit)
        figures = self.store.setdefault(
            key, {"deleted": 0, "bytes": None, "batches": 0, "days": [], "skipped": {}}
        )
        figures["deleted"] += deleted
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
        if self.period.contains(at):
            self.status[(system, run.rule, status)] += 1
            remaining = _remaining(entry.fields.get("stores"))
            if key not in self.last or self.last[key][0] <= at:
                self.last[key] = (at, status, remaining)
            self._unconfirmed(run, at)
        return run

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
            reason = f"run ended with status {status}"
        self.incidents.append(Incident(at, system, run.rule, status, reason))

    def _refused(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._end(system, entry, at, "refused")
        if self.period.contains(at):
            reason = _text(entry.fields.get("reason")) or "no reason recorded"
            self.incidents.append(Incident(at, system, run.rule, "refused", reason))
        self._seen_config(system, entry, at)

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
                week, mondays.get(week, date.min), system, rule, unit, int(v[0] or 0), v[1]
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
                )
            )
        return sorted(rows, key=lambda r: (r.system, r.rule, r.store))

    def totals(self) -> list[RuleTotal]:
        sums: dict[tuple[str, str, str], list[int | None]] = defaultdict(lambda: [0, None])
        for row in self.by_store():
            total = sums[(row.system, row.rule, row.unit)]
            total[0] = (total[0] or 0) + row.deleted
            if row.bytes is not None:
                total[1] = (total[1] or 0) + row.bytes
        return [
            RuleTotal(system, rule, unit, int(v[0] or 0), v[1])
            for (system, rule, unit), v in sorted(sums.items())
        ]

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

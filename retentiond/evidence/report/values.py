"""The values of the DPO report: what `build.build_report` fills in from the config and the
deletion logs, and `render` turns into HTML, PDF, CSV and JSON.

Everything here is category level, like the log it is read from: counts, dates, rule names,
store labels and hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo

from retentiond.evidence import log as audit
from retentiond.i18n import DEFAULT, Language
from retentiond.policy.rules import earliest_instant


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
# a problem (the log is not intact) or, of the kinds `logs` counts as unfinished, a warning
# (intact, but an interruption left something for the next run to finish).
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
    language: Language = DEFAULT  # the words of every text in it and of its rendering (i18n.py)


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
    language: Language = DEFAULT  # the words of every text in it and of its rendering (i18n.py)


# --- organisation and rule catalogue ------------------------------------------------------------

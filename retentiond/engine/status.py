"""Is every rule within its deadline? The status of each rule; reads only, changes nothing.

Per rule: keep, schedule and interval, the deadline (keep + interval + safety.deadline_grace), the
last successful run and the last run from the deletion log, the next scheduled run, and per store
what remains: total, expired (older than the cutoff), overdue (older than the deadline), left
behind (already expired at the last successful run's cutoff), held, and the oldest object. The
output holds counts, dates, rule names and store labels only, never an object.

Verdict of a rule: RED if any RED reason applies, else AMBER if any AMBER reason does, else GREEN.

RED     objects older than the deadline remain in a store; or the last run failed or was refused
        and expired objects remain; or a store cannot be opened or surveyed (the message says why);
        or more of a store's objects than it tolerates cannot be dated (max_undated_fraction):
        they are never deleted, however old they are.
AMBER   no successful run is recorded; or the last run ended incomplete or interrupted, or has no
        end in the log (running now, or crashed); or the last run failed or was refused (nothing
        expired remains yet); or objects remain that were already expired at the cutoff of the
        last successful run (a run should have deleted them).
GREEN   otherwise. Objects that expired after the last successful run are shown but wait, within
        the deadline, for the next scheduled run; an absent optional store is shown as such;
        undated objects within the tolerated share are shown with their count.

Exit: 4 when a rule is RED for its data (objects overdue, undated objects beyond the tolerated
share, or a failed or refused run with expired objects left); else 1 when a store cannot be
surveyed or the deletion log cannot be read; else 0.
Config errors exit 2 before anything is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Config, Rule, StoreConfig
from retentiond.engine.engine import Engine, utcnow
from retentiond.engine.plan import ANONYMIZE, DELETE, RulePlan
from retentiond.engine.undated import Undated
from retentiond.errors import AuditError, StoreError
from retentiond.evidence import log as audit
from retentiond.evidence.history import History, read_history
from retentiond.policy.rules import Deadline, deadline, hold_in_force, review_overdue
from retentiond.policy.rules import cutoff as compute_cutoff
from retentiond.stores import AbsentStore, Store

Level = Literal["green", "amber", "red"]
_RANK: dict[Level, int] = {"green": 0, "amber": 1, "red": 2}
EXIT_DEADLINE = 4  # DESIGN.md: "4 a deadline is exceeded"
EXIT_UNKNOWN = 1  # a store or the deletion log could not be read: compliance is not known
NO_HOLDS_LINE = "holds: none in force"
_ENDED = {
    "failed": "failed",
    "refused": "was refused",
    "incomplete": "ended incomplete",
    "interrupted": "was interrupted",
}


# --- what status knows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run of a rule as the deletion log tells it (the entry that ended it, or started it)."""

    seq: int
    ts: datetime
    status: str  # done | incomplete | interrupted | failed | refused | unfinished (no end yet)
    run_id: str | None
    deleted: int | None = None
    cutoff: datetime | None = None  # from the run's run_started entry


@dataclass(frozen=True)
class RunHistory:
    last_success: RunRecord | None = None
    last_run: RunRecord | None = None


@dataclass(frozen=True)
class HoldStatus:
    """A hold in force over a rule, as status shows it."""

    id: str
    review_by: date
    held: int  # objects of the rule it keeps from deletion
    review_overdue: bool = False
    until: date | None = None
    matches_nothing: bool = False  # no object of any age in the stores of its rules


@dataclass(frozen=True)
class StoreStatus:
    label: str
    kind: str
    unit: str
    total: int = 0
    expired: int = 0  # older than the cutoff (now - keep)
    overdue: int = 0  # older than the deadline instant
    left_behind: int = 0  # already expired at the cutoff of the last successful run
    held: int = 0  # under a hold: never deleted, never overdue
    held_by: Mapping[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    skipped: Mapping[str, int] = field(default_factory=dict)
    absent: str | None = None  # an optional store that is not there, and why
    error: str | None = None  # the store could not be opened or surveyed
    refusal: str | None = None  # why a run now would be refused
    unmatched: tuple[str, ...] = ()  # holds over the rule with no object of any age here
    undated: Undated | None = None  # objects no date can be read from: never deleted
    undated_failure: str | None = None  # more of them than the store tolerates


@dataclass(frozen=True)
class Reason:
    level: Level
    text: str


@dataclass(frozen=True)
class RuleStatus:
    rule: Rule
    now: datetime
    cutoff: datetime
    deadline: Deadline
    deadline_instant: datetime
    next_run: datetime | None
    history: RunHistory
    stores: list[StoreStatus]
    holds: list[HoldStatus]
    reasons: list[Reason]
    exit_code: int

    @property
    def verdict(self) -> Level:
        return max((r.level for r in self.reasons), key=_RANK.__getitem__, default="green")

    @property
    def surveyed(self) -> list[StoreStatus]:
        return [s for s in self.stores if s.error is None and s.absent is None]

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.surveyed)

    @property
    def oldest(self) -> StoreStatus | None:
        dated = [s for s in self.surveyed if s.oldest is not None]
        return min(dated, key=lambda s: s.oldest or self.now, default=None)

    @property
    def refusal(self) -> str | None:
        return next((s.refusal for s in self.stores if s.refusal), None)


@dataclass(frozen=True)
class Status:
    now: datetime
    zone: tzinfo
    audit_path: Path
    audit_problem: str | None
    rules: list[RuleStatus]
    reports: ReportHistory | None = None  # None: no reports: in the config

    @property
    def verdict(self) -> Level:
        return max((r.verdict for r in self.rules), key=_RANK.__getitem__, default="green")

    @property
    def exit_code(self) -> int:
        codes = {r.exit_code for r in self.rules}
        if self.audit_problem:
            codes.add(EXIT_UNKNOWN)
        return EXIT_DEADLINE if EXIT_DEADLINE in codes else max(codes, default=0)


REPORT_SENT = "report_sent"
REPORT_FAILED = "report_failed"


@dataclass
class ReportHistory:
    """What the deletion log says about the DPO reports (`reports:`, service/reports.py):
    the periods sent, the last delivery, the periods whose attempts failed so far."""

    sent: set[str] = field(default_factory=set)
    last_success: datetime | None = None
    last_period: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # period: failed attempts, unsent
    last_error: str | None = None
    first_entry: datetime | None = None

    def read(self, entry: audit.Entry) -> None:
        if self.first_entry is None:
            self.first_entry = _report_instant(entry.ts)
        key = entry.fields.get("period")
        if not isinstance(key, str):
            return
        if entry.type == REPORT_SENT:
            self.sent.add(key)
            self.failures.pop(key, None)
            self.last_success = _report_instant(entry.ts)
            self.last_period = key
        elif entry.type == REPORT_FAILED and key not in self.sent:
            self.failures[key] = self.failures.get(key, 0) + 1
            error = entry.fields.get("error")
            self.last_error = error if isinstance(error, str) else None


def read_report_history(entries: Iterable[audit.Entry]) -> ReportHistory:
    history = ReportHistory()
    for entry in entries:
        history.read(entry)
    return history


def _report_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- computing it ------------------------------------------------------------------------------


def compute(loaded: LoadedConfig, now: datetime | None = None) -> Status:
    """The status of every rule at `now`: surveys every store (read-only) and reads the log."""
    config = loaded.config
    now = now or utcnow()
    zone = config.zone()
    path = audit.log_path(config)
    histories, problem = run_histories(path)
    engine = Engine(loaded, now=lambda: now)
    past = read_history(path)
    rules = [
        rule_status(engine, rule, histories.get(rule.name, RunHistory()), past)
        for rule in config.rules
    ]
    unmatched = holds_matching_nothing(rules)
    reports = None
    if config.reports is not None:
        reports = ReportHistory()
        with suppress(AuditError):  # run_histories already says why the log cannot be read
            for entry in audit.read_entries(path):
                reports.read(entry)
    return Status(now, zone, path, problem, [flag(r, unmatched) for r in rules], reports)


def holds_matching_nothing(rules: Iterable[RuleStatus]) -> set[str]:
    """Holds with no object of any age in any store of any rule they cover. A store that could
    not be surveyed cannot tell: its holds are not called unmatched (its error is reported)."""
    covered: set[str] = set()
    matched: set[str] = set()
    for rule in rules:
        ids = {hold.id for hold in rule.holds}
        covered |= ids
        for store in rule.stores:
            if store.error is not None:
                matched |= ids
            elif store.absent is None:
                matched |= ids - set(store.unmatched)
    return covered - matched


def flag(rule: RuleStatus, unmatched: set[str]) -> RuleStatus:
    """A hold that matches nothing protects nothing: AMBER, with what to check. Not RED: no
    retention deadline is missed, but the DPO must see that the hold is not doing its job."""
    flagged = [hold.id for hold in rule.holds if hold.id in unmatched]
    if not flagged:
        return rule
    holds = [replace(hold, matches_nothing=hold.id in unmatched) for hold in rule.holds]
    reasons = [
        Reason(
            "amber",
            f"hold {hold_id} matches nothing: no object of any age in the stores of its rules, "
            "so it protects nothing; check its numbers (international form, in quotes), "
            "extensions, from/to and rules",
        )
        for hold_id in flagged
    ]
    return replace(rule, holds=holds, reasons=[*rule.reasons, *reasons])


def rule_status(
    engine: Engine, rule: Rule, history: RunHistory, past: History | None = None
) -> RuleStatus:
    config = engine.config
    now, zone = engine.now(), config.zone()
    rule_deadline = deadline(rule.keep, rule.schedule, config.safety.deadline_grace)
    overdue_before = rule_deadline.instant(now, zone)
    success = history.last_success
    left_before = success.cutoff if success else None
    stores = [
        _store_status(engine, rule, store_config, overdue_before, left_before, past or History())
        for store_config in rule.stores
    ]
    next_run = None
    if rule.schedule is not None:
        next_run = rule.schedule.trigger(zone).get_next_fire_time(None, now)
    cutoff = compute_cutoff(now, rule.keep, zone)
    holds = open_holds(config, rule, now, stores)
    reasons, code = judge(stores, history)
    reasons += [
        Reason("amber", f"hold {h.id} was due for review on {h.review_by}; it keeps holding")
        for h in holds
        if h.review_overdue
    ]
    return RuleStatus(
        rule,
        now,
        cutoff,
        rule_deadline,
        overdue_before,
        next_run,
        history,
        stores,
        holds,
        reasons,
        code,
    )


def _store_status(
    engine: Engine,
    rule: Rule,
    store_config: StoreConfig,
    overdue_before: datetime,
    left_before: datetime | None,
    past: History,
) -> StoreStatus:
    """Open one store on its own (one that fails does not hide the others) and survey it the way
    `plan` does, then again at the deadline and at the last successful run's cutoff."""
    single = rule.model_copy(update={"stores": [store_config]})
    try:
        with engine.open_stores(single) as (store,):
            plan = engine.plan(single, [store], past)
            (store_plan,) = plan.stores
            survey = store_plan.survey
            if isinstance(store, AbsentStore):
                return StoreStatus(store.label, store.kind, store.unit, absent=store.reason)
            overdue = left_behind = 0
            if survey.expired:  # both are parts of what is expired
                overdue = _expired(store, plan, min(overdue_before, plan.cutoff))
                if left_before is not None and plan.stage == DELETE:
                    left_behind = _expired(store, plan, min(left_before, plan.cutoff))
            return StoreStatus(
                store.label,
                store.kind,
                survey.unit,
                total=survey.total,
                expired=survey.expired,
                overdue=overdue,
                left_behind=left_behind,
                held=survey.held,
                held_by=dict(survey.held_by),
                oldest=survey.oldest,
                skipped=dict(survey.skipped),
                refusal=plan.refusal,
                unmatched=plan.unmatched,
                undated=store_plan.undated,
                undated_failure=store_plan.undated_failure,
            )
    except StoreError as error:
        return StoreStatus(store_config.label, store_config.type, "objects", error=str(error))


def _expired(store: Store, plan: RulePlan, before: datetime) -> int:
    """Unheld objects older than `before` that the plan's stage has yet to treat."""
    if plan.stage == ANONYMIZE:
        (store_plan,) = plan.stores
        return store.anonymize_survey(before, plan.holds, store_plan.since).expired
    return store.survey(before, plan.holds).expired


def open_holds(
    config: Config, rule: Rule, now: datetime, stores: Iterable[StoreStatus] = ()
) -> list[HoldStatus]:
    """The holds in force over a rule, with what they keep in its stores; a hold past its
    review date keeps holding and is flagged."""
    zone = config.zone()
    return [
        HoldStatus(
            hold.id,
            hold.review_by,
            sum(s.held_by.get(hold.id, 0) for s in stores),
            review_overdue(hold, now, zone),
            hold.until,
        )
        for hold in config.holds
        if (hold.rules is None or rule.name in hold.rules) and hold_in_force(hold, now, zone)
    ]


def judge(stores: list[StoreStatus], history: RunHistory) -> tuple[list[Reason], int]:
    """The reasons behind a rule's verdict (see the module docstring), and its exit code."""
    reasons: list[Reason] = []
    code = 0
    surveyed = [s for s in stores if s.error is None and s.absent is None]
    for store in surveyed:
        if store.overdue:
            reasons.append(
                Reason(
                    "red", f"{store.overdue} {store.unit} in {store.label} are past the deadline"
                )
            )
            code = EXIT_DEADLINE
    for store in surveyed:
        if store.undated_failure is not None:
            # Never deleted, however old: as good as overdue, and a run fails for them
            reasons.append(Reason("red", f"{store.label}: {store.undated_failure}"))
            code = EXIT_DEADLINE
    for store in stores:
        if store.error is not None:
            reasons.append(Reason("red", f"{store.label} could not be surveyed (see its error)"))
            code = code or EXIT_UNKNOWN
    expired = sum(s.expired for s in surveyed)
    last, success = history.last_run, history.last_success
    if last is not None and last.status in ("failed", "refused"):
        if expired:
            reasons.append(
                Reason(
                    "red",
                    f"the last run {_ENDED[last.status]} (deletion log entry #{last.seq}) "
                    f"and {expired} expired objects remain",
                )
            )
            code = EXIT_DEADLINE
        else:
            reasons.append(
                Reason(
                    "amber",
                    f"the last run {_ENDED[last.status]} (deletion log entry #{last.seq}); "
                    "nothing expired remains yet",
                )
            )
    if success is None:
        reasons.append(Reason("amber", "no successful run is recorded in the deletion log"))
    if last is not None and last.status in ("incomplete", "interrupted"):
        reasons.append(
            Reason("amber", f"the last run {_ENDED[last.status]} (deletion log entry #{last.seq})")
        )
    if last is not None and last.status == "unfinished":
        reasons.append(
            Reason(
                "amber",
                f"the last run started (deletion log entry #{last.seq}) and has no end in the "
                "log: it is running now, or it crashed",
            )
        )
    for store in surveyed:
        if store.left_behind:
            reasons.append(
                Reason(
                    "amber",
                    f"{store.left_behind} {store.unit} in {store.label} were already expired "
                    "at the last successful run and remain",
                )
            )
    return reasons, code


def run_histories(path: Path) -> tuple[dict[str, RunHistory], str | None]:
    """Last successful run and last run per rule, and why the log could not be read, if so.

    A missing log means no run yet. A broken log is reported; what was read before the break
    is used.
    """
    runs: dict[str, RunHistory] = {}
    try:
        _read_runs(audit.read_entries(path), runs)
    except AuditError as error:
        if not Path(path).exists() and not runs:
            return runs, None
        return runs, str(error)
    return runs, None


def _read_runs(entries: Iterable[audit.Entry], runs: dict[str, RunHistory]) -> None:
    started: dict[str, RunRecord] = {}  # run_id -> its run_started, until its end is read
    rule_of: dict[str, str] = {}
    for entry in entries:
        run_id = entry.fields.get("run_id")
        run_id = run_id if isinstance(run_id, str) else None
        rule = entry.fields.get("rule")
        if entry.type == "run_started" and isinstance(rule, str) and run_id is not None:
            record = RunRecord(
                entry.seq,
                _instant(entry.ts),
                "unfinished",
                run_id,
                cutoff=_optional_instant(entry.fields.get("cutoff")),
            )
            started[run_id], rule_of[run_id] = record, rule
            history = runs.get(rule, RunHistory())
            runs[rule] = RunHistory(history.last_success, record)
            continue
        if entry.type not in audit.RUN_ENDS:
            continue
        if not isinstance(rule, str):
            rule = rule_of.get(run_id or "")
        if rule is None:
            continue
        status = audit.RUN_END_STATUS[entry.type] or str(entry.fields.get("status"))
        begun = started.pop(run_id, None) if run_id else None
        deleted = entry.fields.get("deleted")
        record = RunRecord(
            entry.seq,
            _instant(entry.ts),
            status,
            run_id,
            deleted if isinstance(deleted, int) else None,
            begun.cutoff if begun else None,
        )
        history = runs.get(rule, RunHistory())
        runs[rule] = RunHistory(record if status == "done" else history.last_success, record)


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _optional_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _instant(value)
    except ValueError:
        return None

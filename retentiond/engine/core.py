"""Plan, apply, verify: one run of one rule.

The plan is a value (`RulePlan`): cutoff, a survey of every store and the verdict of the safety
guards. `plan()` only reads. `apply()` is the only path that deletes, and it writes the audit
intent of each batch, durably, before the batch is applied.

With `audit.signing_key` set, the key is read first (a key that cannot be used fails the run
before anything is deleted), the log is rotated if due, and every run's last entry is followed
by a signed checkpoint.

Stages: a `delete` rule has one stage. An `anonymize` rule has one (anonymize what is older than
`keep`) or two (`then_delete_after`: first delete what is older than that, then anonymize the
rest older than `keep`). One run, one `run_started` and one `run_finished` entry; each store
entry and each batch names its stage.

Holds are read from the config before the run and again before every batch: a hold added by a
reload during a run drops the batch planned without it, is recorded in the log, and the store
plans afresh with it. A hold the log shows in force that the config no longer has refuses the
run until the operator ends it (`end_holds`, `force`); one that vanishes during a run keeps
holding to its end. Holds that match no object of any age are named in the plan
(`unmatched`) and in the run's first entry.

Reconciliation (safety rule 8): a run killed between a batch's intent and its result leaves
the log unable to say how much that batch removed. Before its own `run_started`, every run
writes one `run_reconciled` entry per earlier run the log does not account for (a run, or an
erasure, that recorded no end, or one with a batch intent without a result) that no
`run_reconciled` entry names yet; each is reconciled exactly once. Runs never overlap (the
daemon has one worker, and the log's lock keeps out other processes), so a run without an end
at this point was interrupted. The entry:

    run_id                   the interrupted run's id (not this run's)
    reconciled_by            this run's id: its survey counts what the interrupted run left
    reconciled               true
    rule                     the interrupted run's rule (absent when unknown: an erasure, or a
                             run whose start is in a rotated file that was removed)
    erasure, ticket          for an interrupted erasure: true and its ticket
    end                      the interrupted run's last entry (run_failed, ...); "none" when it
                             recorded no end
    batches_done, deleted    what the run's batch results confirm (and `anonymized`)
    open_batches             [{store, batch, planned, stage}]: intents without a result
    unconfirmed_deleted_max  the sum of `planned` of the open delete (and erase) batches: at
                             most this many more objects were deleted, unconfirmed
    unconfirmed_anonymized_max   the same for open anonymize batches (only when there are any)

A batch that was cut off removed between none and all of what it planned (an SQL batch is one
transaction: all or none; a files batch may stop half-way); no store can tell which afterwards,
since the log never names an object. The count that matters is established by the next survey:
the reconciling run's `run_started` counts what is still expired, and its verification that
nothing expired remains.
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from retentiond import __version__
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import HoldConfig, Rule
from retentiond.engine.holds import record_hold_changes, vanished_holds
from retentiond.engine.undated import Undated, undated, undated_failure
from retentiond.errors import AuditError, StoreAbsent, StoreError
from retentiond.evidence.history import History, Interrupted, read_history
from retentiond.evidence.log import CHECKPOINT, AuditWriter, Signer, SigningKeyError
from retentiond.policy.durations import Duration
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope, holds_for, schedule_interval
from retentiond.policy.rules import cutoff as compute_cutoff
from retentiond.stores import (
    AbsentStore,
    Batch,
    BatchFailed,
    BatchResult,
    FailedStore,
    Store,
    Survey,
    build_store,
)

log = structlog.get_logger()

Progress = Callable[[str, int, int], None]  # store label, deleted so far, expected


def utcnow() -> datetime:
    return datetime.now(UTC)


DELETE, ANONYMIZE = "delete", "anonymize"

# How far ahead of now a hold's objects are looked for (a PBX clock that ran ahead)
MATCH_PROBE_AHEAD = timedelta(days=366)


@dataclass(frozen=True)
class StorePlan:
    label: str
    kind: str
    survey: Survey
    batch_size: int  # rows per batch; adaptive stores (batch_time): the first batch's
    absent: str | None = None  # why an optional store is not there
    since: datetime | None = None  # anonymize: the previous complete run's cutoff
    failed: str | None = None  # why the store could not be opened or surveyed in this run
    batch_time: float | None = None  # adaptive batches: the seconds each one aims at
    undated: Undated | None = None  # objects no date can be read from, if any
    undated_failure: str | None = None  # why the store fails for them (beyond the tolerated)

    @property
    def batches(self) -> int | None:
        """How many batches deleting the expired objects takes, at least; None when their size
        adapts to their duration (batch_time)."""
        if self.survey.batches is not None:
            return self.survey.batches
        if self.batch_time is not None:
            return None
        return -(-self.survey.expired // self.batch_size)

    @property
    def fraction(self) -> float:
        return self.survey.expired / self.survey.total if self.survey.total else 0.0


@dataclass(frozen=True)
class RulePlan:
    rule: Rule
    cutoff: datetime
    stores: list[StorePlan]
    refusal: str | None  # why a run would be refused; None when it may proceed
    stage: str = DELETE
    holds: Holds = NO_HOLDS
    forced: tuple[str, ...] = ()  # guards overridden with --force (recorded in the log)
    # holds the log shows in force over this rule that the config no longer has (refused)
    vanished: tuple[str, ...] = ()
    # holds in force over this rule that match no object of any age in its stores
    unmatched: tuple[str, ...] = ()

    @property
    def expired(self) -> int:
        return sum(s.survey.expired for s in self.stores)

    @property
    def held(self) -> int:
        return sum(s.survey.held for s in self.stores)


@dataclass
class StoreOutcome:
    label: str
    unit: str
    deleted: int = 0
    bytes: int | None = None
    batches: int = 0
    remaining: int | None = None  # expired objects left after the run (verification)
    skipped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stage: str = DELETE
    anonymized: int = 0
    held: int = 0
    held_by: dict[str, int] = field(default_factory=dict)
    smallest_group: int | None = None  # anonymize: k of the anonymized records (None: unknown)
    absent: bool = False  # an optional store that is not there
    failed: str | None = None  # why this store failed; the rule's other stores went on
    undated: Undated | None = None  # objects no date can be read from, after the run
    undated_failure: str | None = None  # beyond the tolerated share: the run fails


@dataclass
class RunOutcome:
    rule: str
    run_id: str
    cutoff: datetime | None
    status: str  # done | incomplete | refused | failed | interrupted
    message: str | None = None
    stores: list[StoreOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def deleted(self) -> int:
        return sum(s.deleted for s in self.stores)

    @property
    def anonymized(self) -> int:
        return sum(s.anonymized for s in self.stores)


EXIT_FOR_STATUS = {"done": 0, "incomplete": 1, "failed": 1, "interrupted": 1, "refused": 3}


def exit_code(outcomes: list[RunOutcome]) -> int:
    """0 all done; 1 if any run failed; else 3 if any was refused (DESIGN.md command table)."""
    codes = {EXIT_FOR_STATUS[o.status] for o in outcomes}
    if 1 in codes:
        return 1
    return 3 if 3 in codes else 0


class RunObserver(Protocol):
    """Told when runs start and end: metrics, pings, sd_notify status. Must not raise."""

    def run_started(self, rule: Rule) -> None: ...

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None: ...


def tell(observers: Sequence[RunObserver], event: str, *args: Any) -> None:
    """Call `event` on every observer. Observers are monitoring: their failure never stops
    enforcement."""
    for observer in observers:
        try:
            getattr(observer, event)(*args)
        except Exception as error:  # any observer bug must not stop a run
            log.warning(
                "observer failed", observer=type(observer).__name__, error=type(error).__name__
            )


class Engine:
    """Runs rules of one loaded config. `now` and `stop` are injectable for tests and the daemon."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        now: Callable[[], datetime] = utcnow,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        observers: Sequence[RunObserver] = (),
        holds: Callable[[], Sequence[HoldConfig]] | None = None,
        force: bool = False,
        end_holds: Collection[str] = (),
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.now = now
        self.stop = stop or threading.Event()
        self.progress = progress
        self.observers = list(observers)
        # The daemon passes the holds of its current config, so a reload reaches a running run
        self.hold_source = holds or (lambda: loaded.config.holds)
        self.force = force
        # Vanished holds the operator ends in this run (`run --once --end-hold ID`)
        self.end_holds = frozenset(end_holds)

    def holds(self, rule: Rule) -> Holds:
        """The holds in force for `rule` at this moment."""
        return holds_for(self.hold_source(), rule.name, self.now(), self.config.zone())

    @contextmanager
    def open_stores(self, rule: Rule, *, isolate: bool = False) -> Iterator[list[Store]]:
        """Open every store of a rule; all are closed again when the block ends.

        With `isolate` (a run), a store that cannot be opened is replaced by a FailedStore, so
        the rule's other stores are still enforced; otherwise its StoreError propagates.
        """
        with ExitStack() as stack:
            stores: list[Store] = []
            for store_config in rule.stores:
                store = build_store(store_config, self.config)
                stack.callback(store.close)
                try:
                    store.open()
                except StoreAbsent as absent:
                    if not store_config.optional and not isolate:
                        raise
                    store.close()
                    kind = AbsentStore if store_config.optional else FailedStore
                    store = kind(store.kind, store.label, store.unit, str(absent))
                except StoreError as error:
                    if not isolate:
                        raise
                    store.close()
                    log.error("store failed; the rule's other stores go on", store=store.label)
                    store = FailedStore(store.kind, store.label, store.unit, str(error))
                stores.append(store)
            yield stores

    def plan(self, rule: Rule, stores: list[Store], history: History | None = None) -> RulePlan:
        """The rule's main stage: delete, or anonymize what is older than `keep`. Reads only."""
        return self.plans(rule, stores, history)[-1]

    def plans(
        self,
        rule: Rule,
        stores: list[Store],
        history: History | None = None,
        *,
        isolate: bool = False,
    ) -> list[RulePlan]:
        """Every stage of the rule, in the order they run. Reads only."""
        history = history if history is not None else History()
        holds = self.holds(rule)
        stages: list[RulePlan] = []
        if rule.action == ANONYMIZE and rule.then_delete_after is not None:
            stages.append(
                self._plan(rule, stores, DELETE, rule.then_delete_after, holds, history, isolate)
            )
        stage = ANONYMIZE if rule.action == ANONYMIZE else DELETE
        stages.append(self._plan(rule, stores, stage, rule.keep, holds, history, isolate))
        unmatched = self._unmatched(stages, stores)
        return [
            self._vanished_guard(rule, replace(plan, unmatched=unmatched), history)
            for plan in stages
        ]

    def _unmatched(self, stages: list[RulePlan], stores: list[Store]) -> tuple[str, ...]:
        """The holds that match nothing in these stores: no object of any age, held or not.

        A hold that keeps something expired matches; the others are looked for once more with
        a cutoff far ahead, so young objects count too. A hold by a number no store holds (a
        mistyped number, the wrong rules) protects nothing: plan, status and the report say so.
        """
        plan = stages[-1]
        holding = {
            hold
            for stage in stages
            for store_plan in stage.stores
            for hold, count in store_plan.survey.held_by.items()
            if count
        }
        return tuple(
            sorted(
                scope.hold_id
                for scope in plan.holds.scopes
                if scope.hold_id not in holding and not self._matches(scope, stores, plan)
            )
        )

    def _matches(self, scope: HoldScope, stores: list[Store], plan: RulePlan) -> bool:
        """Whether any store has an object of any age in the hold's scope. A store that failed
        cannot tell: then the hold is not called unmatched (the failure is reported itself)."""
        ahead = self.now() + MATCH_PROBE_AHEAD
        for store, store_plan in zip(stores, plan.stores, strict=True):
            if store_plan.absent is not None:
                continue  # an optional store that is not there holds nothing
            if store_plan.failed is not None:
                return True
            try:
                survey = store.survey(ahead, Holds((scope,)))
            except StoreError:
                log.warning("a store could not be asked what a hold matches", store=store.label)
                return True
            if survey.held_by.get(scope.hold_id, 0):
                return True
        return False

    def vanished(self, rule: Rule, history: History) -> list[str]:
        """Holds in force over `rule` in the log, not in the config, not ended by the operator."""
        found = vanished_holds(
            history.holds, self.hold_source(), self.now(), self.config.zone(), rule.name
        )
        return [hold_id for hold_id in found if hold_id not in self.end_holds]

    def _vanished_guard(self, rule: Rule, plan: RulePlan, history: History) -> RulePlan:
        """Safety rule 10: a hold the log shows in force ends only by an explicit action, never
        because its file was not found (a config copied elsewhere loses its holds folder)."""
        vanished = tuple(self.vanished(rule, history))
        if not vanished:
            return plan
        ids = ", ".join(vanished)
        if self.force:
            forced = f"holds {ids} in force in the audit log were not found in the config; ended"
            return replace(plan, forced=(*plan.forced, forced), vanished=vanished)
        if plan.refusal is not None:
            return replace(plan, vanished=vanished)
        folder = self.loaded.holds_dir
        where = f"holds: and the holds folder {folder}" if folder else "no holds folder beside it"
        refusal = (
            f"holds {ids} are in force in the audit log but not in this config ({where}); "
            "a hold ends only explicitly. If the config lost its holds folder, run "
            "with the config it belongs to or set holds_dir:. If a hold was removed on purpose, "
            "end it with `run --once --end-hold ID` (recorded; --force ends them all), or give "
            "it an until: date"
        )
        return replace(plan, refusal=refusal, vanished=vanished)

    def _plan(
        self,
        rule: Rule,
        stores: list[Store],
        stage: str,
        keep: Duration,
        holds: Holds,
        history: History,
        isolate: bool = False,
    ) -> RulePlan:
        now = self.now()
        rule_cutoff = compute_cutoff(now, keep, self.config.zone())
        since = self._since(rule, holds, history) if stage == ANONYMIZE else None
        safety = self.config.safety
        plans = []
        for i, store in enumerate(stores):
            failed = store.reason if isinstance(store, FailedStore) else None
            try:
                if stage == ANONYMIZE:
                    survey = store.anonymize_survey(rule_cutoff, holds, since)
                else:
                    survey = store.survey(rule_cutoff, holds)
            except StoreError as error:
                if not isolate:
                    raise
                log.error("store survey failed; the rule's other stores go on", store=store.label)
                survey, failed = (
                    Survey(unit=store.unit, total=0, expired=0, oldest=None),
                    str(error),
                )
            absent = store.reason if type(store) is AbsentStore else None
            plans.append(
                StorePlan(
                    store.label,
                    store.kind,
                    survey,
                    _batch_size(rule, i),
                    absent,
                    since,
                    failed,
                    store.batch_time,
                    undated=undated(survey, rule.stores[i], safety, deletes=stage == DELETE),
                    undated_failure=undated_failure(
                        survey, rule.stores[i], safety, deletes=stage == DELETE
                    ),
                )
            )
        refusal = self._guard(now, rule_cutoff, stores, plans)
        forced: list[str] = []
        for check in (self._min_keep(rule, keep, stage), self._jump(rule, stage, plans, history)):
            if check is None or refusal is not None:
                continue
            if self.force:
                forced.append(check)
            else:
                refusal = (
                    check + "; if it is intended, run once with `run --once --force` "
                    "(the override is recorded in the audit log)"
                )
        return RulePlan(rule, rule_cutoff, plans, refusal, stage, holds, tuple(forced))

    def _since(self, rule: Rule, holds: Holds, history: History) -> datetime | None:
        """Where anonymization resumes: the cutoff of the last complete anonymize run, unless a
        hold that kept objects then has ended since (its objects are due now)."""
        last = history.last_run(rule.name, ANONYMIZE)
        if last is None or last.status != "done" or last.cutoff is None:
            return None
        if last.hold_ids - set(holds.ids):
            return None
        return last.cutoff

    def _min_keep(self, rule: Rule, keep: Duration, stage: str) -> str | None:
        if rule.min_keep is None or (stage == DELETE and rule.then_delete_after is not None):
            return None
        if keep.shorter_than(rule.min_keep):
            return (
                f"keep ({keep}) is shorter than the rule's min_keep ({rule.min_keep}); "
                "check it for a typo (3d for 3 months?)"
            )
        return None

    def _jump(self, rule: Rule, stage: str, plans: list[StorePlan], history: History) -> str | None:
        """A store that would remove far more than its previous run did per interval."""
        last = history.last_run(rule.name, stage)
        if last is None:
            return None
        safety = self.config.safety
        interval = schedule_interval(rule.schedule).total_seconds()
        elapsed = max((self.now() - last.ts).total_seconds(), interval)
        for plan in plans:
            before = last.stores.get(plan.label)
            if before is None:
                continue
            previous = _int(before.get("deleted")) + _int(before.get("anonymized"))
            expected = max(previous * elapsed / interval, safety.max_increase_floor)
            if plan.survey.expired > safety.max_increase * expected:
                return (
                    f"{plan.label}: would {stage} {plan.survey.expired} {plan.survey.unit}, more "
                    f"than {safety.max_increase:g} times what its previous run did per interval "
                    f"({previous}; safety.max_increase)"
                )
        return None

    def _guard(
        self, now: datetime, rule_cutoff: datetime, stores: list[Store], plans: list[StorePlan]
    ) -> str | None:
        safety = self.config.safety
        if rule_cutoff > now:
            return "the cutoff is in the future; check the host clock and the rule's keep"
        for store in stores:
            skew = store.clock_skew()
            if skew is not None and abs(skew) > timedelta(seconds=safety.max_clock_skew):
                return (
                    f"{store.label}: the database clock differs from the host clock by "
                    f"{abs(skew).total_seconds():.0f} s (allowed: {safety.max_clock_skew:.0f} s, "
                    "safety.max_clock_skew); fix the clocks (NTP) before deleting by age"
                )
        for plan in plans:
            if plan.fraction > safety.max_delete_fraction:
                return (
                    f"{plan.label}: would delete {plan.survey.expired} of {plan.survey.total} "
                    f"{plan.survey.unit} ({plan.fraction:.0%}), more than "
                    f"safety.max_delete_fraction ({safety.max_delete_fraction:.0%}). If that is "
                    "intended (e.g. the first run on years of data), raise "
                    "safety.max_delete_fraction for this run"
                )
        return None

    def run(self, rule: Rule, audit: AuditWriter) -> RunOutcome:
        """Enforce one rule: plan, guard, apply in audited batches, verify."""
        run_id = uuid.uuid4().hex[:16]
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(rule=rule.name, run_id=run_id)
        try:
            tell(self.observers, "run_started", rule)
            outcome = self._run(rule, audit, run_id)
            outcome.seconds = round(time.monotonic() - started, 3)
            tell(self.observers, "run_finished", rule, outcome)
        finally:
            structlog.contextvars.unbind_contextvars("rule", "run_id")
        return outcome

    def _run(self, rule: Rule, audit: AuditWriter, run_id: str) -> RunOutcome:
        """The run between its audit bookends: signing key and rotation before, checkpoint after."""
        try:
            signer = self._signer()
        except SigningKeyError as error:
            outcome = RunOutcome(rule.name, run_id, None, "failed", str(error))
            log.error("run failed: the signing key cannot be used", reason=str(error))
            # No checkpoint can follow this run's end; `unsigned` tells verify so. The next
            # checkpoint signs it with everything before it.
            self._audit_failure(audit, outcome, unsigned=True)
            return outcome
        try:
            self._before_run(audit, signer)
        except AuditError as error:
            log.error("run stopped: audit log unavailable", reason=str(error))
            return RunOutcome(rule.name, run_id, None, "failed", str(error))
        seq_before = audit.head[0]
        history = read_history(self.config.audit.path)
        try:
            self._reconcile(audit, run_id, history)
        except AuditError as error:
            log.error("run stopped: audit log unavailable", reason=str(error))
            outcome = RunOutcome(rule.name, run_id, None, "failed", str(error))
        else:
            outcome = self._enforce(rule, audit, run_id, history)
        if signer is not None and audit.head[0] > seq_before:
            self._checkpoint(audit, signer, outcome)
        return outcome

    def _signer(self) -> Signer | None:
        """The signing key, read afresh for every run (a replaced key is used at once)."""
        path = self.config.audit.signing_key
        return None if path is None else Signer.from_config(path)

    def _before_run(self, audit: AuditWriter, signer: Signer | None) -> None:
        """Sign what the last run left unsigned (a crash, a key problem), then rotate if due:
        both before the run's first entry, so a run and its checkpoint share one file."""
        last = audit.last_entry
        if signer is not None and last is not None and last.type != CHECKPOINT:
            audit.checkpoint(signer)
        try:
            continued = audit.rotate_if_due()
        except AuditError as error:
            log.warning("audit log not rotated", reason=str(error))
            return
        if continued is not None:
            log.info(
                "audit log rotated",
                previous_file=continued.fields["previous_file"],
                reason=continued.fields["reason"],
            )

    def _checkpoint(self, audit: AuditWriter, signer: Signer, outcome: RunOutcome) -> None:
        try:
            entry = audit.checkpoint(signer)
        except AuditError as error:
            log.error("checkpoint not written", reason=str(error))
            if outcome.status != "failed":
                outcome.status = "failed"
                outcome.message = f"the run's signed checkpoint could not be written: {error}"
            return
        log.debug("checkpoint written", seq=entry.seq, signed_seq=entry.fields["signed_seq"])

    def _reconcile(self, audit: AuditWriter, run_id: str, history: History) -> None:
        """One `run_reconciled` entry for each earlier run the log does not account for."""
        for interrupted in history.interrupted:
            fields = _reconciled_fields(interrupted)
            audit.append(
                "run_reconciled", run_id=interrupted.run_id, reconciled_by=run_id, **fields
            )
            log.warning(
                "an interrupted run was reconciled; this run's survey counts what it left",
                interrupted_run=interrupted.run_id,
                interrupted_rule=interrupted.rule,
                end=fields["end"],
                open_batches=len(interrupted.open_batches),
                unconfirmed_deleted_max=fields["unconfirmed_deleted_max"],
            )

    def _enforce(
        self, rule: Rule, audit: AuditWriter, run_id: str, history: History | None = None
    ) -> RunOutcome:
        outcome = RunOutcome(rule.name, run_id, None, "failed")
        try:
            with self.open_stores(rule, isolate=True) as stores:
                if history is None:
                    history = read_history(self.config.audit.path)
                stages = self.plans(rule, stores, history, isolate=True)
                plan = stages[-1]
                outcome.cutoff = plan.cutoff
                self._record_holds(audit, stages, history)
                refused = next((s for s in stages if s.refusal), None)
                if refused is not None:
                    return self._refuse(refused, stages, audit, outcome)
                self._audit(
                    audit,
                    "run_started",
                    run_id,
                    plan,
                    **_stage_fields(stages),
                    stores=[f for stage in stages for f in _survey_fields(stage)],
                )
                log.info("run started", cutoff=plan.cutoff.isoformat(), expired=plan.expired)
                for stage in stages:
                    first = len(outcome.stores)
                    outcome.status = self._apply(stage, stores, audit, outcome)
                    if outcome.status != "done":
                        break
                    # Verified at once: a later stage may change what the survey sees
                    # (coarsening the time column moves records back by up to a day)
                    outcome.status = self._verify(stage, stores, outcome.stores[first:])
                    if outcome.status != "done":
                        break
                failed = [s for s in outcome.stores if s.failed]
                if failed and outcome.status in ("done", "incomplete"):
                    outcome.status = "failed"
                    outcome.message = "; ".join(f"{s.label} failed: {s.failed}" for s in failed) + (
                        "; the rule's other stores were enforced"
                    )
                self._fail_undated(outcome)
        except StoreError as error:
            outcome.status, outcome.message = "failed", str(error)
            log.error("run failed", reason=str(error))
            self._audit_failure(audit, outcome)
            return outcome
        except AuditError as error:
            # Without a durable log nothing more may be deleted; the batch in flight, if any,
            # was not applied because its intent could not be written.
            outcome.status, outcome.message = "failed", str(error)
            log.error("run stopped: audit log unavailable", reason=str(error))
            return outcome
        if outcome.status != "done":
            outcome.message = outcome.message or _status_message(outcome)
        finished: dict[str, Any] = {"deleted": outcome.deleted}
        if rule.action == ANONYMIZE:
            finished["anonymized"] = outcome.anonymized
            finished["stage"] = ANONYMIZE
        self._audit(
            audit,
            "run_finished",
            run_id,
            None,
            rule=rule.name,
            status=outcome.status,
            **finished,
            stores=[_outcome_fields(s) for s in outcome.stores],
        )
        log.info(
            "run finished",
            status=outcome.status,
            deleted=outcome.deleted,
            anonymized=outcome.anonymized,
        )
        return outcome

    def _record_holds(self, audit: AuditWriter, stages: list[RulePlan], history: History) -> None:
        """Holds added, changed or ended since the log last said, with what they keep here.
        `history` is the run's own reading of the log: no second pass over it."""
        counts: dict[str, dict[str, int]] = {}
        for stage in stages:
            for store in stage.stores:
                for hold, count in store.survey.held_by.items():
                    counts.setdefault(hold, {})[store.label] = count
        ended = {hold_id: "--end-hold" for hold_id in self.end_holds}
        if self.force:
            ended |= {hold_id: "--force" for stage in stages for hold_id in stage.vanished}
        record_hold_changes(
            audit,
            self.hold_source(),
            self.now(),
            self.config.zone(),
            counts,
            history=history,
            end=ended,
        )

    def _refuse(
        self, plan: RulePlan, stages: list[RulePlan], audit: AuditWriter, outcome: RunOutcome
    ) -> RunOutcome:
        outcome.status, outcome.message = "refused", plan.refusal
        self._audit(
            audit,
            "run_refused",
            outcome.run_id,
            plan,
            reason=plan.refusal,
            **({"holds_not_found": list(plan.vanished)} if plan.vanished else {}),
            **_stage_fields(stages),
            stores=[f for stage in stages for f in _survey_fields(stage)],
        )
        log.warning("run refused", reason=plan.refusal)
        return outcome

    def _apply(
        self, plan: RulePlan, stores: list[Store], audit: AuditWriter, outcome: RunOutcome
    ) -> str:
        holds = plan.holds
        failed_before = {s.label: s.failed for s in outcome.stores if s.failed}
        for store, store_plan in zip(stores, plan.stores, strict=True):
            result = StoreOutcome(
                store.label,
                store_plan.survey.unit,
                stage=plan.stage,
                absent=store_plan.absent is not None,
                failed=store_plan.failed or failed_before.get(store.label),
            )
            result.held, result.held_by = store_plan.survey.held, dict(store_plan.survey.held_by)
            outcome.stores.append(result)
            sweeps = plan.stage == DELETE and store.sweeps()
            if result.failed or (store_plan.survey.expired == 0 and not sweeps):
                continue
            try:
                if not self._apply_store(store, plan, store_plan, holds, audit, outcome, result):
                    return "interrupted"
            except StoreError as error:
                # One store's failure (a folder gone, a table locked for good) must not keep
                # the others from being enforced; the run ends failed and names it.
                result.failed = str(error)
                log.error("store failed; the rule's other stores go on", store=store.label)
        return "interrupted" if self.stop.is_set() else "done"

    def _apply_store(
        self,
        store: Store,
        plan: RulePlan,
        store_plan: StorePlan,
        holds: Holds,
        audit: AuditWriter,
        outcome: RunOutcome,
        result: StoreOutcome,
    ) -> bool:
        """The batches of one store; False when a stop was requested."""
        batches = self._batches(store, plan, store_plan, holds)
        while True:
            if self.stop.is_set():
                return False
            batch = next(batches, None)
            if batch is None:
                return True
            fresh = self._fresh_holds(plan.rule, holds)
            if set(fresh.scopes) != set(holds.scopes):
                # A reload changed the holds: this batch was planned without them
                self._holds_changed(audit, plan, store, holds, fresh)
                holds = fresh
                batches = self._batches(store, plan, store_plan, holds)
                continue
            self._apply_batch(store, plan, store_plan, batch, audit, outcome, result)
            if store.pause:
                self.stop.wait(store.pause)

    def _fresh_holds(self, rule: Rule, holds: Holds) -> Holds:
        """The holds in force now; a hold that vanished from the config during the run (a
        reload without its file) keeps holding to the run's end, and the next run refuses."""
        fresh = self.holds(rule)
        configured = {hold.id for hold in self.hold_source()}
        kept = tuple(
            scope
            for scope in holds.scopes
            if scope.hold_id not in configured and scope.hold_id not in self.end_holds
        )
        return Holds(fresh.scopes + kept) if kept else fresh

    def _batches(
        self, store: Store, plan: RulePlan, store_plan: StorePlan, holds: Holds
    ) -> Iterator[Batch]:
        if plan.stage == ANONYMIZE:
            return store.anonymize_batches(plan.cutoff, holds, store_plan.since)
        return store.batches(plan.cutoff, holds)

    def _holds_changed(
        self, audit: AuditWriter, plan: RulePlan, store: Store, old: Holds, new: Holds
    ) -> None:
        log.info(
            "holds changed during the run; planning again with them",
            store=store.label,
            holds_before=len(old.scopes),
            holds_now=len(new.scopes),
        )
        record_hold_changes(audit, self.hold_source(), self.now(), self.config.zone(), None)

    def _apply_batch(
        self,
        store: Store,
        plan: RulePlan,
        store_plan: StorePlan,
        batch: Batch,
        audit: AuditWriter,
        outcome: RunOutcome,
        result: StoreOutcome,
    ) -> None:
        intent: dict[str, Any] = {"store": store.label, "batch": batch.number}
        if plan.stage == ANONYMIZE:
            intent["stage"] = ANONYMIZE
        intent["planned"] = batch.planned
        if batch.span:
            intent["first_day"], intent["last_day"] = batch.span
        self._audit(audit, "batch_intent", outcome.run_id, None, **intent)
        try:
            applied = store.apply(batch, plan.cutoff)
        except BatchFailed as failure:
            # What the failed batch did is known: its result, then the store fails
            self._batch_done(audit, store, plan, batch, failure.result, outcome, result, failure)
            raise
        self._batch_done(audit, store, plan, batch, applied, outcome, result)
        if self.progress:
            self.progress(
                store.label, result.deleted + result.anonymized, store_plan.survey.expired
            )

    def _batch_done(
        self,
        audit: AuditWriter,
        store: Store,
        plan: RulePlan,
        batch: Batch,
        applied: BatchResult,
        outcome: RunOutcome,
        result: StoreOutcome,
        failure: BatchFailed | None = None,
    ) -> None:
        """Count a batch's result and write its `batch_done` entry (`failed`, `code`, `sqlstate`
        when the batch failed: the codes only, never the database's words)."""
        result.batches += 1
        result.deleted += applied.deleted
        result.anonymized += applied.anonymized
        if applied.bytes is not None:
            result.bytes = (result.bytes or 0) + applied.bytes
        _add(result.skipped, applied.skipped)
        _add(result.counts, applied.counts)
        done: dict[str, Any] = {"store": store.label, "batch": batch.number}
        if plan.stage == ANONYMIZE:
            done["stage"] = ANONYMIZE
            done["anonymized"] = applied.anonymized
        done["deleted"] = applied.deleted
        if applied.bytes is not None:
            done["bytes"] = applied.bytes
        if applied.span:
            done["first_day"], done["last_day"] = applied.span
        if applied.skipped:
            done["skipped"] = dict(applied.skipped)
        if applied.counts:
            done["counts"] = dict(applied.counts)
        if failure is not None:
            done["failed"] = True
            done |= failure.error_fields()
        # The next intent or the run's end syncs it: one fsync per batch (AuditLog docstring)
        audit.append_unsynced("batch_done", run_id=outcome.run_id, **done)

    def _verify(self, stage: RulePlan, stores: list[Store], results: list[StoreOutcome]) -> str:
        """Re-survey after a delete stage: nothing expired and unheld may remain. An anonymize
        stage is verified by its counts (every row visited was rewritten or already anonymous)
        and measures k, the smallest group of equal anonymized records. Either way the
        objects no date can be read from are counted (from the survey after a delete stage,
        the plan's before an anonymize stage): `_fail_undated` judges them."""
        clean = True
        holds = self._fresh_holds(stage.rule, stage.holds)
        safety = self.config.safety
        for index, (store, result) in enumerate(zip(stores, results, strict=True)):
            if result.failed:
                continue
            store_config = stage.rule.stores[index]
            if stage.stage == ANONYMIZE:
                result.smallest_group = store.smallest_group(stage.cutoff)
                survey = stage.stores[index].survey
            else:
                survey = store.survey(stage.cutoff, holds)
                result.remaining = survey.expired
                clean = clean and result.remaining == 0
            deletes = stage.stage == DELETE
            result.undated = undated(survey, store_config, safety, deletes=deletes)
            result.undated_failure = undated_failure(survey, store_config, safety, deletes=deletes)
        return "done" if clean else "incomplete"

    def _fail_undated(self, outcome: RunOutcome) -> None:
        """A store with more undated objects than it tolerates fails the run (what could be
        dated was enforced): silent non-deletion must never end `done`."""
        if outcome.status not in ("done", "incomplete", "failed"):
            return  # interrupted: the next run verifies
        failures: dict[str, StoreOutcome] = {}
        for store in outcome.stores:
            if store.undated_failure is not None:
                failures.setdefault(store.label, store)
        if not failures:
            return
        for store in failures.values():
            count = store.undated.count if store.undated else None
            log.error(
                "objects that cannot be dated remain; the run fails",
                store=store.label,
                undated=count,
            )
        messages = [f"{s.label}: {s.undated_failure}" for s in failures.values()]
        if outcome.message:
            messages.insert(0, outcome.message)
        elif outcome.status == "incomplete":
            messages.insert(0, _status_message(outcome))
        outcome.status, outcome.message = "failed", "; ".join(messages)

    def _audit(
        self, audit: AuditWriter, kind: str, run_id: str, plan: RulePlan | None, **fields: Any
    ) -> None:
        if plan is not None:
            fields |= {
                "rule": plan.rule.name,
                "keep": str(plan.rule.keep),
                "cutoff": plan.cutoff,
                "config_sha256": self.loaded.sha256,
                "version": __version__,
                "host": socket.gethostname(),
                "user": _user(),
            }
        audit.append(kind, run_id=run_id, **fields)

    def _audit_failure(self, audit: AuditWriter, outcome: RunOutcome, **extra: Any) -> None:
        try:
            self._audit(
                audit,
                "run_failed",
                outcome.run_id,
                None,
                rule=outcome.rule,
                reason=outcome.message,
                deleted=outcome.deleted,
                stores=[_outcome_fields(s) for s in outcome.stores],
                **extra,
            )
        except AuditError as error:
            log.error("audit log unavailable", reason=str(error))


def _batch_size(rule: Rule, index: int) -> int:
    return rule.stores[index].batch_size


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _survey_fields(plan: RulePlan) -> list[dict[str, Any]]:
    fields = []
    for s in plan.stores:
        store: dict[str, Any] = {
            "store": s.label,
            "kind": s.kind,
            "unit": s.survey.unit,
            "total": s.survey.total,
            "expired": s.survey.expired,
        }
        if plan.stage == ANONYMIZE:
            store["stage"] = ANONYMIZE
        if s.survey.held:
            store["held"] = s.survey.held
            store["held_by"] = dict(s.survey.held_by)
        if s.survey.skipped:
            # What the survey could not date or read (counts by reason): kept, and on record
            # from the run's first entry, not only from the batches that met them.
            store["skipped"] = dict(s.survey.skipped)
        if s.absent:
            store["absent"] = True
        if s.failed:
            store["failed"] = s.failed
        fields.append(store)
    return fields


def _stage_fields(stages: list[RulePlan]) -> dict[str, Any]:
    """What a run's first entry says beyond the main stage's cutoff: the delete stage of a
    two-stage rule, and guards overridden with --force."""
    fields: dict[str, Any] = {}
    if stages[-1].stage == ANONYMIZE:
        fields["action"] = ANONYMIZE
    if len(stages) > 1:
        fields["delete_cutoff"] = stages[0].cutoff
        fields["then_delete_after"] = str(stages[0].rule.then_delete_after)
    forced = list(dict.fromkeys(reason for stage in stages for reason in stage.forced))
    if forced:
        fields["forced"] = forced
    if stages[-1].unmatched:  # ids only: what a hold names never enters the log
        fields["holds_matching_nothing"] = list(stages[-1].unmatched)
    return fields


def _outcome_fields(store: StoreOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {"store": store.label}
    if store.stage == ANONYMIZE:
        fields["stage"] = ANONYMIZE
        fields["anonymized"] = store.anonymized
        if not store.absent:
            fields["smallest_group"] = store.smallest_group
    if store.absent:
        fields["absent"] = True
    fields |= {"deleted": store.deleted, "batches": store.batches, "remaining": store.remaining}
    if store.held:
        fields["held"] = store.held
        fields["held_by"] = store.held_by
    if store.failed:
        fields["failed"] = store.failed
    if store.undated is not None:
        # Counts and the tolerated share only; `undated_failed` says the run failed for them
        fields["undated"] = store.undated.count
        fields["undated_tolerated"] = store.undated.tolerated
        if store.undated_failure is not None:
            fields["undated_failed"] = True
    if store.bytes is not None:
        fields["bytes"] = store.bytes
    if store.skipped:
        fields["skipped"] = store.skipped
    if store.counts:
        fields["counts"] = store.counts
    return fields


def _reconciled_fields(run: Interrupted) -> dict[str, Any]:
    """The `run_reconciled` entry's fields beside the run ids (see the module docstring)."""
    fields: dict[str, Any] = {"reconciled": True}
    if run.rule is not None:
        fields["rule"] = run.rule
    if run.erasure:
        fields["erasure"], fields["ticket"] = True, run.ticket
    fields["end"] = run.end or "none"
    fields["batches_done"], fields["deleted"] = run.batches_done, run.deleted
    if run.anonymized:
        fields["anonymized"] = run.anonymized
    batches = list(run.open_batches.values())
    fields["open_batches"] = [
        {"store": b.store, "batch": b.batch, "planned": b.planned, "stage": b.stage}
        for b in batches
    ]
    fields["unconfirmed_deleted_max"] = sum(b.planned for b in batches if b.stage != ANONYMIZE)
    anonymized = [b.planned for b in batches if b.stage == ANONYMIZE]
    if anonymized:
        fields["unconfirmed_anonymized_max"] = sum(anonymized)
    return fields


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _add(totals: dict[str, int], more: Mapping[str, int]) -> None:
    for key, count in more.items():
        totals[key] = totals.get(key, 0) + count


def _status_message(outcome: RunOutcome) -> str:
    if outcome.status == "interrupted":
        return "stopped on request after the current batch; the next run continues"
    left = sum(s.remaining or 0 for s in outcome.stores)
    return f"{left} expired objects remain after the run; see the daemon log and run again"

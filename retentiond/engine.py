"""Plan, apply, verify: one run of one rule.

The plan is a value (`RulePlan`): cutoff, a survey of every store and the verdict of the safety
guards. `plan()` only reads. `apply()` is the only path that deletes, and it writes the audit
intent of each batch, durably, before the batch is applied.

With `audit.signing_key` set, the key is read first (a key that cannot be used fails the run
before anything is deleted), the log is rotated if due, and every run's last entry is followed
by a signed checkpoint.
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from retentiond import __version__
from retentiond.audit import CHECKPOINT, AuditLog, Signer, SigningKeyError
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Rule
from retentiond.errors import AuditError, StoreAbsent, StoreError
from retentiond.rules import cutoff as compute_cutoff
from retentiond.stores import AbsentStore, Store, Survey, build_store

log = structlog.get_logger()

Progress = Callable[[str, int, int], None]  # store label, deleted so far, expected


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StorePlan:
    label: str
    kind: str
    survey: Survey
    batch_size: int
    absent: str | None = None  # why an optional store is not there

    @property
    def batches(self) -> int:
        """How many batches deleting the expired objects takes, at least."""
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

    @property
    def expired(self) -> int:
        return sum(s.survey.expired for s in self.stores)


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
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.now = now
        self.stop = stop or threading.Event()
        self.progress = progress
        self.observers = list(observers)

    @contextmanager
    def open_stores(self, rule: Rule) -> Iterator[list[Store]]:
        """Open every store of a rule; all are closed again when the block ends."""
        with ExitStack() as stack:
            stores: list[Store] = []
            for store_config in rule.stores:
                store = build_store(store_config, self.config)
                stack.callback(store.close)
                try:
                    store.open()
                except StoreAbsent as absent:
                    if not store_config.optional:
                        raise
                    store.close()
                    store = AbsentStore(store.kind, store.label, store.unit, str(absent))
                stores.append(store)
            yield stores

    def plan(self, rule: Rule, stores: list[Store]) -> RulePlan:
        """Cutoff, survey of every store, safety guards. Reads only."""
        now = self.now()
        rule_cutoff = compute_cutoff(now, rule.keep, self.config.zone())
        plans = [
            StorePlan(
                store.label,
                store.kind,
                store.survey(rule_cutoff),
                _batch_size(rule, i),
                store.reason if isinstance(store, AbsentStore) else None,
            )
            for i, store in enumerate(stores)
        ]
        refusal = self._guard(now, rule_cutoff, stores, plans)
        return RulePlan(rule, rule_cutoff, plans, refusal)

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

    def run(self, rule: Rule, audit: AuditLog) -> RunOutcome:
        """Enforce one rule: plan, guard, apply in audited batches, verify."""
        run_id = uuid.uuid4().hex[:16]
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(rule=rule.name, run_id=run_id)
        try:
            self._tell("run_started", rule)
            outcome = self._run(rule, audit, run_id)
            outcome.seconds = round(time.monotonic() - started, 3)
            self._tell("run_finished", rule, outcome)
        finally:
            structlog.contextvars.unbind_contextvars("rule", "run_id")
        return outcome

    def _tell(self, event: str, *args: Any) -> None:
        """Observers are monitoring: their failure never stops enforcement."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception as error:  # any observer bug must not stop a run
                log.warning(
                    "observer failed", observer=type(observer).__name__, error=type(error).__name__
                )

    def _run(self, rule: Rule, audit: AuditLog, run_id: str) -> RunOutcome:
        """The run between its audit bookends: signing key and rotation before, checkpoint after."""
        try:
            signer = self._signer()
        except SigningKeyError as error:
            outcome = RunOutcome(rule.name, run_id, None, "failed", str(error))
            log.error("run failed: the signing key cannot be used", reason=str(error))
            self._audit_failure(audit, outcome)
            return outcome
        try:
            self._before_run(audit, signer)
        except AuditError as error:
            log.error("run stopped: audit log unavailable", reason=str(error))
            return RunOutcome(rule.name, run_id, None, "failed", str(error))
        seq_before = audit.head[0]
        outcome = self._enforce(rule, audit, run_id)
        if signer is not None and audit.head[0] > seq_before:
            self._checkpoint(audit, signer, outcome)
        return outcome

    def _signer(self) -> Signer | None:
        """The signing key, read afresh for every run (a replaced key is used at once)."""
        path = self.config.audit.signing_key
        return None if path is None else Signer.from_config(path)

    def _before_run(self, audit: AuditLog, signer: Signer | None) -> None:
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

    def _checkpoint(self, audit: AuditLog, signer: Signer, outcome: RunOutcome) -> None:
        try:
            entry = audit.checkpoint(signer)
        except AuditError as error:
            log.error("checkpoint not written", reason=str(error))
            if outcome.status != "failed":
                outcome.status = "failed"
                outcome.message = f"the run's signed checkpoint could not be written: {error}"
            return
        log.debug("checkpoint written", seq=entry.seq, signed_seq=entry.fields["signed_seq"])

    def _enforce(self, rule: Rule, audit: AuditLog, run_id: str) -> RunOutcome:
        outcome = RunOutcome(rule.name, run_id, None, "failed")
        try:
            with self.open_stores(rule) as stores:
                plan = self.plan(rule, stores)
                outcome.cutoff = plan.cutoff
                if plan.refusal:
                    return self._refuse(plan, audit, outcome)
                self._audit(audit, "run_started", run_id, plan, stores=_survey_fields(plan))
                log.info("run started", cutoff=plan.cutoff.isoformat(), expired=plan.expired)
                outcome.status = self._apply(plan, stores, audit, outcome)
                if outcome.status == "done":
                    outcome.status = self._verify(plan, stores, outcome)
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
        self._audit(
            audit,
            "run_finished",
            run_id,
            None,
            rule=rule.name,
            status=outcome.status,
            deleted=outcome.deleted,
            stores=[_outcome_fields(s) for s in outcome.stores],
        )
        log.info("run finished", status=outcome.status, deleted=outcome.deleted)
        return outcome

    def _refuse(self, plan: RulePlan, audit: AuditLog, outcome: RunOutcome) -> RunOutcome:
        outcome.status, outcome.message = "refused", plan.refusal
        self._audit(
            audit,
            "run_refused",
            outcome.run_id,
            plan,
            reason=plan.refusal,
            stores=_survey_fields(plan),
        )
        log.warning("run refused", reason=plan.refusal)
        return outcome

    def _apply(
        self, plan: RulePlan, stores: list[Store], audit: AuditLog, outcome: RunOutcome
    ) -> str:
        for store, store_plan in zip(stores, plan.stores, strict=True):
            result = StoreOutcome(store.label, store_plan.survey.unit)
            outcome.stores.append(result)
            if store_plan.survey.expired == 0:
                continue
            for batch in store.batches(plan.cutoff):
                if self.stop.is_set():
                    return "interrupted"
                intent: dict[str, Any] = {"store": store.label, "batch": batch.number}
                intent["planned"] = batch.planned
                if batch.span:
                    intent["first_day"], intent["last_day"] = batch.span
                self._audit(audit, "batch_intent", outcome.run_id, None, **intent)
                applied = store.apply(batch, plan.cutoff)
                result.batches += 1
                result.deleted += applied.deleted
                if applied.bytes is not None:
                    result.bytes = (result.bytes or 0) + applied.bytes
                _add(result.skipped, applied.skipped)
                _add(result.counts, applied.counts)
                done: dict[str, Any] = {"store": store.label, "batch": batch.number}
                done["deleted"] = applied.deleted
                if applied.bytes is not None:
                    done["bytes"] = applied.bytes
                if applied.span:
                    done["first_day"], done["last_day"] = applied.span
                if applied.skipped:
                    done["skipped"] = dict(applied.skipped)
                if applied.counts:
                    done["counts"] = dict(applied.counts)
                self._audit(audit, "batch_done", outcome.run_id, None, **done)
                if self.progress:
                    self.progress(store.label, result.deleted, store_plan.survey.expired)
                if store.pause:
                    self.stop.wait(store.pause)
        return "interrupted" if self.stop.is_set() else "done"

    def _verify(self, plan: RulePlan, stores: list[Store], outcome: RunOutcome) -> str:
        """Re-survey: nothing expired may remain. Objects skipped for a reason are reported."""
        clean = True
        for store, result in zip(stores, outcome.stores, strict=True):
            result.remaining = store.survey(plan.cutoff).expired
            clean = clean and result.remaining == 0
        return "done" if clean else "incomplete"

    def _audit(
        self, audit: AuditLog, kind: str, run_id: str, plan: RulePlan | None, **fields: Any
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

    def _audit_failure(self, audit: AuditLog, outcome: RunOutcome) -> None:
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
    return [
        {
            "store": s.label,
            "kind": s.kind,
            "unit": s.survey.unit,
            "total": s.survey.total,
            "expired": s.survey.expired,
        }
        | ({"absent": True} if s.absent else {})
        for s in plan.stores
    ]


def _outcome_fields(store: StoreOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "store": store.label,
        "deleted": store.deleted,
        "batches": store.batches,
        "remaining": store.remaining,
    }
    if store.bytes is not None:
        fields["bytes"] = store.bytes
    if store.skipped:
        fields["skipped"] = store.skipped
    if store.counts:
        fields["counts"] = store.counts
    return fields


def _add(totals: dict[str, int], more: Mapping[str, int]) -> None:
    for key, count in more.items():
        totals[key] = totals.get(key, 0) + count


def _status_message(outcome: RunOutcome) -> str:
    if outcome.status == "interrupted":
        return "stopped on request after the current batch; the next run continues"
    left = sum(s.remaining or 0 for s in outcome.stores)
    return f"{left} expired objects remain after the run; see the daemon log and run again"

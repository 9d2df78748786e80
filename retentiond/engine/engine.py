"""The engine: plan, apply, verify; one run of one rule, between its audit bookends.

The plan is a value (`RulePlan`): cutoff, a survey of every store and the verdict of the safety
guards. `plan()` only reads. Applying (`apply.apply_stage`) is the only path that deletes, and it
writes the audit intent of each batch, durably, before the batch is applied.

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

Module by module: `plan` (the plan values), `planning` (surveys and stages), `guards` (the
safety guards), `apply` (the batches and their audit intents and results), `verify`,
`reconcile` (runs the log does not account for, reconciled before a run's first entry),
`entries` (what the run's log entries say), `outcome` (what a run did), `observers`.
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from retentiond import __version__
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import HoldConfig, Rule
from retentiond.engine.apply import Progress, apply_stage
from retentiond.engine.entries import outcome_fields, stage_fields, survey_fields
from retentiond.engine.holds import record_hold_changes, vanished_holds
from retentiond.engine.observers import RunObserver, tell
from retentiond.engine.outcome import RunOutcome, status_message
from retentiond.engine.plan import ANONYMIZE, DELETE, RulePlan
from retentiond.engine.planning import plan_stage, unmatched_holds
from retentiond.engine.reconcile import reconcile
from retentiond.engine.verify import fail_undated, verify_stage
from retentiond.errors import AuditError, StoreAbsent, StoreError
from retentiond.evidence.history import History, read_history
from retentiond.evidence.log import CHECKPOINT, AuditWriter, Signer, SigningKeyError
from retentiond.evidence.log.opening import log_path
from retentiond.policy.durations import Duration
from retentiond.policy.rules import Holds, holds_for
from retentiond.stores import AbsentStore, FailedStore, Store, build_store

log = structlog.get_logger()


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        unmatched = unmatched_holds(stages, stores, self.now)
        return [
            self._vanished_guard(rule, replace(plan, unmatched=unmatched), history)
            for plan in stages
        ]

    def _plan(
        self,
        rule: Rule,
        stores: list[Store],
        stage: str,
        keep: Duration,
        holds: Holds,
        history: History,
        isolate: bool,
    ) -> RulePlan:
        """One stage, planned with this engine's config, clock and `force`."""
        config, clock, force = self.config, self.now, self.force
        return plan_stage(config, clock, force, rule, stores, stage, keep, holds, history, isolate)

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
        history = read_history(log_path(self.config))
        try:
            reconcile(audit, run_id, history)
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

    def _enforce(
        self, rule: Rule, audit: AuditWriter, run_id: str, history: History | None = None
    ) -> RunOutcome:
        outcome = RunOutcome(rule.name, run_id, None, "failed")
        try:
            with self.open_stores(rule, isolate=True) as stores:
                if history is None:
                    history = read_history(log_path(self.config))
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
                    **stage_fields(stages),
                    stores=[f for stage in stages for f in survey_fields(stage)],
                )
                log.info("run started", cutoff=plan.cutoff.isoformat(), expired=plan.expired)
                for stage in stages:
                    first = len(outcome.stores)
                    outcome.status = apply_stage(self, stage, stores, audit, outcome)
                    if outcome.status != "done":
                        break
                    # Verified at once: a later stage may change what the survey sees
                    # (coarsening the time column moves records back by up to a day)
                    holds = self.fresh_holds(stage.rule, stage.holds)
                    results = outcome.stores[first:]
                    outcome.status = verify_stage(stage, stores, results, holds, self.config.safety)
                    if outcome.status != "done":
                        break
                failed = [s for s in outcome.stores if s.failed]
                if failed and outcome.status in ("done", "incomplete"):
                    outcome.status = "failed"
                    outcome.message = "; ".join(f"{s.label} failed: {s.failed}" for s in failed) + (
                        "; the rule's other stores were enforced"
                    )
                fail_undated(outcome)
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
            outcome.message = outcome.message or status_message(outcome)
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
            stores=[outcome_fields(s) for s in outcome.stores],
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
            **stage_fields(stages),
            stores=[f for stage in stages for f in survey_fields(stage)],
        )
        log.warning("run refused", reason=plan.refusal)
        return outcome

    def fresh_holds(self, rule: Rule, holds: Holds) -> Holds:
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

    def holds_changed(
        self, audit: AuditWriter, plan: RulePlan, store: Store, old: Holds, new: Holds
    ) -> None:
        """A reload changed the holds during the run: say so, and record the change in the log."""
        log.info(
            "holds changed during the run; planning again with them",
            store=store.label,
            holds_before=len(old.scopes),
            holds_now=len(new.scopes),
        )
        record_hold_changes(audit, self.hold_source(), self.now(), self.config.zone(), None)

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
                stores=[outcome_fields(s) for s in outcome.stores],
                **extra,
            )
        except AuditError as error:
            log.error("audit log unavailable", reason=str(error))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

"""The replay of the deletion logs: every entry, in the order it was written, into figures per
system, rule, store and week of the report's period.

A run is followed from `run_started` through its batches to its end (`run_finished`,
`run_refused` or `run_failed`); holds, erasures (Art. 17) and subject searches (Art. 15) have
entries of their own. Runs that started in the period and never recorded an end are counted by
`finish`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retentiond.config.model import Config
from retentiond.evidence import log as audit
from retentiond.evidence.report.entries import (
    as_int,
    as_text,
    entry_time,
    held_by,
    held_total,
    is_int,
    remaining_total,
    subject_stores,
    undated_failures,
)
from retentiond.evidence.report.values import (
    ConfigReload,
    HoldEvent,
    Incident,
    Period,
    SubjectSearch,
    SubjectStore,
)
from retentiond.evidence.report.wording import ENGLISH, ended_reason, whole
from retentiond.evidence.report.wording import label as label_of
from retentiond.i18n import N_, Words
from retentiond.stores.kinds import KINDS

UNKNOWN_RULE = "(unknown rule)"  # an identifier: the JSON and the CSV carry it as a rule name


NO_REASON = N_("no reason recorded")


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


class Replay:
    """Accumulates the figures while the logs are read, one entry at a time; `tables` and
    `verdicts` turn them into the report's rows."""

    def __init__(
        self, config: Config, period: Period, generated: datetime, said: Words = ENGLISH
    ) -> None:
        self.config = config
        self.words = said  # the language of every text the figures carry
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
            at = entry_time(entry)
            self.log_start.setdefault(system, at)
            handler = handlers.get(entry.type)
            if handler is not None:
                handler(system, entry, at)

    def _run(self, system: str, entry: audit.Entry) -> _Run:
        run_id = as_text(entry.fields.get("run_id"))
        run = self.runs.get((system, run_id))
        if run is None:
            run = self.runs[(system, run_id)] = _Run(
                system, as_text(entry.fields.get("rule")) or UNKNOWN_RULE
            )
        return run

    def _seen_config(self, system: str, entry: audit.Entry, at: datetime) -> None:
        sha = as_text(entry.fields.get("config_sha256"))
        if not sha or not self.period.contains(at):
            return
        seen = self.hashes.setdefault((system, sha), [at, at, 0])
        seen[0], seen[1], seen[2] = min(seen[0], at), max(seen[1], at), seen[2] + 1

    def _started(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._run(system, entry)
        run.started = at
        for store in entry.fields.get("stores") or []:
            if isinstance(store, dict):
                run.units[as_text(store.get("store"))] = as_text(store.get("unit")) or "objects"
                if store.get("kind") in KINDS:
                    self.kinds.add(str(store["kind"]))
        keep = as_text(entry.fields.get("keep"))
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
        text = self.words.gettext("safety guard overridden with --force: {reasons}")
        self.incidents.append(Incident(at, system, rule, "forced", text.format(reasons=reasons)))

    def _count_held(self, system: str, stores: Any, at: datetime) -> None:
        """The latest count of what each hold keeps per store, from a run's store fields. A hold
        in force counted in a store before and absent now keeps nothing there any more; an
        ended hold keeps its last count (what became due when it was released)."""
        if at >= self.period.end:
            return
        ended = self.ended_holds.setdefault(system, set())
        for label, by_hold in held_by(stores).items():
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
        run.intents.add((as_text(entry.fields.get("store")), as_int(entry.fields.get("batch"))))

    def _batch_done(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if self._erasure_batch(system, entry, at, done=True):
            return
        run = self._run(system, entry)
        fields = entry.fields
        store = as_text(fields.get("store"))
        run.done.add((store, as_int(fields.get("batch"))))
        if not self.period.contains(at):
            return
        unit = run.units.get(store, "objects")
        deleted = as_int(fields.get("deleted"))
        anonymized = as_int(fields.get("anonymized"))
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
            figures["skipped"][reason] = figures["skipped"].get(reason, 0) + as_int(count)

    def _end(self, system: str, entry: audit.Entry, at: datetime, status: str) -> _Run:
        run = self._run(system, entry)
        run.ended, run.status = at, status
        key = (system, run.rule)
        if status == "done" and at < self.period.end:
            self.successes[key].append(at)
        stores = entry.fields.get("stores")
        if self.period.contains(at):
            self.status[(system, run.rule, status)] += 1
            remaining = remaining_total(stores)
            held = held_total(stores)
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
                self.absent_seen.add(as_text(store.get("store")))
            if "smallest_group" not in store:
                continue  # an optional store that is not there holds nothing to group
            group = store.get("smallest_group")
            key = (system, rule, as_text(store.get("store")))
            if key not in self.groups or self.groups[key][0] <= at:
                self.groups[key] = (at, group if is_int(group) else None)

    def _finished(self, system: str, entry: audit.Entry, at: datetime) -> None:
        status = as_text(entry.fields.get("status")) or "unknown"
        run = self._end(system, entry, at, status)
        if status == "done" or not self.period.contains(at):
            return
        _ = self.words.gettext
        if status == "interrupted":
            reason = _("stopped on request after the current batch; the next run continues")
        elif status == "incomplete":
            left = remaining_total(entry.fields.get("stores"))
            if left is None:
                reason = _("some expired objects remained after the run")
            else:
                reason = _("{count} expired objects remained after the run").format(
                    count=whole(self.words, left)
                )
        else:
            stores = [s for s in entry.fields.get("stores") or [] if isinstance(s, dict)]
            failed = [
                f"{as_text(store.get('store'))}: {as_text(store.get('failed'))}"
                for store in stores
                if store.get("failed")
            ]
            undated = undated_failures(stores, self.words)
            enforced = _("store failed, the rule's other stores were enforced: {failures}")
            reasons = [enforced.format(failures="; ".join(failed))] if failed else []
            reasons += undated
            reason = "; ".join(reasons) or _("run ended with status {status}").format(
                status=label_of(self.words, status)
            )
        self.incidents.append(Incident(at, system, run.rule, status, reason))

    def _refused(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._end(system, entry, at, "refused")
        if self.period.contains(at):
            reason = as_text(entry.fields.get("reason")) or self.words.gettext(NO_REASON)
            self.incidents.append(Incident(at, system, run.rule, "refused", reason))
        self._seen_config(system, entry, at)
        self._forced(system, run.rule, entry, at)
        self._unmatched(system, run.rule, entry)

    # --- holds, erasures, searches ---

    def _hold(self, system: str, entry: audit.Entry, at: datetime) -> None:
        fields = entry.fields
        hold = as_text(fields.get("hold"))
        covers = {
            str(store): as_int(count)
            for store, count in (fields.get("covers") or {}).items()
            if is_int(count)
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
        _ = self.words.gettext
        if entry.type == "hold_ended":
            why = ended_reason(self.words, as_text(fields.get("ended"))) or _(NO_REASON)
            detail = _("ended: {reason}").format(reason=why)
        elif entry.type == "hold_changed":
            detail = _("changed: {fields}").format(fields=", ".join(changed) or _("not recorded"))
        else:
            detail = label_of(self.words, "added")
        rules_field = fields.get("rules")

        def optional(key: str) -> str | None:
            return as_text(fields.get(key)) or None

        def number(key: str) -> int | None:
            value = fields.get(key)
            return value if is_int(value) else None

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
            (system, as_text(fields.get("run_id"))), _Erasure(as_text(fields.get("ticket")))
        )
        erasure.started = at
        erasure.stores = subject_stores(fields.get("stores"))
        self._seen_config(system, entry, at)

    def _erasure_finished(self, system: str, entry: audit.Entry, at: datetime) -> None:
        fields = entry.fields
        erasure = self.erasures.setdefault(
            (system, as_text(fields.get("run_id"))), _Erasure(as_text(fields.get("ticket")))
        )
        erasure.ticket = erasure.ticket or as_text(fields.get("ticket"))
        erasure.finished = at
        erasure.status = as_text(fields.get("status")) or "unknown"
        erasure.reason = as_text(fields.get("reason")) or None
        erasure.final_deleted = as_int(fields.get("deleted"))
        erasure.final_held = as_int(fields.get("held"))
        erasure.outcome = as_text(fields.get("outcome")) or None
        stores = subject_stores(fields.get("stores"))
        if stores:
            erasure.stores = stores

    def _erasure_batch(self, system: str, entry: audit.Entry, at: datetime, *, done: bool) -> bool:
        """Batches of an Art. 17 erasure: counted with their erasure, not as regular deletion."""
        fields = entry.fields
        key = (system, as_text(fields.get("run_id")))
        if fields.get("stage") != "erase" and key not in self.erasures:
            return False
        erasure = self.erasures.setdefault(key, _Erasure(""))
        batch = (as_text(fields.get("store")), as_int(fields.get("batch")))
        if done:
            erasure.done.add(batch)
            erasure.batch_deleted += as_int(fields.get("deleted"))
        else:
            erasure.intents.add(batch)
        return True

    def _subject_search(self, system: str, entry: audit.Entry, at: datetime) -> None:
        if not self.period.contains(at):
            return
        stores = subject_stores(entry.fields.get("stores"))
        self.searches.append(
            SubjectSearch(
                at,
                system,
                as_text(entry.fields.get("ticket")),
                sum(s.found for s in stores),
                sum(s.held for s in stores),
                stores,
                as_text(entry.fields.get("outcome")) or None,
            )
        )

    def _failed(self, system: str, entry: audit.Entry, at: datetime) -> None:
        run = self._end(system, entry, at, "failed")
        if self.period.contains(at):
            reason = as_text(entry.fields.get("reason")) or self.words.gettext(NO_REASON)
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
                as_text(fields.get("old_config_sha256")),
                as_text(fields.get("new_config_sha256")),
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
                    self.words.gettext(
                        "{missing} batch intent(s) without a result: the process ended during "
                        "a batch; the next run's survey counts what is left"
                    ).format(missing=whole(self.words, missing)),
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
                    self.words.gettext(
                        "the run started but recorded no end (crash, power loss, or still "
                        "running when the log was copied); the next run completes the work"
                    ),
                )
            )


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

"""The service behind `retentiond run`: scheduler, catch-up, reload, stop, sd_notify, watchdog.

Threads, and what each may do:
- main: starts everything, then only reacts: signals (through a wakeup pipe), config file
  changes (debounced), WATCHDOG=1 pings. Every reload happens here.
- APScheduler's scheduler thread: decides when a rule is due and hands it to the worker.
- one worker (ThreadPoolExecutor(1)): runs rules one after another, so two runs never overlap
  and the PBX database never sees two retentiond runs at once.
- watchdog's inotify thread on the config file's folder: only wakes the main thread.

Each run, and the start-up check of the stores, happens in a run process of its own
(`retentiond.service.runner`): the worker starts it and answers it until it ends. So the
daemon never imports a store, SQLAlchemy, a database driver or the signing key's cryptography,
and stays small between runs. A run process that crashes or is killed fails that run only.

The daemon holds the audit log (and its lock) from start to exit, so a `run --once` meanwhile is
refused instead of interleaving with it; run processes write through it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from retentiond.config.loader import LoadedConfig, load_config
from retentiond.config.model import Config, HoldConfig, Rule
from retentiond.engine.engine import utcnow
from retentiond.engine.holds import record_hold_changes
from retentiond.engine.observers import RunObserver, tell
from retentiond.engine.outcome import RunOutcome
from retentiond.errors import AuditError, ConfigError, ConfigProblem, RetentiondError, StoreError
from retentiond.evidence.log import (
    RUN_END_STATUS,
    RUN_ENDS,
    AuditLog,
    Entry,
    SerialAuditLog,
    log_path,
    open_serial_log,
    read_entries,
)
from retentiond.policy.schedule import Schedule, WallClockTrigger
from retentiond.service.runner import RunProcess, exit_status, outcome_from_fields
from retentiond.service.sdnotify import notify, reloading, watchdog_interval

if TYPE_CHECKING:
    from retentiond.service.reports import ReportDuty

log = structlog.get_logger()

DEBOUNCE = 0.5  # seconds of quiet after the last change of the config file before reloading
IDLE_WAKE = 60.0  # seconds the main loop sleeps at most without a watchdog to ping


@dataclass
class RuleState:
    """What the daemon knows about a rule's runs, from the audit log and since start."""

    last_success: datetime | None = None  # end of the last run with status done
    last_status: str | None = None
    last_deleted: int | None = None


class Daemon:
    """`serve()` runs until SIGTERM or SIGINT and returns the exit code."""

    def __init__(self, loaded: LoadedConfig, *, observers: Sequence[RunObserver] = ()) -> None:
        self.loaded = loaded
        self.path = loaded.path.absolute()
        self.observers = list(observers)
        self.stop = threading.Event()
        self.states: dict[str, RuleState] = {}
        self._lock = threading.Lock()  # states, _running, _progress_at, _queued, _changed_at
        self._running: str | None = None
        self._progress_at = time.monotonic()
        self._queued: set[str] = set()
        self._changed_at: float | None = None
        self._config_note: str | None = None
        self._stuck_reported = False
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._audit: SerialAuditLog | None = None
        self._child: RunProcess | None = None  # the run process of the run in progress
        self._triggers: dict[str, WallClockTrigger] = {}
        self.reports: ReportDuty | None = None  # the DPO report after each period (`reports:`)
        self.scheduler = BackgroundScheduler(
            # One worker: runs never overlap, whatever their schedules. Reports have their own,
            # so a slow mail server never holds up a run.
            executors={"default": ThreadPoolExecutor(1), "reports": ThreadPoolExecutor(1)},
            # misfire_grace_time None: a run that is late (worker busy, host asleep) still runs.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=loaded.config.zone(),
        )

    # --- life cycle ----------------------------------------------------------------------------

    def serve(self) -> int:
        _forward_library_logs()
        audit_log = open_serial_log(self.loaded.config, on_failure=self._wake)
        with self._signals(), audit_log as audit:
            self._audit = audit
            config = self.loaded.config
            _require_a_schedule(self.loaded)
            self._check_at_start(audit)
            self._read_history(config)
            self.scheduler.start(paused=True)
            watcher = self._watch_config()
            try:
                self._schedule(config)
                self._queue_overdue(config)
                self._schedule_reports(self.loaded)
                notify("READY=1", self._status())
                self._log_started(config)
                self.scheduler.resume()
                return self._loop()
            finally:
                notify("STOPPING=1")
                self.stop.set()
                if self.reports is not None:
                    self.reports.stop()
                self._stop_child()
                if watcher is not None:
                    watcher.stop()
                self._wait_for_worker()
                if watcher is not None:
                    watcher.join(timeout=5)
                log.info("daemon stopped")

    def _loop(self) -> int:
        ping = watchdog_interval()
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if ping is not None and now >= next_ping:
                if self._healthy(ping):
                    notify("WATCHDOG=1")
                next_ping = now + ping
            if not self._scheduler_alive():
                log.critical("the scheduler thread died; exiting so systemd restarts retentiond")
                return 1
            if self._audit is not None and self._audit.failure is not None:
                log.critical(
                    "the audit log cannot be written, so nothing may be deleted; exiting so "
                    "systemd restarts retentiond, which reopens it",
                    reason=self._audit.failure,
                )
                return 1
            timeout = IDLE_WAKE if ping is None else next_ping - now
            with self._lock:
                changed_at = self._changed_at
            if changed_at is not None:
                timeout = min(timeout, changed_at + DEBOUNCE - now)
            reload_on = None
            for signum in self._wait(max(timeout, 0.0)):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._log_stopping(signum)
                    return 0
                if signum == signal.SIGHUP:
                    reload_on = "SIGHUP"
            with self._lock:
                if self._changed_at is not None and time.monotonic() >= self._changed_at + DEBOUNCE:
                    self._changed_at = None
                    reload_on = reload_on or "config file changed"
            if reload_on is not None:
                self._reload(reload_on)

    def _wait(self, timeout: float) -> list[int]:
        """Sleep until a signal, a config change or `timeout`; return the signals received."""
        readable, _, _ = select.select([self._wake_read], [], [], timeout)
        if not readable:
            return []
        with suppress(BlockingIOError):
            return [byte for byte in os.read(self._wake_read, 512) if byte]
        return []

    def _wake(self) -> None:
        with suppress(BlockingIOError):  # a full pipe wakes the main thread just as well
            os.write(self._wake_write, b"\0")

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """Signals only write their number into the wakeup pipe; the main loop acts on them."""

        def note(signum: int, _: FrameType | None) -> None:
            pass  # the interpreter already wrote `signum` to the wakeup pipe

        previous_fd = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        previous = {
            s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _log_stopping(self, signum: int) -> None:
        with self._lock:
            running = self._running
        log.info(
            "stopping: the current batch finishes, no new run starts",
            signal=signal.Signals(signum).name,
            running=running,
        )

    def _wait_for_worker(self) -> None:
        """Stop the scheduler and wait for the run in progress to end after its current batch."""
        if not self.scheduler.running:
            return
        # Queued runs still get the worker, see the stop request and return at once.
        shutdown = threading.Thread(
            target=self.scheduler.shutdown, kwargs={"wait": True}, name="retentiond-stop"
        )
        shutdown.start()
        ping = watchdog_interval()
        while shutdown.is_alive():
            shutdown.join(ping or 1.0)
            if ping is not None and self._healthy(ping):
                notify("WATCHDOG=1")

    # --- start ---------------------------------------------------------------------------------

    def _check_at_start(self, audit: AuditLog) -> None:
        """In a run process: sign what the log ends with (a run killed before its checkpoint, a
        repaired torn line), so `audit verify --public-key` need not wait for the next run; then
        open every store of every scheduled rule once: a daemon that cannot reach its data at
        start is misconfigured, and failing now is louder than failing at 03:15."""
        rules = [rule.name for rule, _ in _scheduled(self.loaded.config)]
        news: dict[str, dict[str, Any]] = {}
        try:
            child = RunProcess({"task": "start", "rules": rules}, self.loaded)
        except OSError as error:
            raise RetentiondError(
                f"cannot start the process that checks the stores ({error.strerror or error}); "
                "the daemon does not start"
            ) from None
        status = child.serve(audit, self._current_holds, news.__setitem__)
        unsigned = news.get("tail_unsigned")
        if unsigned is not None:
            log.warning(
                "the log's unsigned end could not be signed at start", reason=unsigned["reason"]
            )
        failed = news.get("store_failed")
        if failed is not None:
            raise StoreError(
                f"rule {failed['rule']}: {failed['message']}. The daemon does not start with a "
                "store it cannot open; `retentiond check` shows every store"
            )
        if "checked" not in news:
            raise StoreError(
                f"the check of the stores at start ended without a result ({exit_status(status)}); "
                "the daemon does not start. `retentiond check` shows every store"
            )

    def _read_history(self, config: Config) -> None:
        """Last success and last result per rule, from the audit log (empty on a first start)."""
        count = 0
        try:
            for entry in read_entries(log_path(config)):
                count += 1
                if entry.type in RUN_ENDS:
                    self._remember(entry)
        except AuditError as error:
            # Missing history only makes catch-up run more: runs are idempotent.
            log.warning("audit log history unreadable; rules may run again now", reason=str(error))
        log.debug("audit log read", entries=count)

    def _remember(self, entry: Entry) -> None:
        name = entry.fields.get("rule")
        if not isinstance(name, str):
            return
        state = self.states.setdefault(name, RuleState())
        status = RUN_END_STATUS[entry.type] or entry.fields.get("status")
        state.last_status = str(status)
        deleted = entry.fields.get("deleted")
        state.last_deleted = deleted if isinstance(deleted, int) else None
        if status == "done":
            with suppress(ValueError):
                state.last_success = datetime.fromisoformat(entry.ts)

    def _log_started(self, config: Config) -> None:
        zone = config.zone()
        next_runs = {
            name: moment.astimezone(zone).isoformat() for name, moment in self._next_runs().items()
        }
        log.info(
            "daemon started",
            config_sha256=self.loaded.sha256,
            rules_scheduled=list(next_runs),
            next_runs=next_runs,
            catch_up=sorted(self._queued),
        )

    # --- scheduling ----------------------------------------------------------------------------

    def _schedule(self, config: Config) -> None:
        """One job per scheduled rule; jobs of rules gone or unscheduled are removed."""
        zone = config.zone()
        wanted = {rule.name: schedule.trigger(zone) for rule, schedule in _scheduled(config)}
        self._triggers = wanted
        for job in self.scheduler.get_jobs():
            kind, _, name = job.id.partition(":")
            if kind == "schedule" and name not in wanted:
                job.remove()
        for name, trigger in wanted.items():
            self.scheduler.add_job(
                self._run_rule,
                trigger,
                args=[name],
                id=f"schedule:{name}",
                name=name,
                replace_existing=True,
            )
        for rule in config.rules:
            if rule.schedule is None:
                log.warning(
                    "rule has no schedule: the daemon does not run it; "
                    "`retentiond run --once --rule NAME` does",
                    rule=rule.name,
                )

    def _queue_overdue(self, config: Config) -> None:
        """Run at once every rule that never succeeded or missed a scheduled time since."""
        now = datetime.now(UTC)
        zone = config.zone()
        for rule, schedule in _scheduled(config):
            with self._lock:
                state = self.states.get(rule.name, RuleState())
                if rule.name in self._queued or rule.name == self._running:
                    continue
                last = state.last_success
                if last is not None and not schedule.trigger(zone).missed_since(last, now):
                    continue
                self._queued.add(rule.name)
            self.scheduler.add_job(
                self._run_rule,
                args=[rule.name],
                kwargs={"catch_up": True},
                id=f"catch-up:{rule.name}",
                name=rule.name,
                replace_existing=True,
            )
            log.info(
                "catch-up run queued",
                rule=rule.name,
                last_success=last.isoformat() if last else None,
            )

    def _next_runs(self) -> dict[str, datetime]:
        """From the triggers, not the scheduler: the worker must never wait for the scheduler's
        lock, which its shutdown holds while it waits for the worker."""
        now = datetime.now(UTC)
        runs = {}
        for name, trigger in self._triggers.items():
            moment = trigger.get_next_fire_time(None, now)
            if moment is not None:
                runs[name] = moment
        return dict(sorted(runs.items(), key=lambda item: item[1].astimezone(UTC)))

    def _run_rule(self, name: str, catch_up: bool = False) -> None:
        """A job: one run of one rule, with the config in force when it starts."""
        if catch_up:
            with self._lock:
                self._queued.discard(name)
        if self.stop.is_set() or self._audit is None:
            return
        loaded = self.loaded  # a reload meanwhile does not change this run
        try:
            rule = loaded.config.rule(name)
        except KeyError:
            log.info("run skipped: the rule is no longer in the config", rule=name)
            return
        with self._lock:
            self._running = name
            self._progress_at = time.monotonic()
        run = _RunNews()
        try:
            self._run_in_child(rule, loaded, run)
        except OSError as error:  # no process could be started (out of memory, a pid limit)
            run.lost = error.strerror or type(error).__name__
        finally:
            with self._lock:
                self._running = None
        if run.stopped:
            log.info("run not started: the daemon is stopping", rule=name)
        elif run.crash is not None or run.outcome is None:
            if run.crash is not None:
                # The type only: an exception's text can carry a file name from a store's folder.
                log.error("run crashed", rule=name, error=run.crash)
            else:
                log.error(
                    "the run process ended without a result; the next run reconciles the log",
                    rule=name,
                    exit_status=run.lost,
                )
            with self._lock:
                state = self.states.setdefault(name, RuleState())
                state.last_status, state.last_deleted = "failed", None
        notify(self._status())
        _release_memory()

    def _run_in_child(self, rule: Rule, loaded: LoadedConfig, run: _RunNews) -> None:
        """One run in a run process; its news reach the observers here, as if it ran here."""
        child = RunProcess({"task": "run", "rule": rule.name}, loaded)
        with self._lock:
            self._child = child
        if self.stop.is_set():  # a stop that came while it started, after _stop_child looked
            child.stop()
        observers = [self, *self.observers]

        def told(news: str, message: dict[str, Any]) -> None:
            if news == "progress":
                self._progressed(message["label"], message["done"], message["expected"])
            elif news == "run_started":
                structlog.contextvars.bind_contextvars(rule=rule.name, run_id=message["run_id"])
                tell(observers, "run_started", rule)
            elif news == "run_finished":
                run.outcome = outcome_from_fields(message["outcome"])
                tell(observers, "run_finished", rule, run.outcome)
            elif news == "crashed":
                run.crash = str(message["error"])
            elif news == "stopped":
                run.stopped = True

        assert self._audit is not None
        try:
            status = child.serve(self._audit, self._current_holds, told)
        finally:
            structlog.contextvars.unbind_contextvars("rule", "run_id")
            with self._lock:
                self._child = None
        run.lost = exit_status(status)

    def _stop_child(self) -> None:
        """Forward the stop to the run in progress: it ends after its current batch."""
        with self._lock:
            child = self._child
        if child is not None:
            child.stop()

    # --- reports -------------------------------------------------------------------------------

    def _schedule_reports(self, loaded: LoadedConfig) -> None:
        """The DPO report after each period, when `reports:` asks for it (service/reports.py)."""
        if loaded.config.reports is None and self.reports is None:
            return  # the report's code is imported only when asked for
        from retentiond.service.reports import schedule_duty

        assert self._audit is not None
        self.reports = schedule_duty(
            self.scheduler, self.reports, loaded, self._audit, self.observers
        )

    # --- RunObserver: progress for the watchdog, results for STATUS ----------------------------

    def run_started(self, rule: Rule) -> None:
        with self._lock:
            self._progress_at = time.monotonic()
        notify(self._status())

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None:
        with self._lock:
            self._progress_at = time.monotonic()
            state = self.states.setdefault(rule.name, RuleState())
            state.last_status, state.last_deleted = outcome.status, outcome.deleted
            if outcome.status == "done":
                state.last_success = datetime.now(UTC)

    def _progressed(self, label: str, done: int, expected: int) -> None:
        with self._lock:
            self._progress_at = time.monotonic()

    # --- health --------------------------------------------------------------------------------

    def _scheduler_alive(self) -> bool:
        thread = getattr(self.scheduler, "_thread", None)  # BackgroundScheduler's loop
        return bool(self.scheduler.running and thread is not None and thread.is_alive())

    def _healthy(self, ping: float) -> bool:
        """Whether to send WATCHDOG=1: the scheduler lives and a run in progress moves on."""
        if not self._scheduler_alive():
            return False
        with self._lock:
            running, quiet = self._running, time.monotonic() - self._progress_at
        limit = self._stuck_after(ping)
        if running is not None and quiet > limit:
            if not self._stuck_reported:
                self._stuck_reported = True
                log.error(
                    "the run makes no progress; watchdog pings stop so systemd restarts retentiond",
                    rule=running,
                    quiet_seconds=round(quiet),
                )
            return False
        self._stuck_reported = False
        return True

    def _stuck_after(self, ping: float) -> float:
        """Ten watchdog periods, but never less than one statement may legitimately take."""
        connections = self.loaded.config.connections.values()
        longest = max((c.statement_timeout for c in connections), default=0.0)
        return max(20 * ping, longest + 60)

    # --- reload --------------------------------------------------------------------------------

    def _current_holds(self) -> list[HoldConfig]:
        """The holds of the config in force now: a run in progress sees a reload's holds."""
        return list(self.loaded.config.holds)

    def _watch_config(self) -> BaseObserver | None:
        """inotify on the config's folder: editors and Ansible replace the file, so a watch on
        the file itself would be lost at the first save. SIGHUP works without it. The holds
        folder is watched too: a hold file saved, replaced or removed reloads."""
        handler = _ConfigChanges(self.path.name, self._config_changed)
        observer = Observer()
        try:
            observer.schedule(
                handler,
                str(self.path.parent),
                recursive=False,
                event_filter=[FileClosedEvent, FileMovedEvent, FileCreatedEvent],
            )
            holds_dir = self.loaded.holds_dir
            if holds_dir is not None and holds_dir.is_dir():
                observer.schedule(
                    _HoldChanges(self._config_changed),
                    str(holds_dir),
                    recursive=False,
                    event_filter=[
                        FileClosedEvent,
                        FileMovedEvent,
                        FileCreatedEvent,
                        FileDeletedEvent,
                    ],
                )
            observer.daemon = True
            observer.start()
        except OSError as error:
            log.warning(
                "config file changes are not watched; reload with SIGHUP (systemctl reload)",
                reason=error.strerror or str(error),
            )
            return None
        return observer

    def _config_changed(self) -> None:
        with self._lock:
            self._changed_at = time.monotonic()
        self._wake()

    def _reload(self, source: str) -> None:
        notify(*reloading())
        try:
            self._apply_reload(source)
        finally:
            notify("READY=1", self._status())

    def _apply_reload(self, source: str) -> None:
        old = self.loaded
        try:
            new = load_config(old.path)
            _require_a_schedule(new)
        except ConfigError as error:
            self._reject(source, [str(p) for p in error.problems])
            return
        except RetentiondError as error:
            self._reject(source, [str(error)])
            return
        if new.sha256 == old.sha256:
            self._config_note = None
            if new.holds_sha256 != old.holds_sha256:
                self._reload_holds(source, new)
            else:
                log.info("config unchanged", source=source, config_sha256=old.sha256)
            return
        changes = _changes(old.config, new.config)
        assert self._audit is not None
        try:
            self._audit.append(
                "config_reloaded",
                old_config_sha256=old.sha256,
                new_config_sha256=new.sha256,
                **changes,
            )
        except AuditError as error:
            self._reject(source, [f"the change cannot be recorded in the audit log: {error}"])
            return
        self.loaded = new
        self._config_note = None
        self._record_holds(new)
        self._schedule(new.config)
        self._queue_overdue(new.config)
        self._schedule_reports(new)
        log.info(
            "config reloaded",
            source=source,
            old_config_sha256=old.sha256,
            new_config_sha256=new.sha256,
            **changes,
        )

    def _reload_holds(self, source: str, new: LoadedConfig) -> None:
        """Only the holds folder changed: the new holds apply from the next batch on."""
        self.loaded = new
        self._record_holds(new)
        log.info("holds reloaded", source=source, holds=len(new.config.holds))

    def _record_holds(self, loaded: LoadedConfig) -> None:
        assert self._audit is not None
        config = loaded.config
        try:
            record_hold_changes(self._audit, config.holds, utcnow(), config.zone())
        except AuditError as error:
            # The holds are in force regardless (they only keep data); the next run records them
            log.error("hold changes not recorded in the audit log", reason=str(error))

    def _reject(self, source: str, problems: list[str]) -> None:
        self._config_note = (
            f"config rejected ({len(problems)} problem{'s' if len(problems) != 1 else ''}, "
            "see the log); the previous config stays in force"
        )
        log.error(
            "config rejected; the previous config stays in force",
            source=source,
            problems=problems,
        )

    # --- STATUS= -------------------------------------------------------------------------------

    def _status(self) -> str:
        """`STATUS=next: call-records 2026-11-27 03:15; last: call-records done 1234 deleted`."""
        config = self.loaded.config
        zone = config.zone()
        parts = []
        if self._config_note:
            parts.append(self._config_note)
        with self._lock:
            running = self._running
            states = {name: RuleState(**vars(state)) for name, state in self.states.items()}
        if running:
            parts.append(f"running: {running}")
        upcoming = [
            f"{name} {moment.astimezone(zone):%Y-%m-%d %H:%M}"
            for name, moment in self._next_runs().items()
        ]
        parts.append("next: " + (", ".join(upcoming) or "none"))
        results = []
        for rule in config.rules:
            state = states.get(rule.name)
            if state is None or state.last_status is None:
                continue
            result = f"{rule.name} {state.last_status}"
            if state.last_deleted is not None:
                result += f" {state.last_deleted} deleted"
            results.append(result)
        parts.append("last: " + (", ".join(results) or "none yet"))
        return "STATUS=" + "; ".join(parts)


@dataclass
class _RunNews:
    """What a run process reported, and how it ended when it reported no result."""

    outcome: RunOutcome | None = None
    crash: str | None = None  # the exception's type name
    lost: str | None = None  # its exit status
    stopped: bool = False  # the daemon stopped before the run began


def _release_memory() -> None:
    """Between runs the daemon only waits: hand what a run allocated back to the system, so the
    idle service is as small as it was before the run (glibc keeps freed heap otherwise)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


class _HoldChanges(FileSystemEventHandler):
    """Calls `changed` for any hold file (`*.yaml`, `*.yml`) saved, moved or removed."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and Path(os.fsdecode(path)).suffix in (".yaml", ".yml"):
                self.changed()
                return


class _ConfigChanges(FileSystemEventHandler):
    """Calls `changed` for saves of one file name: in place (closed after writing), replaced
    (moved over it) or created anew."""

    def __init__(self, name: str, changed: Callable[[], None]) -> None:
        self.name = name
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        target = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        if target and Path(os.fsdecode(target)).name == self.name:
            self.changed()


def _scheduled(config: Config) -> list[tuple[Rule, Schedule]]:
    """The rules the daemon runs: those with a schedule."""
    return [(rule, rule.schedule) for rule in config.rules if rule.schedule is not None]


def _require_a_schedule(loaded: LoadedConfig) -> None:
    if not _scheduled(loaded.config):
        raise ConfigError(
            [
                ConfigProblem(
                    str(loaded.path),
                    None,
                    "rules",
                    "no rule has a schedule, so the daemon would never run anything; add "
                    "`schedule: daily 03:15` (or another) to the rules it should enforce",
                )
            ]
        )


def _changes(old: Config, new: Config) -> dict[str, list[str]]:
    """Rule names whose keep or action changed, and those added and removed."""
    before = {rule.name: rule for rule in old.rules}
    after = {rule.name: rule for rule in new.rules}
    return {
        "rules_changed": [
            name
            for name, rule in after.items()
            if name in before
            and (str(rule.keep), rule.action) != (str(before[name].keep), before[name].action)
        ],
        "rules_added": [name for name in after if name not in before],
        "rules_removed": [name for name in before if name not in after],
    }


class _ToStructlog(logging.Handler):
    """APScheduler and watchdog log through `logging`; their warnings go to our JSON log."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        getattr(log, level)(record.getMessage(), logger=record.name)


def _forward_library_logs() -> None:
    for name in ("apscheduler", "watchdog"):
        library = logging.getLogger(name)
        library.setLevel(logging.WARNING)
        library.propagate = False
        if not any(isinstance(h, _ToStructlog) for h in library.handlers):
            library.addHandler(_ToStructlog())

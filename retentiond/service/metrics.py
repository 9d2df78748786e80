"""Prometheus metrics: a run observer with its own registry, served over HTTP or written to a file.

The daemon serves them (`monitoring.metrics_listen`, loopback by default); `run --once` writes them
for node_exporter's textfile collector (`monitoring.metrics_textfile`). Labels are rule names,
units, statuses and error kinds only: never store labels, which name tables and folders.

    metrics = Metrics(config.rules, config.safety.deadline_grace)
    metrics.seed_from_audit(config.audit.path)      # last success and last run from the log
    metrics.serve("127.0.0.1:9464")                 # daemon; metrics.close() at shutdown
    engine = Engine(loaded, observers=[metrics, ...])
    metrics.write_textfile(Path("/var/lib/node_exporter/textfile/retentiond.prom"))  # --once
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    start_http_server,
)

from retentiond import __version__, safefiles
from retentiond.config.model import Rule
from retentiond.engine.observers import RunObserver
from retentiond.engine.outcome import RunOutcome
from retentiond.errors import AuditError, RetentiondError
from retentiond.evidence.log import RUN_END_STATUS, RUN_ENDS, Entry, read_entries
from retentiond.policy.durations import Duration
from retentiond.policy.rules import schedule_interval

log = structlog.get_logger()

STATUSES = ("done", "incomplete", "refused", "failed", "interrupted")
DEFAULT_GRACE = Duration(days=1, text="1d")  # safety.deadline_grace's default
ERROR_KINDS = ("failed", "refused", "incomplete")  # statuses counted in retentiond_errors_total


class MetricsError(RetentiondError):
    """The metrics endpoint cannot be served (bad address, port in use)."""


class Metrics(RunObserver):
    """A RunObserver that keeps retentiond's Prometheus metrics in a private registry.

    `rules` (optional) pre-creates the per-rule series at zero, so `increase()` and
    `absent()` alerts see a rule before its first run; given as Rules (not names), they also
    give each rule's schedule interval and the moments its next run and, with `grace`
    (safety.deadline_grace), its next success are due: what the alert rules in
    deploy/prometheus compare `time()` with. Observer methods never raise.
    """

    def __init__(self, rules: Iterable[Rule | str] = (), grace: Duration = DEFAULT_GRACE) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deleted = Counter(
            "retentiond_deleted",
            "Objects deleted (rows, files, messages, lines, calls), by rule and unit",
            ["rule", "unit"],
            registry=r,
        )
        self.deleted_bytes = Counter(
            "retentiond_deleted_bytes",
            "Bytes freed by deleting files and messages, by rule",
            ["rule"],
            registry=r,
        )
        self.runs = Counter(
            "retentiond_runs", "Runs ended, by rule and status", ["rule", "status"], registry=r
        )
        self.errors = Counter(
            "retentiond_errors",
            "Runs that failed, were refused by a safety guard or left expired objects behind",
            ["rule", "kind"],
            registry=r,
        )
        self.last_success = Gauge(
            "retentiond_last_success_timestamp_seconds",
            "End of the last run that completed and verified (Unix time); alert on its age",
            ["rule"],
            registry=r,
        )
        self.last_run = Gauge(
            "retentiond_last_run_timestamp_seconds",
            "End of the last run, whatever its status (Unix time)",
            ["rule"],
            registry=r,
        )
        self.duration = Gauge(
            "retentiond_run_duration_seconds",
            "Duration of the last run",
            ["rule"],
            registry=r,
        )
        self.remaining = Gauge(
            "retentiond_expired_remaining",
            "Expired objects left after the last verified run (overdue for deletion)",
            ["rule"],
            registry=r,
        )
        self.undated = Gauge(
            "retentiond_undated",
            "Objects that cannot be dated after the last run, never deleted; beyond the "
            "tolerated share (max_undated_fraction) the run fails",
            ["rule"],
            registry=r,
        )
        self.running = Gauge(
            "retentiond_running", "1 while a run of the rule is in progress", ["rule"], registry=r
        )
        self.last_status = Gauge(
            "retentiond_last_run_status",
            "1 for the status the last run of the rule ended with, 0 for the others",
            ["rule", "status"],
            registry=r,
        )
        self.interval = Gauge(
            "retentiond_schedule_interval_seconds",
            "Longest gap between two runs of the rule's schedule (a day when it has none)",
            ["rule"],
            registry=r,
        )
        self.run_due = Gauge(
            "retentiond_run_due_timestamp_seconds",
            "When the rule's next run is due at the latest: its last run (or, before any, the "
            "start of the deletion log or of the daemon) plus the schedule's interval",
            ["rule"],
            registry=r,
        )
        self.success_due = Gauge(
            "retentiond_success_due_timestamp_seconds",
            "When expired data turns overdue unless a run succeeds first: the last successful "
            "run (or, before any, the start of the deletion log or of the daemon) plus the "
            "schedule's interval plus safety.deadline_grace",
            ["rule"],
            registry=r,
        )
        self.report_last_success = Gauge(
            "retentiond_report_last_success_timestamp",
            "When the last DPO report was delivered (Unix time; reports: in the config)",
            registry=r,
        )
        self.report_failures = Gauge(
            "retentiond_report_failures",
            "Periods whose DPO report is due and failed to be delivered so far (retried)",
            registry=r,
        )
        Gauge("retentiond_build_info", "retentiond's version", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self._lock = threading.Lock()
        self._last_run: dict[str, float] = {}
        self._last_success: dict[str, float] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None  # where serve() listens, once it does
        self._grace = grace
        self._intervals: dict[str, timedelta] = {}
        self._since = time.time()  # before any run: the daemon's start, or the log's if earlier
        for rule in rules:
            if isinstance(rule, str):
                self._touch(rule)
                continue
            self._touch(rule.name)
            self._intervals[rule.name] = interval = schedule_interval(rule.schedule)
            self.interval.labels(rule.name).set(interval.total_seconds())
            self._set_due(rule.name)

    def _touch(self, rule: str) -> None:
        """Create a rule's counters and running gauge at 0; its timestamps wait for a run."""
        for status in STATUSES:
            self.runs.labels(rule, status)
        for kind in ERROR_KINDS:
            self.errors.labels(rule, kind)
        self.running.labels(rule).set(0)

    # -- RunObserver ---------------------------------------------------------------------

    def run_started(self, rule: Rule) -> None:
        try:
            self.running.labels(rule.name).set(1)
        except Exception as error:  # monitoring must never stop enforcement
            log.warning("metrics update failed", error=repr(error))

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None:
        try:
            self._record(rule.name, outcome, time.time())
        except Exception as error:  # monitoring must never stop enforcement
            log.warning("metrics update failed", error=repr(error))

    def _record(self, name: str, outcome: RunOutcome, now: float) -> None:
        by_unit: dict[str, int] = {}
        freed: int | None = None
        for store in outcome.stores:
            by_unit[store.unit] = by_unit.get(store.unit, 0) + store.deleted
            if store.bytes is not None:
                freed = (freed or 0) + store.bytes
        for unit, count in by_unit.items():
            self.deleted.labels(name, unit).inc(count)
        if freed is not None:
            self.deleted_bytes.labels(name).inc(freed)
        self.runs.labels(name, outcome.status).inc()
        self._set_status(name, outcome.status)
        if outcome.status in ERROR_KINDS:
            self.errors.labels(name, outcome.status).inc()
        remaining = [s.remaining for s in outcome.stores if s.remaining is not None]
        if remaining:  # only a verified run knows what is left; otherwise keep the last value
            self.remaining.labels(name).set(sum(remaining))
        if outcome.status in ("done", "incomplete", "failed") and outcome.stores:
            # per store once (a two-stage rule lists a store twice: the last stage counts)
            undated = {s.label: s.undated.count if s.undated else 0 for s in outcome.stores}
            self.undated.labels(name).set(sum(undated.values()))
        self.duration.labels(name).set(outcome.seconds)
        self._set_time(self.last_run, self._last_run, name, now)
        if outcome.status == "done":
            self._set_time(self.last_success, self._last_success, name, now)
        self._set_due(name)
        self.running.labels(name).set(0)

    # -- seeding from the audit log ------------------------------------------------------

    def seed_from_audit(self, source: Path | Iterable[Entry]) -> int:
        """Set last success and last run per rule from the audit log (at daemon start).

        `source` is the log's path (a missing file seeds nothing) or entries already read.
        Values already newer (a run of this process) are kept. A broken log is a warning:
        whatever was read before the break is used. Returns how many rules were seeded.
        """
        if isinstance(source, Path):
            if not source.exists():
                return 0
            source = read_entries(source)
        rules: dict[str, str] = {}  # run_id -> rule
        success: dict[str, float] = {}
        last: dict[str, float] = {}
        last_status: dict[str, str] = {}
        first: float | None = None
        try:
            for entry in source:
                if first is None:
                    first = _timestamp(entry.ts)
                run_id = entry.fields.get("run_id")
                rule = entry.fields.get("rule")
                if entry.type == "run_started" and isinstance(rule, str):
                    rules[str(run_id)] = rule
                    continue
                if entry.type not in RUN_ENDS:
                    continue
                if not isinstance(rule, str):
                    rule = rules.get(str(run_id))
                moment = _timestamp(entry.ts)
                if rule is None or moment is None:
                    continue
                if moment >= last.get(rule, 0.0):
                    last[rule] = moment
                    status = RUN_END_STATUS[entry.type] or entry.fields.get("status")
                    last_status[rule] = status if isinstance(status, str) else "failed"
                if entry.type == "run_finished" and entry.fields.get("status") == "done":
                    success[rule] = max(success.get(rule, 0.0), moment)
        except AuditError as error:
            log.warning("metrics seeded from part of the audit log", reason=str(error))
        except Exception as error:  # seeding is a convenience: never stop the daemon for it
            log.warning("metrics not seeded from the audit log", error=repr(error))
        for rule, moment in last.items():
            if self._set_time(self.last_run, self._last_run, rule, moment):
                self._set_status(rule, last_status[rule])
        for rule, moment in success.items():
            self._set_time(self.last_success, self._last_success, rule, moment)
        with self._lock:
            if first is not None and first < self._since:
                self._since = first
        for rule in self._intervals:
            self._set_due(rule)
        return len(last)

    def report_result(self, last_success: datetime | None, failing: int) -> None:
        """The report duty's state after each look: last delivery, periods still failing."""
        if last_success is not None:
            self.report_last_success.set(last_success.timestamp())
        self.report_failures.set(failing)

    def _set_time(self, gauge: Gauge, seen: dict[str, float], rule: str, moment: float) -> bool:
        """Set a rule's timestamp gauge unless it already holds a later time; True if set."""
        with self._lock:
            if moment > seen.get(rule, 0.0):
                seen[rule] = moment
                gauge.labels(rule).set(moment)
                return True
            return False

    def _set_due(self, rule: str) -> None:
        """A rule's due times from its last run and last success (for a rule given as a Rule)."""
        interval = self._intervals.get(rule)
        if interval is None:
            return
        with self._lock:
            last_run = self._last_run.get(rule, self._since)
            last_success = self._last_success.get(rule, self._since)
        self.run_due.labels(rule).set(last_run + interval.total_seconds())
        # The grace is a calendar period: added on the calendar, in UTC (a month is a month).
        after = datetime.fromtimestamp(last_success, UTC) + interval
        self.success_due.labels(rule).set(self._grace.after(after).timestamp())

    def _set_status(self, rule: str, status: str) -> None:
        """The last run's status: 1 for it, 0 for every other (an unknown one counts as failed)."""
        status = status if status in STATUSES else "failed"
        for each in STATUSES:
            self.last_status.labels(rule, each).set(1 if each == status else 0)

    # -- exposition ----------------------------------------------------------------------

    def serve(self, listen: str) -> None:
        """Serve /metrics on `listen` ("host:port", e.g. "127.0.0.1:9464") in a daemon thread.

        Port 0 picks a free port (see `.address`). A host other than loopback is served as
        written (the admin chose it) with a warning. Raises MetricsError when it cannot bind.
        """
        host, port = _parse_listen(listen)
        if not _is_loopback(host):
            log.warning(
                "metrics served beyond this host: anyone who can reach it sees rule names "
                "and counts; prefer 127.0.0.1 and a reverse proxy or node_exporter",
                listen=listen,
            )
        self.close()
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise MetricsError(
                f"cannot serve metrics on {listen}: {error.strerror or error}; "
                "change monitoring.metrics_listen"
            ) from None
        self._server, self._thread = server, thread
        bound = server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("metrics served", host=self.address[0], port=self.address[1])

    def close(self) -> None:
        """Stop serving (daemon shutdown or reload). Safe to call when not serving."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self.address = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def write_textfile(self, path: Path) -> None:
        """Write the metrics for node_exporter's textfile collector (temp file, then rename),
        through `safefiles`: a link planted in that folder never redirects the write.

        A failure is logged as a warning, never raised: the runs themselves are done.
        """
        try:
            content = generate_latest(self.registry)
            with safefiles.folder(path.parent) as folder:
                safefiles.replace(folder, path.name, content, 0o644)  # node_exporter reads it
        except Exception as error:
            reason = error.strerror if isinstance(error, OSError) else None
            log.warning(
                "metrics textfile not written",
                path=str(path),
                reason=reason or repr(error),
            )


def write_fleet_textfile(path: Path, verified: Iterable[tuple[str, bool]], moment: float) -> None:
    """What `report --fleet` found, for the controller's node_exporter: per system whether its
    deletion log verified against its public key, and when this was checked (alerts
    RetentiondFleetLogNotVerified, RetentiondFleetNotChecked). MetricsError when it cannot be
    written: the admin asked for it."""
    registry = CollectorRegistry(auto_describe=True)
    result = Gauge(
        "retentiond_fleet_log_verified",
        "1 when the system's deletion log verified against its public key at the last fleet "
        "report, 0 when it did not or the system could not be reported on",
        ["system"],
        registry=registry,
    )
    for system, ok in verified:
        result.labels(system).set(1 if ok else 0)
    Gauge(
        "retentiond_fleet_checked_timestamp_seconds",
        "When the last fleet report checked the systems' deletion logs (Unix time)",
        registry=registry,
    ).set(moment)
    try:
        with safefiles.folder(path.parent) as folder:
            safefiles.replace(folder, path.name, generate_latest(registry), 0o644)
    except OSError as error:
        raise MetricsError(
            f"cannot write the metrics textfile {path}: {error.strerror or error}; "
            "fix the folder or change --metrics-textfile"
        ) from None


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise MetricsError(
            f"metrics address {listen!r} is not host:port (e.g. 127.0.0.1:9464); "
            "change monitoring.metrics_listen"
        )
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None

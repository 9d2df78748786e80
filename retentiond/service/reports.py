"""The DPO report that arrives by itself: built after each period, written to a folder and/or
mailed, recorded in the deletion log as `report_sent`.

`ReportDuty.tick(now)` is all the daemon calls (from a worker of its own, so a slow SMTP server
never holds up a run); each attempt builds and sends in a child process (`deliver_in_child`, this
module's `main`) and the daemon records the result. `retentiond report --send` calls `deliver`
and `record_sent` directly.
Whether a period's report went out is read from the log itself (`report_sent`), so it goes out
once per period whatever restarts happen in between; a failed attempt is logged as
`report_failed` (fixed wording, SMTP codes only) and tried again after `BACKOFF`.

Nothing personal leaves here: the report holds counts, rule names and hashes only; the log
entries hold the number of recipients, never their addresses; an SMTP server's own text is
never repeated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from calendar import monthrange
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger

from retentiond import i18n, logs, safefiles
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Config, MailConfig, ReportsConfig, reports_language
from retentiond.credentials import CredentialError, read_secret
from retentiond.engine.status import REPORT_FAILED, REPORT_SENT, ReportHistory
from retentiond.errors import AuditError, RetentiondError
from retentiond.evidence.log import AuditWriter, Entry, json_safe, read_entries
from retentiond.evidence.report.values import Period
from retentiond.i18n import N_, Language

if TYPE_CHECKING:
    from retentiond.evidence.report.values import Report
from retentiond.policy.rules import earliest_instant

log = structlog.get_logger()

# Waits after the 1st, 2nd, 3rd failed attempt; hourly after that.
BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=1))
REPORTS_JOB = "reports"
CHILD_TIMEOUT = 600  # seconds to build the report, besides the mail's own timeouts
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
CATCH_UP = 12  # periods looked back at most: a daemon down for a year sends a year's reports
FILE_MODE = 0o640
MEDIA = {
    "pdf": ("application", "pdf"),
    "html": ("text", "html"),
    "csv": ("text", "csv"),
    "json": ("application", "json"),
}


class DeliveryError(RetentiondError):
    """A report that could not be delivered; the message is fixed wording, with codes only."""


# --- periods -----------------------------------------------------------------------------------


def period_key(period: Period, kind: str) -> str:
    """`2026-11` for a month, `2026-Q4` for a quarter: the name in file names and the log;
    `2026-10-03_2026-10-20` for any other span (`report --send --from --to`)."""
    first = period.first_day
    if _period_starting(_start_of(first, kind), kind, period.zone) != period:
        return f"{first.isoformat()}_{period.last_day.isoformat()}"
    if kind == "quarterly":
        return f"{first.year}-Q{(first.month - 1) // 3 + 1}"
    return f"{first.year}-{first.month:02d}"


def _months(kind: str) -> int:
    return 3 if kind == "quarterly" else 1


def _period_starting(first: date, kind: str, zone: object) -> Period:
    months = _months(kind)
    last_month = first.month + months - 1
    year = first.year + (last_month - 1) // 12
    month = (last_month - 1) % 12 + 1
    last = date(year, month, monthrange(year, month)[1])
    return Period(first, last, zone)  # type: ignore[arg-type]


def _start_of(day: date, kind: str) -> date:
    months = _months(kind)
    return date(day.year, (day.month - 1) // months * months + 1, 1)


def previous_period(period: Period, kind: str) -> Period:
    day_before = period.first_day - timedelta(days=1)
    return _period_starting(_start_of(day_before, kind), kind, period.zone)


def current_period(now: datetime, config: Config, kind: str) -> Period:
    zone = config.zone()
    today = now.astimezone(zone).date()
    return _period_starting(_start_of(today, kind), kind, zone)


def last_finished(now: datetime, config: Config, kind: str) -> Period:
    """The last period that has ended by `now` (the one before the current)."""
    return previous_period(current_period(now, config, kind), kind)


def due_at(period: Period, reports: ReportsConfig) -> datetime:
    """When the report of `period` is due: `day` of the month after it, at `at`, local time."""
    after = period.last_day + timedelta(days=1)
    hour, minute = (int(part) for part in reports.at.split(":"))
    local = datetime.combine(date(after.year, after.month, reports.day), time(hour, minute))
    return earliest_instant(local, period.zone)


# --- building and delivering -------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    form: str  # the format delivered (html when pdf was asked for but cannot be made)
    name: str  # file name, by period
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """What went out for one period; what `report_sent` records."""

    period: Period
    key: str
    documents: list[Document]
    recipients: int
    folder: bool
    pdf_missing: bool  # PDF asked for, HTML sent instead (WeasyPrint or its libraries missing)
    head_seq: int
    head_hash: str

    def log_fields(self) -> dict[str, object]:
        return {
            "period": self.key,
            "first_day": self.period.first_day,
            "last_day": self.period.last_day,
            "formats": [document.form for document in self.documents],
            "sha256": self.documents[0].sha256,
            "documents": {document.form: document.sha256 for document in self.documents},
            "recipients": self.recipients,
            "folder": self.folder,
            "pdf_missing": self.pdf_missing,
            "chain_head_seq": self.head_seq,
            "chain_head_hash": self.head_hash,
        }


def documents(report: Report, key: str, formats: Sequence[str]) -> tuple[list[Document], bool]:
    """The report in each format; a PDF that cannot be made becomes HTML (and says so)."""
    from retentiond.evidence.report import render  # in the child only: templates, WeasyPrint

    made: list[Document] = []
    pdf_missing = False
    for form in formats:
        if form == "pdf":
            try:
                content = render.pdf(report)
            except RetentiondError:
                pdf_missing = True
                form = "html"
                content = render.html(report).encode()
        elif form == "csv":
            content = render.csv_text(report).encode()
        elif form == "json":
            content = render.json_text(report).encode()
        else:
            content = render.html(report).encode()
        if any(document.form == form for document in made):
            continue  # html asked for beside a pdf that became html
        made.append(Document(form, f"retentiond-report-{key}.{form}", content))
    return made, pdf_missing


def deliver(
    loaded: LoadedConfig, period: Period, now: datetime, language: Language | None = None
) -> Delivery:
    """Build the report of `period` and hand it to every destination of `reports:`, in
    `language` (default: the config's reports_language). DeliveryError (fixed wording) when any
    destination fails."""
    reports = loaded.config.reports
    if reports is None:
        raise RetentiondError("the config has no reports: section; say where reports go there")
    from retentiond.evidence.report import build, residual

    key = period_key(period, reports.period)
    config = loaded.config
    language = language or reports_language(config)
    built = build.build_report(
        loaded,
        [],
        period,
        residual=residual.detect(config, language=language),
        residual_host=socket.gethostname(),
        generated_at=now,
        language=language,
    )
    made, pdf_missing = documents(built, key, reports.formats)
    own = built.logs[0] if built.logs else None
    delivery = Delivery(
        period=period,
        key=key,
        documents=made,
        recipients=len(reports.mail.to) if reports.mail else 0,
        folder=reports.folder is not None,
        pdf_missing=pdf_missing,
        head_seq=own.head_seq if own else 0,
        head_hash=own.head_hash if own else "",
    )
    if reports.folder is not None:
        write_folder(reports.folder, made)
    if reports.mail is not None:
        send_mail(reports.mail, compose(reports, built, delivery, now))
    return delivery


def write_folder(folder: Path, made: Iterable[Document]) -> None:
    """Each document under its period's name, replaced whole (a resend overwrites the file)."""
    try:
        with safefiles.folder(folder, guarded=True) as fd:
            for document in made:
                safefiles.replace(fd, document.name, document.content, FILE_MODE)
    except safefiles.UnsafePlace as error:
        raise DeliveryError(f"the report folder is unsafe to write: {error.strerror}") from None
    except OSError as error:
        raise DeliveryError(
            f"cannot write the report folder {folder}: {error.strerror or type(error).__name__}"
        ) from None


# --- the mail ----------------------------------------------------------------------------------

# The English is the code's; the German is in retentiond/locale/de/LC_MESSAGES/mail.po.
# The verdict on the period, and on each rule by its compliance level
VERDICTS = {
    "kept": N_("every retention period was kept"),
    "remarks": N_("retention periods kept, with remarks"),
    "missed": N_("a retention period was NOT kept"),
    "none": N_("no rules evaluated"),
}
LEVEL_WORD = {"green": "kept", "amber": "remarks", "red": "missed"}


def period_verdict(report: Report) -> str:
    """`kept`, `remarks`, `missed` or `none`, from the report's own compliance verdicts."""
    levels = {row.level for row in report.compliance}
    if not levels:
        return "none"
    for level in ("red", "amber"):
        if level in levels:
            return LEVEL_WORD[level]
    return "kept"


def compose(
    reports: ReportsConfig, report: Report, delivery: Delivery, now: datetime
) -> EmailMessage:
    """The mail: subject and body in the report's language, the documents attached."""
    mail = reports.mail
    assert mail is not None
    language = report.language
    words = i18n.words(language)
    _ = words.gettext
    verdict = _(VERDICTS[period_verdict(report)])
    period = delivery.period
    lines = [
        _("This is the deletion report of retentiond for {first} to {last}.").format(
            first=words.day(period.first_day), last=words.day(period.last_day)
        ),
        "",
        _("Verdict: {verdict}.").format(verdict=verdict),
    ]
    lines += [
        f"- {row.rule}: {_(VERDICTS[LEVEL_WORD.get(row.level, 'remarks')])}"
        for row in report.compliance
    ]
    deleted = sum(total.deleted for total in report.totals)
    intact = all(info.intact for info in report.logs)
    names = ", ".join(d.name for d in delivery.documents)
    lines += [
        "",
        words.ngettext(
            "Deleted in the period: {count} object.",
            "Deleted in the period: {count} objects.",
            deleted,
        ).format(count=words.number(deleted)),
        _("The deletion log is intact.")
        if intact
        else _("The deletion log is NOT intact; see the report."),
        # The entry's number is the log's `seq`, an identifier: written as the log writes it
        _("Chain head of the deletion log: entry {seq}, SHA-256 {hash}").format(
            seq=delivery.head_seq, hash=delivery.head_hash
        ),
        "",
        # One report, in each of the formats named
        _("The report is attached ({names}).").format(names=names),
    ]
    if delivery.pdf_missing:
        lines.append(
            _(
                "A PDF could not be made on this system (WeasyPrint or its libraries are "
                "missing), so the report is attached as HTML."
            )
        )
    lines += [
        "",
        _(
            "Check the log yourself with `retentiond audit verify`; the chain head above must "
            "appear in it."
        ),
        "",
        "-- ",
        _("This mail was sent automatically by retentiond."),
    ]
    message = EmailMessage()
    message["Subject"] = _("Deletion report {key}: {verdict}").format(
        key=delivery.key, verdict=verdict
    )
    message["From"] = mail.from_
    message["To"] = ", ".join(mail.to)
    message["Date"] = formatdate(now.timestamp(), localtime=False)
    message["Message-ID"] = make_msgid(domain=mail.from_.rsplit("@", 1)[1])
    message.set_content("\n".join(lines) + "\n")
    message["Content-Language"] = language  # the text's (set_content clears Content-* headers)
    for document in delivery.documents:
        maintype, subtype = MEDIA[document.form]
        message.add_attachment(
            document.content, maintype=maintype, subtype=subtype, filename=document.name
        )
    if message.is_multipart():  # the text went into a part of its own: the mail says it too
        message["Content-Language"] = language
    return message


def send_mail(mail: MailConfig, message: EmailMessage) -> None:
    """Over STARTTLS or TLS, with the login when configured. DeliveryError says what failed in
    fixed words and SMTP codes: a server's own text can echo addresses back."""
    password = None
    if mail.password_file is not None:
        try:
            password = read_secret(mail.password_file, "the SMTP password file")
        except CredentialError as error:
            raise DeliveryError(str(error)) from None
    try:
        context = ssl.create_default_context(
            cafile=str(mail.ca_file) if mail.ca_file is not None else None
        )
    except (OSError, ssl.SSLError):
        raise DeliveryError(f"cannot read the CA file {mail.ca_file}") from None
    try:
        if mail.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                mail.host, mail.port, timeout=mail.timeout, context=context
            )
        else:
            client = smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout)
        with client:
            if mail.security == "starttls":
                client.starttls(context=context)
            if mail.username is not None and password is not None:
                client.login(mail.username, password)
            refused = client.send_message(message, from_addr=mail.from_, to_addrs=list(mail.to))
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError(
            "the SMTP server does not offer STARTTLS or AUTH; retentiond sends over TLS only"
        ) from None
    except smtplib.SMTPAuthenticationError as error:
        raise DeliveryError(f"the SMTP server refused the login (SMTP {error.smtp_code})") from None
    except smtplib.SMTPRecipientsRefused as error:
        codes = sorted({code for code, _ in error.recipients.values()})
        raise DeliveryError(
            f"the SMTP server refused all {len(error.recipients)} recipients "
            f"(SMTP {', '.join(map(str, codes))})"
        ) from None
    except smtplib.SMTPSenderRefused as error:
        raise DeliveryError(
            f"the SMTP server refused the sender (SMTP {error.smtp_code})"
        ) from None
    except smtplib.SMTPResponseException as error:
        raise DeliveryError(f"the SMTP server answered SMTP {error.smtp_code}") from None
    except smtplib.SMTPServerDisconnected:
        raise DeliveryError("the SMTP server closed the connection") from None
    except ssl.SSLCertVerificationError:
        raise DeliveryError(
            "the SMTP server's certificate is not trusted (give its CA with mail.ca_file)"
        ) from None
    except ssl.SSLError:
        raise DeliveryError("the TLS handshake with the SMTP server failed") from None
    except TimeoutError:
        raise DeliveryError("the SMTP server did not answer in time") from None
    except smtplib.SMTPException as error:
        raise DeliveryError(f"SMTP failed ({type(error).__name__})") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DeliveryError(
            f"cannot reach the SMTP server {mail.host}:{mail.port} ({reason})"
        ) from None
    if refused:
        codes = sorted({code for code, _ in refused.values()})
        raise DeliveryError(
            f"the SMTP server refused {len(refused)} of {len(mail.to)} recipients "
            f"(SMTP {', '.join(map(str, codes))})"
        )


def record_sent(audit: AuditWriter, delivery: Delivery) -> Entry:
    return audit.append(REPORT_SENT, **delivery.log_fields())


# --- the daemon's duty -------------------------------------------------------------------------


@dataclass
class Attempts:
    """Failed attempts at one period's report since the daemon started."""

    count: int = 0
    next_at: datetime | None = None
    error: str = ""


def backoff(count: int) -> timedelta:
    return BACKOFF[min(count, len(BACKOFF)) - 1]


# Builds and delivers one period's report; the fields of its `report_sent` entry
Deliver = Callable[[LoadedConfig, Period, datetime], dict[str, Any]]


def deliver_in_child(
    loaded: LoadedConfig,
    period: Period,
    now: datetime,
    started: Callable[[subprocess.Popen[bytes] | None], None] | None = None,
) -> dict[str, Any]:
    """`deliver` in a process of its own, as runs are (service/runner.py): the report's
    templates and WeasyPrint (tens of MiB) never stay in the daemon, and a crash while building
    fails this attempt only. The child writes nothing to the log; the daemon records it.
    `started` is given the child (and None once it ended), for a stopping daemon to end it."""
    reports = loaded.config.reports
    timeout = CHILD_TIMEOUT + (6 * reports.mail.timeout if reports and reports.mail else 0)
    task = {
        "loaded": base64.b64encode(pickle.dumps(loaded)).decode("ascii"),
        "first_day": period.first_day.isoformat(),
        "last_day": period.last_day.isoformat(),
        "now": now.isoformat(),
    }
    environment = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    try:
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", "retentiond.service.reports"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
    except OSError as error:
        raise DeliveryError(
            f"cannot start the process that builds the report ({error.strerror or error})"
        ) from None
    if started is not None:
        started(child)
    try:
        output, _ = child.communicate(json.dumps(task).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise DeliveryError(f"building and sending the report took over {timeout:.0f} s") from None
    finally:
        if started is not None:
            started(None)
    try:
        answer = json.loads(output.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeliveryError(
            f"the process that builds the report ended without a result (exit {child.returncode})"
        ) from None
    if "error" in answer:
        raise DeliveryError(str(answer["error"]))
    fields = answer["fields"]
    assert isinstance(fields, dict)
    return fields


def main() -> int:
    """The child of `deliver_in_child`: the task on stdin, one JSON line on stdout."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the daemon's business
    task = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the answer
    logs.configure(quiet=True)
    loaded = pickle.loads(base64.b64decode(task["loaded"]))  # noqa: S301 - from the daemon
    assert isinstance(loaded, LoadedConfig)
    period = Period(
        date.fromisoformat(task["first_day"]),
        date.fromisoformat(task["last_day"]),
        loaded.config.zone(),
    )
    try:
        delivery = deliver(loaded, period, datetime.fromisoformat(task["now"]))
        answer: dict[str, Any] = {"fields": json_safe(delivery.log_fields(), "report_sent")}
    except RetentiondError as error:
        answer = {"error": str(error)}
    except Exception as error:  # a bug: the type only, its text may name anything
        answer = {"error": f"building the report failed ({type(error).__name__})"}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


class ReportDuty:
    """Sends every finished period's report once, retrying failures; driven by `tick(now)`.

    Catch-up: every period due by `now` and not in the log is sent, oldest first, as long as the
    log had begun before the period ended (a fresh install does not report on months it never
    saw) and at most `CATCH_UP` periods back."""

    def __init__(
        self,
        loaded: LoadedConfig,
        audit: AuditWriter,
        history: ReportHistory,
        *,
        on_result: Callable[[datetime | None, int], None] | None = None,
        on_attempt: Callable[[str, str | None], None] | None = None,
        observers: Sequence[object] = (),
        deliver_one: Deliver | None = None,
    ) -> None:
        self.loaded = loaded
        self.audit = audit
        self.history = history
        self.attempts: dict[str, Attempts] = {}
        self.on_result = on_result  # after each look: last delivery, periods failing
        self.on_attempt = on_attempt  # after each attempt: the period, the error or None
        # The daemon's monitoring: Metrics (`report_result`), Pings (`report_attempted`)
        self.observers = list(observers)
        self.stopping = threading.Event()
        self._deliver = deliver_one or self._deliver_in_child
        self._child: subprocess.Popen[bytes] | None = None
        self._child_lock = threading.Lock()

    @classmethod
    def from_log(cls, loaded: LoadedConfig, audit: AuditWriter, **options: object) -> ReportDuty:
        history = ReportHistory()
        try:
            for entry in read_entries(audit.path):
                history.read(entry)
        except AuditError as error:
            # What was read before the break counts: a report may go out twice, never silently
            # not at all for a period the log shows it saw
            log.warning("report history read from part of the log", reason=str(error))
        return cls(loaded, audit, history, **options)  # type: ignore[arg-type]

    def due(self, now: datetime) -> list[Period]:
        reports = self.loaded.config.reports
        if reports is None:
            return []
        found = []
        period = last_finished(now, self.loaded.config, reports.period)
        began = self.history.first_entry
        for _ in range(CATCH_UP):
            if began is None or period.end <= began:
                break
            if due_at(period, reports) <= now and period_key(period, reports.period) not in (
                self.history.sent
            ):
                found.append(period)
            period = previous_period(period, reports.period)
        return found[::-1]

    @property
    def failing(self) -> int:
        """Periods whose report is due and has failed at least once, not yet sent."""
        return sum(
            1 for key, a in self.attempts.items() if a.count and key not in self.history.sent
        )

    def next_wake(self, now: datetime) -> datetime | None:
        """When `tick` has something to do next: a retry, or the next period's due time."""
        reports = self.loaded.config.reports
        if reports is None:
            return None
        times = [
            a.next_at
            for key, a in self.attempts.items()
            if a.next_at is not None and key not in self.history.sent
        ]
        if self.due(now) and not times:
            return now
        times.append(due_at(current_period(now, self.loaded.config, reports.period), reports))
        return min(times)

    def stop(self) -> None:
        """The daemon stops: no new attempt, and one in progress ends now (it is retried at the
        next start, as nothing was recorded)."""
        self.stopping.set()
        with self._child_lock:
            if self._child is not None:
                self._child.kill()

    def _deliver_in_child(
        self, loaded: LoadedConfig, period: Period, now: datetime
    ) -> dict[str, Any]:
        def started(child: subprocess.Popen[bytes] | None) -> None:
            with self._child_lock:
                self._child = child
                if child is not None and self.stopping.is_set():
                    child.kill()

        return deliver_in_child(loaded, period, now, started)

    def look(self) -> None:
        """The daemon's job (every minute, in a thread of its own): `tick` now; nothing it does
        may stop the daemon or the runs."""
        if self.stopping.is_set():
            return
        try:
            self.tick(datetime.now(UTC))
        except AuditError:
            pass  # the daemon sees the log's failure itself and exits
        except Exception as error:  # a bug in building the report must not stop the daemon
            log.error(
                "the report duty failed; it looks again in a minute", error=type(error).__name__
            )

    def tick(self, now: datetime) -> None:
        """Send what is due and not waiting for its retry. Never raises for a delivery."""
        reports = self.loaded.config.reports
        if reports is None:
            return
        for period in self.due(now):
            key = period_key(period, reports.period)
            attempts = self.attempts.setdefault(key, Attempts())
            if attempts.next_at is not None and now < attempts.next_at:
                continue
            self._attempt(period, key, attempts, now)
        if self.on_result is not None:
            self.on_result(self.history.last_success, self.failing)
        for observer in self.observers:
            told = getattr(observer, "report_result", None)
            if callable(told):
                told(self.history.last_success, self.failing)

    def _told(self, key: str, error: str | None) -> None:
        if self.on_attempt is not None:
            self.on_attempt(key, error)
        reports = self.loaded.config.reports
        for observer in self.observers:
            told = getattr(observer, "report_attempted", None)
            if callable(told):
                told(reports.ping if reports else None, key, error)

    def _attempt(self, period: Period, key: str, attempts: Attempts, now: datetime) -> None:
        try:
            fields = self._deliver(self.loaded, period, now)
        except RetentiondError as error:  # DeliveryError, or a report that cannot be built
            if self.stopping.is_set():
                return  # ended by the daemon's stop: tried again at its next start
            attempts.count += 1
            attempts.error = str(error)
            attempts.next_at = now + backoff(attempts.count)
            log.error(
                "the report could not be delivered; it is tried again",
                period=key,
                attempt=attempts.count,
                reason=attempts.error,
                next_attempt=attempts.next_at.isoformat(),
            )
            failed = self.audit.append(
                REPORT_FAILED,
                period=key,
                attempt=attempts.count,
                error=attempts.error,
                next_attempt=attempts.next_at,
            )
            self.history.read(failed)
            self._told(key, attempts.error)
            return
        entry = self.audit.append(REPORT_SENT, **fields)
        self.history.read(entry)
        self.attempts.pop(key, None)
        self._told(key, None)
        log.info(
            "report delivered",
            period=key,
            formats=fields["formats"],
            recipients=fields["recipients"],
            sha256=fields["sha256"],
        )


def schedule_duty(
    scheduler: BaseScheduler,
    duty: ReportDuty | None,
    loaded: LoadedConfig,
    audit: AuditWriter,
    observers: Sequence[object],
) -> ReportDuty | None:
    """The daemon's report job: a look every minute whether a period's report is due or a
    failed one may be tried again, and one at once (the catch-up after downtime). A reload
    keeps the duty, its attempts and what it read from the log; `reports:` removed ends it."""
    if loaded.config.reports is None:
        with suppress(JobLookupError):
            scheduler.remove_job(REPORTS_JOB)
        return None
    if duty is not None:
        duty.loaded = loaded
        return duty
    duty = ReportDuty.from_log(loaded, audit, observers=observers)
    scheduler.add_job(
        duty.look,
        IntervalTrigger(minutes=1),
        id=REPORTS_JOB,
        name=REPORTS_JOB,
        executor="reports",  # the daemon's second worker: runs never wait for a mail server
        next_run_time=datetime.now(UTC),
        replace_existing=True,
    )
    return duty


if __name__ == "__main__":
    sys.exit(main())

"""The report arrives by itself: a real SMTP server on loopback (aiosmtpd, STARTTLS and AUTH)
receives it, and what it received is parsed as a mail client would. The clock is injected: the
duty is told what time it is, the log stamps its entries with the same clock."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from retentiond.cli.main import cli
from retentiond.cli.status import status_text
from retentiond.config.loader import LoadedConfig, load_config, parse_config
from retentiond.engine.engine import Engine
from retentiond.engine.status import compute, read_report_history
from retentiond.errors import ConfigError
from retentiond.evidence import log as audit
from retentiond.service.metrics import Metrics
from retentiond.service.reports import (
    REPORT_FAILED,
    REPORT_SENT,
    ReportDuty,
    last_finished,
    period_key,
)

USER, PASSWORD = "retentiond", "s3cret-for-smtp"
RECIPIENTS = ["dpo@example.com", "auditor@example.org"]


# --- the SMTP server ---------------------------------------------------------------------------


@dataclass
class Inbox:
    mails: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        mail = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        self.mails.append(mail)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SmtpServer:
    """aiosmtpd on loopback, login required: STARTTLS, or with `implicit_tls` TLS from the first
    byte (port 465 style, `security: tls`)."""

    port: int
    cert: Path
    key: Path
    inbox: Inbox
    implicit_tls: bool = False
    controller: Controller | None = None

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        inbox = self.inbox

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, auth: Any
        ) -> AuthResult:
            ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (
                USER.encode(),
                PASSWORD.encode(),
            )
            if ok:
                inbox.logins.append(auth.login.decode())
            return AuthResult(success=ok, handled=False)

        if self.implicit_tls:
            # the whole session is TLS; aiosmtpd's own check only knows STARTTLS
            tls: dict[str, Any] = {"ssl_context": context, "auth_require_tls": False}
        else:
            tls = {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
        self.controller = Controller(
            self.inbox,
            hostname="127.0.0.1",
            port=self.port,
            auth_required=True,
            authenticator=authenticate,
            **tls,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    cert, key = _certificate(tmp_path)
    server = SmtpServer(_free_port(), cert, key, Inbox())
    server.start()
    yield server
    server.stop()


# --- a PBX with a log ----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _config(tmp_path: Path, smtp: SmtpServer, language: str = "en", **extra: str) -> LoadedConfig:
    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    secret = tmp_path / "smtp.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True, mode=0o750)
    logs = tmp_path / "log"
    logs.mkdir(exist_ok=True, mode=0o750)
    path = tmp_path / "retentiond.yaml"
    path.write_text(
        f"""\
version: 1
timezone: Europe/Berlin
audit: {{path: {logs}/audit.jsonl}}
rules:
  - name: call-recordings
    keep: 30d
    schedule: daily 03:15
    stores: [{{type: files, root: {recordings}, match: ["*.wav"]}}]
reports:
  period: monthly
  day: {extra.get("day", "1")}
  at: "06:00"
  formats: [pdf]
  language: {language}
  folder: {reports}
  mail:
    to: [{", ".join(RECIPIENTS)}]
    from: retentiond@pbx.example.com
    host: 127.0.0.1
    port: {smtp.port}
    security: starttls
    username: {USER}
    password_file: {secret}
    ca_file: {smtp.cert}
    timeout: 10
"""
    )
    path.chmod(0o640)
    return load_config(path)


def _berlin(*args: int) -> datetime:

    return datetime(*args, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)  # type: ignore[misc]


def _run_daily(
    loaded: LoadedConfig, clock: Clock, days: list[dt.date], first: tuple[int, int] = (3, 15)
) -> None:
    """Real runs of the rule on the injected clock: the first at `first`, then daily at 03:15."""
    rule = loaded.config.rules[0]
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        for n, day in enumerate(days):
            hour, minute = first if n == 0 else (3, 15)
            clock.now = _berlin(day.year, day.month, day.day, hour, minute)
            Engine(loaded, now=clock).run(rule, log)


def _log_entries(loaded: LoadedConfig) -> list[audit.Entry]:
    return list(audit.read_entries(loaded.config.audit.path))


def _text(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _october(loaded: LoadedConfig, clock: Clock) -> None:
    """A log that begins at the first instant of October (so September is no period of its)
    and a verified run every day until November 2."""
    start = dt.date(2026, 10, 1)
    _run_daily(loaded, clock, [start + timedelta(days=n) for n in range(33)], first=(0, 0))


# --- the tests ---------------------------------------------------------------------------------


def test_a_finished_month_arrives_once_by_mail_and_in_the_folder(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    loaded = _config(tmp_path, smtp)
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        duty = ReportDuty.from_log(loaded, log)
        clock.now = _berlin(2026, 11, 1, 5, 59)
        duty.tick(clock.now)
        assert smtp.inbox.mails == [], "not before 06:00 on the 1st"
        clock.now = _berlin(2026, 11, 1, 6, 0)
        duty.tick(clock.now)
        duty.tick(clock.now + timedelta(hours=3))  # a second look sends nothing again
    [mail] = smtp.inbox.mails
    assert smtp.inbox.logins == [USER]
    assert smtp.inbox.envelopes == [("retentiond@pbx.example.com", RECIPIENTS)]
    assert mail["Subject"] == "Deletion report 2026-10: every retention period was kept"
    body = _text(mail)
    assert "for 2026-10-01 to 2026-10-31" in body
    assert "- call-recordings: every retention period was kept" in body
    [attachment] = list(mail.iter_attachments())
    content = attachment.get_content()
    assert attachment.get_filename() == "retentiond-report-2026-10.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert content.startswith(b"%PDF")

    entries = _log_entries(loaded)
    [sent] = [e for e in entries if e.type == REPORT_SENT]
    assert sent.fields["period"] == "2026-10"
    assert sent.fields["recipients"] == 2
    assert sent.fields["formats"] == ["pdf"]
    # The chain head the mail names is the log's as the report saw it
    head = f"entry {sent.fields['chain_head_seq']}, SHA-256 {sent.fields['chain_head_hash']}"
    assert head in body
    assert [e.hash for e in entries if e.seq == sent.fields["chain_head_seq"]] == [
        sent.fields["chain_head_hash"]
    ]
    # The report's SHA-256 is the attachment's, and the folder holds the same file
    assert sent.fields["sha256"] == hashlib.sha256(content).hexdigest()
    assert (tmp_path / "reports" / "retentiond-report-2026-10.pdf").read_bytes() == content
    # No address anywhere in the log
    text = loaded.config.audit.path.read_text()
    assert not any(address in text for address in RECIPIENTS)
    assert "example.com" not in json.dumps(sent.fields)


def test_the_mail_speaks_german_when_configured(tmp_path: Path, smtp: SmtpServer) -> None:
    loaded = _config(tmp_path, smtp, language="de")
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        ReportDuty.from_log(loaded, log).tick(_berlin(2026, 11, 2, 9, 0))
    [mail] = smtp.inbox.mails
    assert mail["Subject"] == "Löschbericht 2026-10: alle Aufbewahrungsfristen eingehalten"
    body = _text(mail)
    assert (
        "Dies ist der Löschbericht von retentiond für den Zeitraum vom 01.10.2026 bis 31.10.2026."
        in body
    )
    assert "Kopf der Hash-Kette des Löschprotokolls: Eintrag" in body
    assert "Das Löschprotokoll ist unversehrt." in body


def test_catch_up_after_downtime_sends_each_missed_month_once(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    loaded = _config(tmp_path, smtp)
    clock = Clock(_berlin(2026, 8, 28, 3, 15))
    start = dt.date(2026, 8, 28)
    _run_daily(loaded, clock, [start + timedelta(days=n) for n in range(66)])  # to Nov 1
    # The daemon was down from November 2 until December 3: October and November were due
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        clock.now = _berlin(2026, 12, 3, 10, 0)
        ReportDuty.from_log(loaded, log).tick(clock.now)
    # ... and a restart reads the log: nothing goes out twice
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        clock.now = _berlin(2026, 12, 3, 11, 0)
        ReportDuty.from_log(loaded, log).tick(clock.now)
    subjects = [mail["Subject"] for mail in smtp.inbox.mails]
    # August was only partly seen by the log, so it is reported; July was before the log began
    assert [s.split(":")[0] for s in subjects] == [
        "Deletion report 2026-08",
        "Deletion report 2026-09",
        "Deletion report 2026-10",
        "Deletion report 2026-11",
    ]
    periods = [e.fields["period"] for e in _log_entries(loaded) if e.type == REPORT_SENT]
    assert periods == ["2026-08", "2026-09", "2026-10", "2026-11"]


def test_a_server_that_is_down_is_retried_with_backoff_and_shown(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    loaded = _config(tmp_path, smtp)
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    smtp.stop()
    metrics = Metrics(["call-recordings"])
    due = _berlin(2026, 11, 1, 6, 0)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        duty = ReportDuty.from_log(loaded, log, on_result=metrics.report_result)
        clock.now = due
        duty.tick(clock.now)
        assert duty.attempts["2026-10"].count == 1
        assert duty.next_wake(clock.now) == due + timedelta(minutes=1)
        clock.now = due + timedelta(seconds=30)
        duty.tick(clock.now)  # still waiting for its retry: no second attempt
        assert duty.attempts["2026-10"].count == 1
        clock.now = due + timedelta(minutes=1)
        duty.tick(clock.now)
        assert duty.next_wake(clock.now) == clock.now + timedelta(minutes=5)

        failed = [e for e in _log_entries(loaded) if e.type == REPORT_FAILED]
        assert [e.fields["attempt"] for e in failed] == [1, 2]
        assert failed[0].fields["error"].startswith("cannot reach the SMTP server 127.0.0.1:")
        state = read_report_history(_log_entries(loaded))
        assert state.failures == {"2026-10": 2}
        exposition = generate_latest(metrics.registry).decode()
        assert "retentiond_report_failures 1.0" in exposition
        shown = status_text(compute(loaded, now=clock.now))
        assert "FAILING: 2026-10 (2 failed attempts), last: cannot reach the SMTP" in shown

        smtp.start()
        clock.now = due + timedelta(minutes=6)
        duty.tick(clock.now)
    assert len(smtp.inbox.mails) == 1
    state = read_report_history(_log_entries(loaded))
    assert state.failures == {}
    assert state.last_period == "2026-10"
    shown = status_text(compute(loaded, now=clock.now))
    assert "reports: last sent 2026-10 at 2026-11-01 06:06" in shown
    assert "FAILING" not in shown
    exposition = generate_latest(metrics.registry).decode()
    assert "retentiond_report_failures 0.0" in exposition
    [success] = [
        float(line.split()[1])
        for line in exposition.splitlines()
        if line.startswith("retentiond_report_last_success_timestamp ")
    ]
    assert success == clock.now.timestamp()


def test_a_refused_login_is_told_by_its_code_only(tmp_path: Path, smtp: SmtpServer) -> None:
    loaded = _config(tmp_path, smtp)
    (tmp_path / "smtp.password").write_text("wrong\n")
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        duty = ReportDuty.from_log(loaded, log)
        duty.tick(_berlin(2026, 11, 1, 7, 0))
    [failed] = [e for e in _log_entries(loaded) if e.type == REPORT_FAILED]
    assert failed.fields["error"] == "the SMTP server refused the login (SMTP 535)"
    assert smtp.inbox.mails == []
    assert [e for e in _log_entries(loaded) if e.type == REPORT_SENT] == []
    assert read_report_history(_log_entries(loaded)).failures == {"2026-10": 1}


def test_report_send_delivers_now_through_the_same_code(tmp_path: Path, smtp: SmtpServer) -> None:
    loaded = _config(tmp_path, smtp, language="de")
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    runner = CliRunner()
    args = ["-c", str(loaded.path), "report", "--send", "--from", "2026-10-01", "--to"]
    result = runner.invoke(cli, [*args, "2026-10-31"])
    assert result.exit_code == 0, result.output
    assert "report 2026-10 mailed to 2 recipient(s) and written to" in result.output
    [mail] = smtp.inbox.mails
    assert mail["Subject"].startswith("Löschbericht 2026-10: ")
    [sent] = [e for e in _log_entries(loaded) if e.type == REPORT_SENT]
    assert (sent.fields["period"], sent.fields["recipients"]) == ("2026-10", 2)
    # The daemon would not send October again: the log says it went out
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        ReportDuty.from_log(loaded, log).tick(_berlin(2026, 11, 1, 6, 0))
    assert len(smtp.inbox.mails) == 1


def test_reports_config_errors_name_their_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o644)
    text = f"""\
version: 1
rules:
  - name: a
    keep: 30d
    stores: [{{type: files, root: {tmp_path}, match: ["*.wav"]}}]
reports:
  period: weekly
  at: "25:00"
  mail:
    to: [dpo@example.com, "Data Protection <dpo@example.com>"]
    from: r@example.com
    host: smtp.example.com
    username: u
    password_file: {secret}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    shown = [str(problem) for problem in caught.value.problems]
    assert any(line.startswith("c.yaml:7: reports.period") for line in shown), shown
    assert any(line.startswith("c.yaml:8: reports.at") for line in shown), shown
    assert any(line.startswith("c.yaml:10: reports.mail.to.1") for line in shown), shown
    text = text.replace("weekly", "monthly").replace('"25:00"', '"06:00"')
    text = text.replace(', "Data Protection <dpo@example.com>"', "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    [problem] = caught.value.problems
    assert str(problem).startswith("c.yaml:14: reports.mail.password_file: the SMTP password")


def test_the_daemon_catches_up_at_start_and_sends_each_period_once(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """The real `retentiond run` on the real clock: a log that began about 70 days ago, and a
    daemon that was down since; every finished month the log saw goes out at start, once, and
    a restart sends nothing again. `at: 00:00` so the last month is due whatever today is."""

    loaded = _config(tmp_path, smtp)
    text = loaded.path.read_text().replace('at: "06:00"', 'at: "00:00"')
    loaded.path.write_text(text)
    loaded = load_config(loaded.path)
    began = datetime.now(UTC) - timedelta(days=70)
    clock = Clock(began)
    _run_daily(loaded, clock, [began.date() + timedelta(days=n) for n in range(0, 60, 7)])
    assert loaded.config.reports is not None
    last = period_key(last_finished(datetime.now(UTC), loaded.config, "monthly"), "monthly")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}

    def sent() -> list[str]:
        return [str(e.fields["period"]) for e in _log_entries(loaded) if e.type == REPORT_SENT]

    def daemon(log_file: Path) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "retentiond", "-c", str(loaded.path), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    def wait_for(condition: Any, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)

    process = daemon(tmp_path / "daemon.log")
    try:
        wait_for(lambda: last in sent())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    first = sent()
    assert first[-1] == last and len(first) == len(set(first)) in (2, 3)
    assert len(smtp.inbox.mails) == len(first)
    assert [m["Subject"].split(":")[0] for m in smtp.inbox.mails] == [
        f"Deletion report {key}" for key in first
    ]

    process = daemon(tmp_path / "daemon.log")
    try:
        wait_for(
            lambda: (
                "daemon started"
                in (tmp_path / "daemon.log").read_text().split("daemon stopped")[-1]
            )
        )
        time.sleep(2)  # the duty looks at once at start
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert sent() == first
    assert len(smtp.inbox.mails) == len(first)


def test_without_weasyprint_the_mail_carries_html_and_says_so(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """A host without WeasyPrint: a `weasyprint` that cannot be imported comes first on the
    path of a real `retentiond report --send` process, as on a host where it is missing."""

    loaded = _config(tmp_path, smtp)
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    shadow = tmp_path / "no-weasyprint"
    shadow.mkdir()
    (shadow / "weasyprint.py").write_text("raise ImportError('No module named weasyprint')\n")
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    env["PYTHONPATH"] = str(shadow)
    period = ["--from", "2026-10-01", "--to", "2026-10-31"]
    result = subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(loaded.path), "report", "--send", *period],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "(HTML: no PDF can be made here)" in result.stdout
    [mail] = smtp.inbox.mails
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == "retentiond-report-2026-10.html"
    assert attachment.get_content_type() == "text/html"
    assert "A PDF could not be made on this system" in _text(mail)
    [sent] = [e for e in _log_entries(loaded) if e.type == REPORT_SENT]
    assert sent.fields["formats"] == ["html"] and sent.fields["pdf_missing"] is True


def test_pings_tell_monitoring_of_a_failed_and_then_a_delivered_report(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from retentiond.service.pings import Pings

    received: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append((self.path, self.rfile.read(length).decode()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    monitor = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=monitor.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{monitor.server_address[1]}/reports"
    loaded = _config(tmp_path, smtp)
    loaded.path.write_text(loaded.path.read_text() + f"  ping: {base}\n")
    loaded = load_config(loaded.path)
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    smtp.stop()
    pings = Pings()
    try:
        with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
            duty = ReportDuty.from_log(loaded, log, observers=[pings])
            clock.now = _berlin(2026, 11, 1, 6, 0)
            duty.tick(clock.now)
            smtp.start()
            clock.now += timedelta(minutes=1)
            duty.tick(clock.now)
        assert pings.close(10)
    finally:
        monitor.shutdown()
        monitor.server_close()
    assert [path for path, _ in received] == ["/reports/fail", "/reports"]
    assert received[0][1].startswith("report 2026-10: failed: cannot reach the SMTP server")
    assert received[1][1] == "report 2026-10: delivered"
    assert not any(address in body for _, body in received for address in RECIPIENTS)


def test_no_personal_data_of_the_demo_pbx_in_the_mail_or_its_attachments(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """The demo PBX (numbers, names, recording file names) after a real run: subject, body and
    every attachment carry none of its personal data, nor does the log entry an address."""
    import sqlite3

    from privacy import leaked

    from retentiond import demo

    now = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    config = demo.build(tmp_path / "demo", now=now)
    with sqlite3.connect(config.parent / "pbx" / "master.db") as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    personal = {str(v) for row in rows for v in row if v}
    personal |= {p.name for p in (config.parent / "pbx" / "monitor").rglob("*.wav")}
    secret = tmp_path / "smtp.password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    config.write_text(
        config.read_text()
        + f"""
reports:
  formats: [pdf, csv, json]
  mail:
    to: [{", ".join(RECIPIENTS)}]
    from: retentiond@pbx.example.com
    host: 127.0.0.1
    port: {smtp.port}
    username: {USER}
    password_file: {secret}
    ca_file: {smtp.cert}
"""
    )
    loaded = load_config(config)
    clock = Clock(now)
    with audit.AuditLog(audit.log_path(loaded.config), clock=clock) as log:
        for rule in loaded.config.rules:
            Engine(loaded, now=clock).run(rule, log)
        clock.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        ReportDuty.from_log(loaded, log).tick(clock.now)
    [mail] = smtp.inbox.mails
    attachments = {a.get_filename(): a.get_content() for a in mail.iter_attachments()}
    assert sorted(attachments) == [
        "retentiond-report-2026-11.csv",
        "retentiond-report-2026-11.json",
        "retentiond-report-2026-11.pdf",
    ]
    deleted = re.search(r"Deleted in the period: (\d{1,3}(,\d{3})*) objects", _text(mail))
    assert deleted is not None  # the run deleted the demo's old data, counted as English writes
    assert int(deleted.group(1).replace(",", "")) > 1000
    texts = [str(mail["Subject"]), _text(mail), attachments["retentiond-report-2026-11.csv"]]
    found = leaked(personal, texts=texts, documents=[attachments["retentiond-report-2026-11.json"]])
    assert found == []
    log_text = audit.log_path(loaded.config).read_text()
    assert not any(address in log_text for address in RECIPIENTS)


def test_a_mail_server_that_never_answers_holds_up_neither_runs_nor_the_stop(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """A server that accepts the connection and then says nothing: the daemon's rule still
    runs, SIGTERM still stops it at once, and the cut attempt is not recorded as failed (the
    next start tries again)."""
    loaded = _config(tmp_path, smtp)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    text = loaded.path.read_text().replace(f"port: {smtp.port}", f"port: {port}")
    loaded.path.write_text(
        text.replace('at: "06:00"', 'at: "00:00"').replace("timeout: 10", "timeout: 120")
    )
    loaded = load_config(loaded.path)
    began = datetime.now(UTC) - timedelta(days=70)
    clock = Clock(began)
    _run_daily(loaded, clock, [began.date() + timedelta(days=n) for n in range(0, 60, 7)])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    log_file = tmp_path / "daemon.log"
    try:
        with log_file.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "retentiond", "-c", str(loaded.path), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        try:
            deadline = time.monotonic() + 60
            # The catch-up run of the rule ends although the report's attempt hangs
            while not any(
                e.type == "run_finished" and _instant(e.ts) > began + timedelta(days=69)
                for e in _log_entries(loaded)
            ):
                assert time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.1)
            silent.settimeout(30)
            connection, _ = silent.accept()  # the attempt has connected, awaits the greeting
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            assert time.monotonic() - stopped < 10
            connection.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        silent.close()
    types = [e.type for e in _log_entries(loaded)]
    assert REPORT_SENT not in types and REPORT_FAILED not in types


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)

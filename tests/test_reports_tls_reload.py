"""The report mail over implicit TLS (`security: tls`, SMTPS) against a real aiosmtpd server:
delivered with a login, a refused login told by its code only, an untrusted certificate refused
before anything is sent; and a running daemon that is given a `reports:` section by a reload
delivers the finished period without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_reports_mail import (
    PASSWORD,
    USER,
    Clock,
    Inbox,
    SmtpServer,
    _berlin,
    _certificate,
    _config,
    _free_port,
    _log_entries,
    _october,
    _run_daily,
    _text,
    smtp,  # noqa: F401 - the STARTTLS server fixture
)

from retentiond.config.loader import load_config
from retentiond.evidence import log as audit
from retentiond.service.reports import (
    REPORT_FAILED,
    REPORT_SENT,
    ReportDuty,
    last_finished,
    period_key,
)

# aiosmtpd warns of AUTH without STARTTLS; here TLS starts with the connection
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def smtps(tmp_path: Path) -> Iterator[SmtpServer]:
    cert, key = _certificate(tmp_path)
    server = SmtpServer(_free_port(), cert, key, Inbox(), implicit_tls=True)
    server.start()
    yield server
    server.stop()


def _tls_config(tmp_path: Path, server: SmtpServer, trust: bool = True) -> Any:
    loaded = _config(tmp_path, server)
    text = loaded.path.read_text().replace("security: starttls", "security: tls")
    if not trust:
        text = text.replace(f"    ca_file: {server.cert}\n", "")
    loaded.path.write_text(text)
    return load_config(loaded.path)


def _deliver_october(
    tmp_path: Path, server: SmtpServer, trust: bool = True, password: str = PASSWORD
) -> Any:
    loaded = _tls_config(tmp_path, server, trust)
    (tmp_path / "smtp.password").write_text(password + "\n")
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        ReportDuty.from_log(loaded, log).tick(_berlin(2026, 11, 1, 7, 0))
    return loaded


def test_implicit_tls_delivers_with_a_login(tmp_path: Path, smtps: SmtpServer) -> None:
    loaded = _deliver_october(tmp_path, smtps)
    [mail] = smtps.inbox.mails
    assert smtps.inbox.logins == [USER]
    assert mail["Subject"] == "Deletion report 2026-10: every retention period was kept"
    assert "for 2026-10-01 to 2026-10-31" in _text(mail)
    [sent] = [e for e in _log_entries(loaded) if e.type == REPORT_SENT]
    assert sent.fields["period"] == "2026-10" and sent.fields["recipients"] == 2


def test_implicit_tls_refused_login_is_told_by_its_code_only(
    tmp_path: Path, smtps: SmtpServer
) -> None:
    loaded = _deliver_october(tmp_path, smtps, password="wrong")
    [failed] = [e for e in _log_entries(loaded) if e.type == REPORT_FAILED]
    assert failed.fields["error"] == "the SMTP server refused the login (SMTP 535)"
    assert smtps.inbox.mails == [] and smtps.inbox.logins == []
    assert [e for e in _log_entries(loaded) if e.type == REPORT_SENT] == []


def test_implicit_tls_with_an_untrusted_certificate_sends_nothing(
    tmp_path: Path, smtps: SmtpServer
) -> None:
    """Without ca_file the server's self-made certificate is not trusted: nothing is sent, not
    even the login, and the failure is fixed wording (no server or library text)."""
    loaded = _deliver_october(tmp_path, smtps, trust=False)
    [failed] = [e for e in _log_entries(loaded) if e.type == REPORT_FAILED]
    error = str(failed.fields["error"])
    assert "certificate" in error, error
    assert "127.0.0.1" not in error and "CERTIFICATE_VERIFY_FAILED" not in error
    assert smtps.inbox.mails == [] and smtps.inbox.logins == []


def test_a_reload_that_adds_reports_delivers_without_a_restart(
    tmp_path: Path,
    smtp: SmtpServer,  # noqa: F811 - the fixture imported above
) -> None:
    """The real `retentiond run` started without `reports:`; the section is added and SIGHUP
    sent: the last finished month the log saw goes out, once, recorded as report_sent."""
    loaded = _config(tmp_path, smtp)
    with_reports = loaded.path.read_text().replace('at: "06:00"', 'at: "00:00"')
    without = with_reports.split("reports:\n", 1)[0]
    loaded.path.write_text(without)
    loaded = load_config(loaded.path)
    began = datetime.now(UTC) - timedelta(days=70)
    _run_daily(loaded, Clock(began), [began.date() + timedelta(days=n) for n in range(0, 60, 7)])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    daemon_log = tmp_path / "daemon.log"

    def sent() -> list[str]:
        return [str(e.fields["period"]) for e in _log_entries(loaded) if e.type == REPORT_SENT]

    def wait_for(condition: Any, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, daemon_log.read_text()
            time.sleep(0.1)

    with daemon_log.open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(loaded.path), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        wait_for(lambda: "daemon started" in daemon_log.read_text())
        time.sleep(1)
        assert sent() == [] and smtp.inbox.mails == []
        loaded.path.write_text(with_reports)
        process.send_signal(signal.SIGHUP)
        reloaded = load_config(loaded.path)
        assert reloaded.config.reports is not None
        now = datetime.now(UTC)
        last = period_key(last_finished(now, reloaded.config, "monthly"), "monthly")
        wait_for(lambda: last in sent())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    periods = sent()
    assert periods[-1] == last and len(periods) == len(set(periods))
    assert [m["Subject"].split(":")[0] for m in smtp.inbox.mails] == [
        f"Deletion report {key}" for key in periods
    ]
    assert any(e.type == "config_reloaded" for e in _log_entries(loaded))

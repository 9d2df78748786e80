"""The report mail in the DPO's language, end to end: the settings that choose it
(organisation.language, reports.language, `report --send --language`), and a German mail, as the
real SMTP server of test_reports_mail received it, with no English left in it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from click.testing import CliRunner
from test_reports_mail import (
    Clock,
    Inbox,
    SmtpServer,
    _berlin,
    _certificate,
    _config,
    _free_port,
    _october,
    _text,
)

import retentiond
from retentiond.cli.main import cli
from retentiond.config.init import render
from retentiond.config.loader import LoadedConfig, load_config, parse_config
from retentiond.config.model import reports_language
from retentiond.errors import ConfigError
from retentiond.evidence import log as audit
from retentiond.service.reports import ReportDuty

MAIL_PO = Path(retentiond.__file__).parent / "locale" / "de" / "LC_MESSAGES" / "mail.po"
PLACEHOLDER = re.compile(r"\{[a-z_]*\}")
EXPIRED, KEPT = 1234, 1300  # recordings the first run deletes, and those it keeps


def _configured(
    tmp_path: Path,
    server: SmtpServer,
    organisation: str | None,
    reports: str | None,
    expired: int = EXPIRED,
) -> LoadedConfig:
    """test_reports_mail's config, with the languages given (None: the key left out), the
    report attached as PDF and JSON, and recordings of which the first run deletes `expired`."""
    loaded = _config(tmp_path, server)
    text = loaded.path.read_text()
    text = text.replace("  language: en\n", f"  language: {reports}\n" if reports else "")
    text = text.replace("formats: [pdf]", "formats: [pdf, json]")
    if organisation is not None:
        text += f"organisation:\n  controller: Beispiel GmbH\n  language: {organisation}\n"
    loaded.path.write_text(text)
    recordings = tmp_path / "recordings"
    old = _berlin(2026, 8, 1, 12, 0).timestamp()
    young = _berlin(2026, 10, 15, 12, 0).timestamp()  # kept past the last run (November 2)
    for n in range(expired + KEPT):
        path = recordings / f"rec-{n:05d}.wav"
        path.write_bytes(b"RIFF")
        stamp = old if n < expired else young
        os.utime(path, (stamp, stamp))
    return load_config(loaded.path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SmtpServer]:
    """test_reports_mail's SMTP server (STARTTLS, AUTH) on loopback."""
    cert, key = _certificate(tmp_path)
    running = SmtpServer(_free_port(), cert, key, Inbox())
    running.start()
    yield running
    running.stop()


def _deliver_by_the_daemon(loaded: LoadedConfig, server: SmtpServer) -> EmailMessage:
    """October's runs, then the daemon's duty on November 2 (in its child process, as the
    daemon delivers)."""
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    with audit.AuditLog(loaded.config.audit.path, clock=clock) as log:
        ReportDuty.from_log(loaded, log).tick(_berlin(2026, 11, 2, 9, 0))
    [mail] = server.inbox.mails
    return mail


def _words(text: str) -> set[str]:
    return {word.lower() for word in re.findall(r"[^\W\d_]+", PLACEHOLDER.sub(" ", text))}


def _english_words() -> set[str]:
    """Every word of the mail area's English that its German does not use as well."""
    with MAIL_PO.open("rb") as stream:
        catalogue = read_po(stream)
    english: set[str] = set()
    german: set[str] = set()
    for message in catalogue:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        english |= {word for text in ids for word in _words(text)}
        german |= {word for text in strings if text for word in _words(text)}
    return english - german


def _english_left(mail: EmailMessage) -> set[str]:
    """The English words in the mail's subject and body; file names and the chain head's
    SHA-256 are no words."""
    text = re.sub(r"\b[0-9a-f]{64}\b", " ", f"{mail['Subject']}\n{_text(mail)}")
    for attachment in mail.iter_attachments():
        text = text.replace(str(attachment.get_filename()), " ")
    return _words(text) & _english_words()


def _report_language(mail: EmailMessage) -> str:
    [document] = [a for a in mail.iter_attachments() if a.get_content_type() == "application/json"]
    language = json.loads(document.get_content())["language"]
    assert isinstance(language, str)
    return language


def test_organisation_language_de_makes_the_mail_german_through_and_through(
    tmp_path: Path,
    server: SmtpServer,
) -> None:
    """No reports.language: the organisation's German. The daemon's own path (the duty's child
    process) builds the report and the mail in it."""
    loaded = _configured(tmp_path, server, organisation="de", reports=None)
    assert loaded.config.reports is not None and loaded.config.reports.language is None
    mail = _deliver_by_the_daemon(loaded, server)
    assert mail["Content-Language"] == "de"
    assert mail["Subject"] == "Löschbericht 2026-10: alle Aufbewahrungsfristen eingehalten"
    body = _text(mail)
    assert (
        "Dies ist der Löschbericht von retentiond für den Zeitraum vom 01.10.2026 bis 31.10.2026."
        in body
    )
    assert "2026-10-01" not in body and "2026-10-31" not in body
    assert "Bewertung: alle Aufbewahrungsfristen eingehalten." in body
    assert "- call-recordings: alle Aufbewahrungsfristen eingehalten" in body
    assert "Im Zeitraum gelöscht: 1.234 Objekte." in body  # German grouping and plural
    assert "Das Löschprotokoll ist unversehrt." in body
    assert "Kopf der Hash-Kette des Löschprotokolls: Eintrag " in body
    assert "Der Bericht ist angehängt (retentiond-report-2026-10.pdf, " in body
    assert "Prüfen Sie das Protokoll selbst mit `retentiond audit verify`" in body
    assert "Diese E-Mail wurde automatisch von retentiond versandt." in body
    assert _english_left(mail) == set()
    # The attached report is the German one
    assert _report_language(mail) == "de"
    [pdf] = [a for a in mail.iter_attachments() if a.get_content_type() == "application/pdf"]
    assert pdf.get_content().startswith(b"%PDF")


def test_reports_language_en_overrides_the_organisations_german(
    tmp_path: Path,
    server: SmtpServer,
) -> None:
    """reports.language: en beside organisation.language: de; and the check for English left
    in a mail finds this one's (so its silence on the German mail means something)."""
    loaded = _configured(tmp_path, server, organisation="de", reports="en", expired=1)
    assert reports_language(loaded.config) == "en"
    mail = _deliver_by_the_daemon(loaded, server)
    assert mail["Content-Language"] == "en"
    assert mail["Subject"] == "Deletion report 2026-10: every retention period was kept"
    body = _text(mail)
    assert "This is the deletion report of retentiond for 2026-10-01 to 2026-10-31." in body
    assert "Deleted in the period: 1 object." in body  # the singular
    assert _report_language(mail) == "en"
    left = _english_left(mail)
    assert {"deletion", "report", "every", "retention", "period", "kept", "object"} <= left
    assert {"Löschbericht", "Aufbewahrungsfristen"}.isdisjoint(_text(mail).split())


def test_report_send_language_de_overrides_an_english_config(
    tmp_path: Path,
    server: SmtpServer,
) -> None:
    """`retentiond report --send --language de` with no language in the config (English): the
    mail and the report in German, one object deleted (the German singular)."""
    loaded = _configured(tmp_path, server, organisation=None, reports=None, expired=1)
    assert reports_language(loaded.config) == "en"
    clock = Clock(_berlin(2026, 9, 28, 3, 15))
    _october(loaded, clock)
    period = ["--from", "2026-10-01", "--to", "2026-10-31"]
    args = ["-c", str(loaded.path), "report", "--send", *period, "--language", "de"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [mail] = server.inbox.mails
    assert mail["Content-Language"] == "de"
    assert mail["Subject"] == "Löschbericht 2026-10: alle Aufbewahrungsfristen eingehalten"
    assert "Im Zeitraum gelöscht: 1 Objekt." in _text(mail)
    assert _english_left(mail) == set()
    assert _report_language(mail) == "de"


def test_a_language_retentiond_does_not_write_is_refused_with_what_to_write(
    tmp_path: Path,
) -> None:
    text = f"""\
version: 1
rules:
  - name: a
    keep: 30d
    stores: [{{type: files, root: {tmp_path}, match: ["*.wav"]}}]
organisation:
  controller: Beispiel GmbH
  language: fr
reports:
  language: German
  folder: {tmp_path}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert [str(problem) for problem in caught.value.problems] == [
        "c.yaml:8: organisation.language: 'fr' is not a language retentiond writes; write en or de",
        "c.yaml:10: reports.language: 'German' is not a language retentiond writes; write en or de",
    ]
    result = CliRunner().invoke(cli, ["report", "--send", "--language", "fr"])
    assert result.exit_code == 2
    assert "Invalid value for '--language': 'fr' is not one of 'en', 'de'." in result.output


def test_init_shows_where_the_language_is_set() -> None:
    """The config init writes names both settings; uncommented as they stand, they load, and
    the report goes out in German."""
    text = render("asterisk", {}, {})
    assert "#   language: de  # en (default) | de" in text
    head, block = text.split("# organisation:", 1)
    shown = head + re.sub(r"(?m)^# ", "", "# organisation:" + block)
    assert "\norganisation:\n" in shown and "\nreports:" in shown
    config = parse_config(shown, "init.yaml")
    assert config.organisation is not None and config.organisation.language == "de"
    assert reports_language(config) == "de"


def test_the_check_for_english_knows_the_mails_words() -> None:
    """Not vacuous: the mail area's English words, less the German's, are many."""
    words = _english_words()
    assert {"deletion", "verdict", "intact", "attached", "automatically"} <= words
    assert "retentiond" not in words  # a name, the same in German

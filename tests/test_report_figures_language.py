"""The report's figures in the DPO's language: every text the Python of evidence/report makes
(verdicts and their notes, the build's notes, the summary's lines, rule rows, incidents, hold
events, residual findings, the kinds' method statements) is German in a German report, and what
stays the same in both languages is data (names, labels, hashes, paths) or an identifier
(statuses, units, levels), never English prose.

One log, written entry by entry with a fixed clock (test_report_holds' month of March: holds
added, changed and ended, forced and refused runs, erasures, a search), and a few more entries:
a failed run, an incomplete one, one that recorded no end. It is built twice, in English and
German; both trees of values are walked side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from ruamel.yaml import YAML
from test_report_holds import (
    BERLIN,
    CONFIG,
    HOLD_EXTENSION,
    HOLD_NUMBERS,
    Clock,
    Written,
    march,
)

from retentiond.config.loader import LoadedConfig, load_config
from retentiond.evidence import log as audit
from retentiond.evidence.report import build, render, residual, summary, wording
from retentiond.evidence.report.values import Catalogue, Finding, Period, Report
from retentiond.i18n import words

ROOT = Path(__file__).resolve().parent.parent
FIGURES_PO = ROOT / "retentiond" / "locale" / "de" / "LC_MESSAGES" / "figures.po"
GENERATED = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)
PERIOD = Period(date(2026, 3, 1), date(2026, 3, 31), BERLIN)
NOW = GENERATED.timestamp()
HOST = "pbx-test"
WORD = re.compile(r"[A-Za-zÄÖÜäöüß]{3,}")
# Identifiers the values keep in every language (CSS classes, the CSV's and JSON's values).
LEVELS = {"green", "amber", "red"}


def vocabulary(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def _catalogue_words() -> tuple[set[str], set[str]]:
    """The words of the figures area's English and of its German."""
    with FIGURES_PO.open("rb") as stream:
        catalog = read_po(stream, locale="de")
    english: set[str] = set()
    german: set[str] = set()
    for message in catalog:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for text in ids:
            english |= vocabulary(re.sub(r"\{[a-z_]*\}", " ", text))
        for text in strings:
            german |= vocabulary(re.sub(r"\{[a-z_]*\}", " ", text))
    return english, german


# --- one log, two reports -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Built:
    report: Report
    catalogue: Catalogue
    findings: list[Finding]


@dataclasses.dataclass(frozen=True)
class Both:
    en: Built
    de: Built
    data: set[str]  # the words of the fixture's data: its config, its log's values, its paths


def _more(w: Written) -> None:
    """A failed run, an incomplete one and one without an end, all of the recordings rule."""
    base = {"rule": "call-recordings", "keep": "30d", "config_sha256": "ab" * 32}
    store = {"store": f"{w.log.parent}/monitor", "kind": "files", "unit": "files", "total": 40}
    w.at("2026-03-06T03:00:00", "run_started", run_id="f1", cutoff="2026-02-04", **base)
    w.at("2026-03-06T03:00:01", "run_failed", run_id="f1", rule="call-recordings")
    w.at(
        "2026-03-07T03:00:00",
        "run_started",
        run_id="f2",
        cutoff="2026-02-05",
        stores=[store | {"expired": 12}],
        **base,
    )
    w.at("2026-03-07T03:00:01", "batch_intent", run_id="f2", store=store["store"], batch=1)
    w.at(
        "2026-03-07T03:00:02",
        "batch_done",
        run_id="f2",
        store=store["store"],
        batch=1,
        deleted=5,
        skipped={"symlink": 1, "unremovable": 2},
    )
    w.at(
        "2026-03-07T03:00:03",
        "run_finished",
        run_id="f2",
        rule="call-recordings",
        status="incomplete",
        stores=[{"store": store["store"], "deleted": 5, "remaining": 7}],
    )
    w.at("2026-03-08T03:00:00", "run_started", run_id="f3", cutoff="2026-02-06", **base)
    w.at("2026-03-08T03:00:01", "batch_intent", run_id="f3", store=store["store"], batch=1)


def _findings(folder: Path, language: str) -> list[Finding]:
    sqlite3.connect(folder / "master.db").close()  # the connection's database, no transient_cdr
    backups = folder / "backups"
    backups.mkdir(exist_ok=True)
    old = backups / "set-1.tar"
    old.write_bytes(b"x")
    os.utime(old, (NOW - 200 * 86400, NOW - 200 * 86400))
    (folder / "voicemail.conf").write_text(
        "[general]\nattach=yes\n[default]\n1001 => 1234,A Name,a@example.org,,delete=yes\n"
    )
    return residual.detect(
        load_config(folder / "retentiond.yaml").config,
        backup_folders={"FreePBX backups": backups, "3CX backups": folder / "threecx"},
        voicemail_conf=folder / "voicemail.conf",
        asterisk_conf=folder / "asterisk.conf",
        now=NOW,
        language=language,  # type: ignore[arg-type]
    )


def _built(loaded: LoadedConfig, log: Path, language: str, folder: Path) -> Built:
    findings = _findings(folder, language)
    report = build.build_report(
        loaded,
        [log],
        PERIOD,
        residual=findings,
        residual_host=HOST,
        generated_at=GENERATED,
        language=language,  # type: ignore[arg-type]
    )
    catalogue = build.catalogue(loaded, GENERATED, language)  # type: ignore[arg-type]
    return Built(report, catalogue, findings)


def _data_words(folder: Path, log: Path) -> set[str]:
    """The words of what the fixture wrote: the config, every value of the log's entries (the
    reasons the engine recorded are the log's, not the report's), the folder's path."""
    config = YAML(typ="safe").load((folder / "retentiond.yaml").read_text())
    found = vocabulary(" ".join(_strings(config))) | vocabulary(HOST)
    found |= vocabulary(" ".join(str(path) for path in folder.rglob("*"))) | {"threecx"}
    for entry in audit.read_entries(log):
        found |= vocabulary(" ".join(_strings(entry.fields)))
    return found


def _strings(value: Any) -> Iterator[str]:
    """The texts among the values (not the keys: field names are no data the report shows)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    folder = tmp_path_factory.mktemp("figures")
    config_file = folder / "retentiond.yaml"
    config_file.write_text(
        CONFIG.format(
            audit=folder / "audit.jsonl",
            folder=folder,
            numbers=json.dumps(HOLD_NUMBERS),
            extension=HOLD_EXTENSION,
        )
    )
    clock = Clock()
    loaded = load_config(config_file)
    with audit.AuditLog(folder / "audit.jsonl", clock=clock) as writer:
        w = Written(loaded, folder / "audit.jsonl", clock, writer)
        _more(w)
        march(w)
    log = folder / "audit.jsonl"
    yield Both(
        _built(loaded, log, "en", folder),
        _built(loaded, log, "de", folder),
        _data_words(folder, log),
    )


# --- walking the trees ----------------------------------------------------------------------------


def pairs(en: Any, de: Any, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, English, German) for every text of two trees of values built alike."""
    if isinstance(en, str):
        assert isinstance(de, str), where
        yield where, en, de
    elif dataclasses.is_dataclass(en) and not isinstance(en, type):
        assert type(de) is type(en), where
        for field in dataclasses.fields(en):
            yield from pairs(
                getattr(en, field.name), getattr(de, field.name), f"{where}.{field.name}"
            )
    elif isinstance(en, list | tuple):
        assert isinstance(de, list | tuple) and len(de) == len(en), where
        for i, (a, b) in enumerate(zip(en, de, strict=True)):
            yield from pairs(a, b, f"{where}[{i}]")
    elif isinstance(en, dict):
        assert isinstance(de, dict) and len(de) == len(en), where
        for i, ((ka, va), (kb, vb)) in enumerate(zip(en.items(), de.items(), strict=True)):
            yield from pairs(ka, kb, f"{where}{{key {i}}}")
            yield from pairs(va, vb, f"{where}[{ka!r}]")


def trees(built: Built) -> dict[str, Any]:
    report = built.report
    page = summary.summary(report)
    return {
        "report": report,
        "catalogue": built.catalogue,
        "summary": page,
        "verdict cells": [
            summary.verdict_cell(row, n) for row in report.compliance for n in (1, 2)
        ],
        "log states": [line.state for line in page.logs],
    }


def english_left(
    texts: Iterator[tuple[str, str]], data: set[str]
) -> list[tuple[str, str, set[str]]]:
    """Each text with a word of the figures' English that is neither German nor the fixture's
    data: prose the translation missed. An identifier (a LABELS key, a level) is not prose."""
    english, german = _catalogue_words()
    forbidden = english - german - data
    found = []
    for where, text in texts:
        if text in wording.LABELS or text in LEVELS or text.startswith("retentiond audit "):
            continue  # an identifier, or a command shown as code
        left = vocabulary(text) & forbidden
        if left:
            found.append((where, text, left))
    return found


# --- the tests ------------------------------------------------------------------------------------


def test_no_english_prose_in_the_german_figures(both: Both) -> None:
    """Every text of the German report is German prose, data or an identifier; and what is the
    same in both languages carries no word of the figures' English."""
    texts = list(pairs(trees(both.en), trees(both.de)))
    assert len(texts) > 300
    translated = [(w, en, de) for w, en, de in texts if en != de]
    assert len(translated) > 50  # the check has something to check
    assert english_left(((w, de) for w, _, de in texts), both.data) == []


def test_the_check_finds_english_left_in_a_german_report(both: Both) -> None:
    """Not vacuous: the English report, put through the same check, is flagged where its prose
    is: verdicts, their notes, the build's notes, incidents, findings, the method statements."""
    texts = [(w, en) for w, en, _ in pairs(trees(both.en), trees(both.de))]
    flagged = {where for where, _, _ in english_left(iter(texts), both.data)}
    for part in (
        ".compliance[0].verdict",
        ".compliance[0].note",
        ".notes[0]",
        ".incidents[0].reason",
        ".residual[1].detail",
        ".methods[0].statement",
        ".rules[0].schedule",  # call-recordings, which has none
    ):
        assert any(part in where for where in flagged), (part, sorted(flagged))


def test_key_german_wording(both: Both) -> None:
    """The verdicts, their notes with German dates and numbers, the build's notes, incidents,
    findings and method statements read as a German DPO expects them."""
    en, de = both.en.report, both.de.report
    verdicts = {c.rule: (c.verdict, c.level, c.note) for c in de.compliance}
    verdict, level, note = verdicts["call-records"]
    assert (verdict, level) == ("Löschfrist überschritten", "red")  # the level stays an identifier
    assert note == (
        "8,0 Tage über den zulässigen Abstand hinaus kein geprüfter Lauf "
        "(14.03.2026 03:16 CET bis 22.03.2026 03:16 CET)"
    )
    english = {c.rule: (c.verdict, c.note) for c in en.compliance}["call-records"]
    assert english == (
        "deadline exceeded",
        "no verified run for 8.0 days beyond the allowed interval "
        "(2026-03-14 03:16 CET to 2026-03-22 03:16 CET)",
    )
    assert verdicts["call-recordings"][:2] == ("kein geprüfter Lauf", "red")
    assert de.notes == [
        "Die Sperrung LIT-2 war am 20.03.2026 zur Überprüfung fällig: Sie bleibt in Kraft, bis sie "
        "überprüft wird (review_by verlängern oder mit until: beenden)."
    ]
    cells = {summary.verdict_cell(row, 2) for row in de.compliance}
    assert cells == {"✗ überschritten", "✗ kein geprüfter Lauf"}
    assert {line.state for line in summary.summary(de).logs} == {"unversehrt"}
    reasons = {(i.kind, i.reason) for i in de.incidents}
    assert ("incomplete", "7 abgelaufene Objekte blieben nach dem Lauf übrig") in reasons
    assert ("failed", "kein Grund protokolliert") in reasons
    assert {e.detail for e in de.holds.history} >= {
        "hinzugefügt",
        "geändert: review_by, until",
        "beendet: ihr Enddatum ist verstrichen",
    }
    assert [m.title for m in de.methods] == [
        "SQL-Tabelle",
        "Ordner mit Dateien",
        "CSV-Verbindungsdaten",
    ]
    assert de.methods[0].statement.startswith("SQL-DELETE in Stapeln")
    rule = {r.name: r for r in de.rules}["call-records"]
    assert rule.stages == "anonymisieren (Frist 3 Monate), löschen (Frist 1 Jahr)"
    assert rule.start_event == "Zeitpunkt des Objekts"
    assert rule.deadline == "3 Monate + 1 Tag + 1 Tag"
    anonymization = de.anonymization[0]
    assert anonymization.wording == "pseudonymisiert (kleinste Gruppe 3 < 5)"
    assert not anonymization.anonymous
    assert {f.transform for s in anonymization.stores for f in s.fields} >= {
        "letzte 4 Ziffern durch x ersetzt",
        "Zeit auf den Tag gekürzt",
        "in Klassen eingeteilt: 0, 60, 300",
    }
    details = {f.check: f.detail for f in de.residual}
    assert details["3CX backups folder"] == "nicht gefunden"
    assert details["FreePBX backups folder"].startswith("1 Datei; die neueste 200 Tage alt")
    # identifiers stay as they are in the values, for CSS, CSV and JSON
    assert [f.state for f in de.residual] == [f.state for f in en.residual]
    assert [i.kind for i in de.incidents] == [i.kind for i in en.incidents]
    assert [r.unit for r in de.totals] == [r.unit for r in en.totals]


@pytest.mark.parametrize(
    ("identifier", "german"),
    [
        ("done", "abgeschlossen"),
        ("failed", "fehlgeschlagen"),
        ("refused", "abgelehnt"),
        ("no end recorded", "kein Ende protokolliert"),
        ("rows", "Datensätze"),
        ("files", "Dateien"),
        ("symlink", "symbolischer Link"),
        ("added", "hinzugefügt"),
        ("not checked", "nicht geprüft"),
        ("sql", "SQL-Tabelle"),
        ("asterisk_voicemail", "Asterisk-Sprachnachrichten"),
        ("unsafe_path", "unsicherer Pfad"),
        ("torn_tail", "unvollständige letzte Zeile"),
        ("intact", "unversehrt"),
    ],
)
def test_labels_name_identifiers_in_the_language(identifier: str, german: str) -> None:
    assert wording.label(words("de"), identifier) == german
    english = wording.label(words("en"), identifier)
    assert english == wording.LABELS[identifier]
    assert wording.label(words("de"), "no-such-identifier") == "no-such-identifier"


def test_every_label_has_its_german() -> None:
    """Each LABELS value is in the catalogue (marked where it is defined) and translated; in
    English a label is its identifier, as the report has always printed it."""
    assert all(wording.label(words("en"), key) == key for key in wording.LABELS)
    german = words("de")
    untranslated = [k for k, v in wording.LABELS.items() if german.gettext(v) == v]
    assert untranslated == []


def test_the_german_figures_reach_every_form(both: Both) -> None:
    """The forms print the values as they are: the German verdict in the page, CSV and JSON,
    while the JSON keeps the identifiers (level, status) as they are in English."""
    report = both.de.report
    page, table, data = render.html(report), render.csv_text(report), render.json_text(report)
    for text in (page, table, data):
        assert "Löschfrist überschritten" in text
    for text in (page, data):  # the CSV has no notes
        assert "Die Sperrung LIT-2 war am 20.03.2026 zur Überprüfung fällig" in text
    compliance = json.loads(data)["compliance"]
    assert {row["level"] for row in compliance} == {"red"}

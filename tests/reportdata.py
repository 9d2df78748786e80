"""The reports' test data, made once per session (tests/conftest.py) for the report tests that
share it: the demo PBX enforced once at a fixed time, and a month of daily runs of 30 rules with
long names over three systems, its config in English and as a German organisation writes it.

The logs are the slow part (three signed logs of 11 000 entries each); the reports built from
them are values the tests only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.config.model import document_language
from retentiond.engine.engine import Engine
from retentiond.evidence import log as audit
from retentiond.evidence.report import build
from retentiond.evidence.report.values import Period, Report

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
SITES = ["pbx-hamburg-headquarters", "pbx-munich-branch-office", "pbx-leipzig-contact-centre"]
RULES = 30
# The demo's report: four weeks up to NOW
DEMO_PERIOD = Period(date(2026, 5, 18), date(2026, 6, 15), BERLIN)
DEMO_GENERATED = NOW + timedelta(hours=1)
# The 30 rules' report: the month of the logs
MONTH = Period(date(2026, 5, 1), date(2026, 5, 31), BERLIN)
MONTH_GENERATED = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)


def rule_name(index: int) -> str:
    return f"customer-service-hotline-call-recordings-department-{index:02d}-archive"


def config_text(folder: Path) -> str:
    rules = "".join(
        f"""\
  - name: {rule_name(i)}
    description: Recorded calls of the customer service hotline, department {i:02d}, with the
      caller's consent; kept for quality assurance and training of new staff
    purpose: Quality assurance and training of the customer service staff of department {i:02d}
    legal_basis: Art. 6(1)(a) GDPR, consent given at the start of each call, works agreement
    keep: {30 + i} days
    schedule: daily 03:{i:02d}
    stores:
      - type: files
        root: {folder}/recordings/department-{i:02d}/long-folder-name-for-the-archive-of-calls
"""
        for i in range(RULES)
    )
    return f"""\
version: 1
timezone: Europe/Berlin
audit:
  path: {folder}/audit.jsonl
organisation:
  controller: Beispiel Kundenservice GmbH & Co. KG, Musterstraße 1, 10115 Berlin
  dpo_contact: Datenschutzbeauftragter der Beispiel Kundenservice GmbH
  processing_record: VVT-07 Telefonie und Gesprächsaufzeichnung
rules:
{rules}holds:
  - id: LITIGATION-2026-0042-LABOUR-COURT
    reason: Labour court proceedings 2026-0042
    approved_by: Data protection officer
    review_by: 2026-09-30
    until: 2026-12-31
    rules: [{rule_name(3)}]
"""


# What a German organisation writes instead (organisation.language: de makes the report German)
GERMAN = {
    "Recorded calls of the customer service hotline, department ": (
        "Aufgezeichnete Gespräche der Kundenservice-Hotline, Abteilung "
    ),
    ", with the\n      caller's consent; kept for quality assurance and training of new staff": (
        ", mit Einwilligung\n      der Anrufer; aufbewahrt zur Qualitätssicherung und Schulung"
    ),
    "Quality assurance and training of the customer service staff of department ": (
        "Qualitätssicherung und Schulung der Beschäftigten im Kundenservice, Abteilung "
    ),
    "Art. 6(1)(a) GDPR, consent given at the start of each call, works agreement": (
        "Art. 6 Abs. 1 lit. a DSGVO, Einwilligung zu Beginn jedes Gesprächs, Betriebsvereinbarung"
    ),
    "long-folder-name-for-the-archive-of-calls": "langer-ordnername-des-gespraechsarchivs",
    "reason: Labour court proceedings 2026-0042": "reason: Arbeitsgerichtsverfahren 2026-0042",
    "approved_by: Data protection officer": "approved_by: Datenschutzbeauftragte",
    "  processing_record: VVT-07 Telefonie und Gesprächsaufzeichnung\n": (
        "  processing_record: VVT-07 Telefonie und Gesprächsaufzeichnung\n  language: de\n"
    ),
}


def german_config_text(folder: Path) -> str:
    text = config_text(folder)
    for english, german in GERMAN.items():
        assert english in text, english  # config_text changed: follow it here
        text = text.replace(english, german)
    return text


def write_log(path: Path, site: str, signer: audit.Signer, broken_rule: int | None) -> None:
    """A month of daily runs of every rule on one PBX; `broken_rule` stops running mid-month."""
    now = [datetime(2026, 5, 1, 1, 0, tzinfo=UTC)]
    with audit.AuditLog(path, clock=lambda: now[0]) as log:
        for day in range(31):
            for i in range(RULES):
                if broken_rule == i and day > 10:
                    continue
                now[0] = datetime(2026, 5, 1, 1, i, tzinfo=UTC) + timedelta(days=day)
                name, run_id = rule_name(i), f"{site}-{day}-{i}"
                store = f"/srv/recordings/department-{i:02d}/long-folder-name-for-the-archive"
                log.append(
                    "run_started",
                    run_id=run_id,
                    rule=name,
                    keep=f"{30 + i} days",
                    cutoff=(now[0] - timedelta(days=30 + i)).isoformat(),
                    host=site,
                    config_sha256="cd" * 32,
                    stores=[
                        {"store": store, "kind": "files", "unit": "files"}
                        | {"total": 5000, "expired": 1000 + i}
                    ],
                )
                log.append("batch_intent", run_id=run_id, store=store, batch=1, planned=1000 + i)
                log.append("batch_done", run_id=run_id, store=store, batch=1, deleted=1000 + i)
                log.append(
                    "run_finished",
                    run_id=run_id,
                    rule=name,
                    status="done",
                    deleted=1000 + i,
                    stores=[{"store": store, "deleted": 1000 + i, "batches": 1, "remaining": 0}],
                )
        log.checkpoint(signer)


@dataclass(frozen=True)
class Month:
    """The 30 rules' logs, one per site (the third's rule 7 stops after day 10), signed with
    `private`; a config in each language's way of writing it, and its report."""

    folder: Path
    private: Path
    public: Path
    logs: list[Path]
    loaded: dict[str, LoadedConfig]
    reports: dict[str, Report]


def month(folder: Path) -> Month:
    private, public, _ = audit.generate_key_pair(folder / "keys")
    signer = audit.Signer.from_file(private)
    logs = []
    for number, site in enumerate(SITES):
        path = folder / site / "audit.jsonl"
        path.parent.mkdir()
        write_log(path, site, signer, broken_rule=7 if number == 2 else None)
        logs.append(path)
    loaded, reports = {}, {}
    for language, text in (("en", config_text(folder)), ("de", german_config_text(folder))):
        config_file = folder / f"retentiond.{language}.yaml"
        config_file.write_text(text)
        loaded[language] = load_config(config_file)
        reports[language] = build.build_report(
            loaded[language],
            logs,
            MONTH,
            generated_at=MONTH_GENERATED,
            language=document_language(loaded[language].config),
        )
        assert reports[language].language == language
    return Month(folder, private, public, logs, loaded, reports)


@dataclass(frozen=True)
class Demo:
    """The demo PBX, signed and with its legal hold, enforced once at NOW; its report in each
    language."""

    loaded: LoadedConfig
    reports: dict[str, Report]


def enforced_demo(folder: Path) -> Demo:
    private, _, _ = audit.generate_key_pair(folder / "keys")
    config_file = demo.build(folder / "pbx", now=NOW, days=180, hold=True)
    text = config_file.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
    config_file.write_text(text)
    loaded = load_config(config_file)
    engine = Engine(loaded, now=lambda: NOW)
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        for rule in loaded.config.rules:
            engine.run(rule, log)
    reports = {
        language: build.build_report(
            loaded, [], DEMO_PERIOD, generated_at=DEMO_GENERATED, language=language
        )
        for language in ("en", "de")
    }
    return Demo(loaded, reports)

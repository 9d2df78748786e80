"""The DPO report, rendered from the deletion logs of real runs: the demo PBX (SQLite, voicemail,
recordings) and FreePBX call records on MariaDB. The figures must be the log's, every form must
carry the same ones, and no form may carry personal data."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import pytest
import structlog
from click.testing import CliRunner, Result
from markupsafe import escape
from pbxdata import PbxDatabase, cdr_rows
from privacy import leaked
from sqlalchemy import Engine as SqlEngine
from sqlalchemy import text

from retentiond import demo
from retentiond.cli.main import cli
from retentiond.cli.report import report
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.report import build, render, residual, verdicts
from retentiond.evidence.report.values import Period

BERLIN = ZoneInfo("Europe/Berlin")
ORGANISATION = """\
organisation:
  controller: Beispiel GmbH, Musterstraße 1, 10115 Berlin
  dpo_contact: Datenschutz Beispiel GmbH
  processing_record: VVT-07 Telefonie
"""
# A description with markup and a legal basis with a pipe: escaped in HTML, a cell in Markdown.
DESCRIPTION = "Call detail records (numbers, names, times, durations)"
TRICKY_DESCRIPTION = "Call records <b>& co</b>"
TRICKY_BASIS = "Art. 6(1)(f) GDPR | works agreement 2024-03"


def command_group() -> click.Group:
    """The main group with `report` on it, as the lead registers it in retentiond.cli.main."""
    if "report" in cli.commands:
        return cli
    group = click.Group(
        name="retentiond",
        params=cli.params,
        callback=cli.callback,
        context_settings=cli.context_settings,
    )
    group.add_command(report)
    return group


def run_cli(*args: str | Path) -> Result:
    """The command in this process. The group configures logging for the command's stderr, as
    `retentiond` does; it is put back afterwards, so other tests' log capture keeps working."""
    saved = structlog.get_config()
    try:
        return CliRunner().invoke(command_group(), [str(a) for a in args])
    finally:
        structlog.configure(**saved)


def invoke(*args: str | Path) -> Result:
    """run_cli, raising what the command raised (main() would print it and exit)."""
    result = run_cli(*args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def today() -> date:
    return datetime.now(BERLIN).date()


def period_args(days: int = 27) -> list[str]:
    return ["--from", str(today() - timedelta(days=days)), "--to", str(today())]


def iso_weeks(first: date, last: date) -> int:
    return len(
        {(first + timedelta(days=i)).isocalendar()[:2] for i in range((last - first).days + 1)}
    )


def personal_data(config_file: Path) -> set[str]:
    """Every number, name, uniqueid and file name of the demo PBX (read before any deletion)."""
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    values = {str(v) for row in rows for v in row if v}
    values |= {p.name for p in (config_file.parent / "pbx" / "monitor").rglob("*") if p.is_file()}
    values |= set(demo.NAMES)
    return values


def run_rules(config: LoadedConfig, names: list[str] | None = None) -> None:
    engine = Engine(config)
    with audit.AuditLog(config.config.audit.path) as log:
        for rule in config.config.rules:
            if names is None or rule.name in names:
                engine.run(rule, log)


@dataclass(frozen=True)
class DemoRun:
    config: Path
    log: Path
    personal: set[str]


def demo_run(folder: Path, *, refuse_first: bool) -> DemoRun:
    """A demo PBX enforced for real; optionally first refused once by a tight safety guard."""
    config_file = demo.build(folder, days=120)
    source = config_file.read_text().replace(DESCRIPTION, TRICKY_DESCRIPTION)
    source = source.replace(
        "legal_basis: Art. 6(1)(f) GDPR\n    keep: 3 months",
        f"legal_basis: {TRICKY_BASIS}\n    keep: 3 months",
    )
    config_file.write_text(source + ORGANISATION)
    personal = personal_data(config_file)
    if refuse_first:
        tight = config_file.read_text()
        config_file.write_text(
            tight.replace("max_delete_fraction: 0.95", "max_delete_fraction: 0.1")
        )
        run_rules(load_config(config_file), ["call-records"])
        config_file.write_text(tight)
    run_rules(load_config(config_file))
    return DemoRun(config_file, folder / "audit.jsonl", personal)


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return demo_run(tmp_path_factory.mktemp("report") / "pbx", refuse_first=True)


@pytest.fixture(scope="module")
def reports(pbx: DemoRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The period report in every text form, and the rule catalogue in both of its forms."""
    out = tmp_path_factory.mktemp("out")
    forms = {}
    for form in ("html", "csv", "json"):
        invoke("-c", pbx.config, "report", *period_args(), "--format", form, "-o", out / form)
        forms[form] = (out / form).read_text()
    for form in ("md", "html"):
        result = invoke("-c", pbx.config, "report", "--rules", "--format", form)
        assert result.exit_code == 0, result.output
        forms[f"rules.{form}"] = result.stdout
    return forms


def log_figures(log: Path) -> tuple[Counter[str], Counter[str], list[dict[str, Any]]]:
    """Straight from the log: deleted per rule (sum of batch_done), runs per status, refusals."""
    rule_of: dict[str, str] = {}
    deleted: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    refusals = []
    for entry in audit.read_entries(log):
        fields = entry.fields
        if entry.type == "run_started":
            rule_of[fields["run_id"]] = fields["rule"]
        elif entry.type == "batch_done":
            deleted[rule_of[fields["run_id"]]] += fields["deleted"]
        elif entry.type == "run_finished":
            statuses[fields["status"]] += 1
        elif entry.type == "run_refused":
            statuses["refused"] += 1
            refusals.append(fields)
    return deleted, statuses, refusals


# --- figures --------------------------------------------------------------------------------------


def test_figures_are_the_logs(pbx: DemoRun, reports: dict[str, str]) -> None:
    document = json.loads(reports["json"])
    deleted, statuses, refusals = log_figures(pbx.log)
    assert set(deleted) == {"call-records", "voicemail", "call-recordings"}
    assert all(count > 0 for count in deleted.values())
    totals = Counter[str]()
    for total in document["totals"]:
        totals[total["rule"]] += total["deleted"]
    assert totals == deleted
    runs = Counter[str]()
    for row in document["runs"]:
        runs[row["status"]] += row["runs"]
    assert runs == statuses == Counter({"done": 3, "refused": 1})

    (refusal,) = refusals
    (incident,) = document["incidents"]
    assert incident["kind"] == "refused" and incident["rule"] == "call-records"
    assert incident["reason"] == refusal["reason"] and "max_delete_fraction" in refusal["reason"]
    # the refused run and the enforcing runs were made with two versions of the config
    assert len({h["sha256"] for h in document["config_hashes"]}) == 2

    result = audit.verify(pbx.log)
    (log,) = document["logs"]
    assert log["intact"] and [log["head_seq"], log["head_hash"]] == list(result.head)
    assert log["checkpoint"] is None
    assert document["holds"] == {"in_force": [], "history": [], "held": []}


def test_rule_catalogue_rows_are_the_config(pbx: DemoRun, reports: dict[str, str]) -> None:
    config = load_config(pbx.config).config
    rows = {rule["name"]: rule for rule in json.loads(reports["json"])["rules"]}
    assert list(rows) == ["call-recordings", "voicemail", "call-records"]  # by period
    for rule in config.rules:
        row = rows[rule.name]
        assert row["description"] == rule.description
        assert row["purpose"] == rule.purpose
        assert row["legal_basis"] == rule.legal_basis
        assert row["keep"] == str(rule.keep)
        assert row["deadline"] == f"{rule.keep} + 1 day + 1d"
        assert row["start_event"] == "object time" and row["action"] == "delete"
        assert [(s["kind"], s["label"]) for s in row["stores"]] == [
            (s.type, s.label) for s in rule.stores
        ]
    markdown = reports["rules.md"]
    table = [
        line for line in markdown.splitlines() if line.startswith("| ") and "object time" in line
    ]
    assert len(table) == len(config.rules)
    assert "Art. 6(1)(f) GDPR \\| works agreement 2024-03" in markdown  # a pipe stays in its cell
    assert all(line.count(" | ") == 9 for line in table)
    assert "Beispiel GmbH, Musterstraße 1, 10115 Berlin" in markdown
    page = reports["rules.html"]
    assert "http" not in page and "<script" not in page
    assert page.count('<tr class="rule">') == len(config.rules)
    assert "Call records &lt;b&gt;&amp; co&lt;/b&gt;" in page and "<b>&" not in page


def test_compliance_matrix_per_rule(pbx: DemoRun, reports: dict[str, str]) -> None:
    matrix = json.loads(reports["json"])["compliance"]
    assert [row["rule"] for row in matrix] == ["call-records", "voicemail", "call-recordings"]
    for row in matrix:
        assert row["remaining"] == 0 and row["last_status"] == "done"
        assert row["last_success"] is not None
        # the log begins inside the period: compliance is evidenced from the first run on
        assert (row["verdict"], row["level"]) == ("met since the first verified run", "amber")


# --- the HTML page -------------------------------------------------------------------------------


def test_html_is_self_contained_with_a_bar_group_per_week(
    pbx: DemoRun, reports: dict[str, str]
) -> None:
    page = reports["html"]
    lowered = page.lower()
    for external in ("http", "src=", "<script", "<link", "url(", "@import", "<img", "<iframe"):
        assert external not in lowered, external
    assert page.count("<svg") == 1
    assert page.count('<g class="week"') == iso_weeks(today() - timedelta(days=27), today())
    assert page.count('<rect class="bar"') == page.count('<g class="week"') * 3
    for heading in (
        "Beispiel GmbH, Musterstraße 1, 10115 Berlin",
        "Datenschutz Beispiel GmbH",
        "VVT-07 Telefonie",
        "Rule catalogue",
        "Compliance",
        "Holds",
        "Refusals and failures",
        "Method per store kind",
        "Residual copies",
        "Integrity of the deletion log",
        f"retentiond audit verify {pbx.log}",
        load_config(pbx.config).sha256,
    ):
        assert heading in page, heading
    for kind in ("sql", "files", "asterisk_voicemail"):
        assert f"<code>{kind}</code>" in page
    (refusal,) = log_figures(pbx.log)[2]
    assert escape(refusal["reason"]) in page
    assert "Call records &lt;b&gt;&amp; co&lt;/b&gt;" in page and "<b>&" not in page


def test_a_config_without_organisation_says_how_to_add_it(tmp_path: Path) -> None:
    config_file = demo.build(tmp_path / "pbx", days=40)
    run_rules(load_config(config_file))
    page = invoke("-c", config_file, "report", *period_args(3)).stdout
    assert "not set (add organisation: to the config)" in page


def test_a_broken_log_is_reported_not_skipped(tmp_path: Path) -> None:
    run = demo_run(tmp_path / "pbx", refuse_first=False)
    lines = run.log.read_text().splitlines(keepends=True)
    assert '"batches":' in lines[-1]
    lines[-1] = lines[-1].replace('"batches":', '"batches":1', 1)
    run.log.write_text("".join(lines))
    result = invoke("-c", run.config, "report", *period_args(), "--format", "json")
    document = json.loads(result.stdout)
    (log,) = document["logs"]
    assert not log["intact"] and log["broken_line"] == len(lines)
    assert log["entries"] == len(lines) - 1
    assert any("is broken at line" in note for note in document["notes"])


def test_signed_checkpoint_and_how_to_verify_it(tmp_path: Path) -> None:
    if not hasattr(audit, "generate_key_pair"):
        pytest.skip("signed checkpoints are not in this version of retentiond.evidence.log")
    private, _, fingerprint = audit.generate_key_pair(tmp_path / "keys")
    config_file = demo.build(tmp_path / "pbx", days=40)
    source = config_file.read_text()
    key = f"  signing_key: {private}\nconnections:"
    config_file.write_text(source.replace("connections:", key, 1))
    run_rules(load_config(config_file))
    args = ["-c", config_file, "report", *period_args(3)]
    document = json.loads(invoke(*args, "--format", "json").stdout)
    (log,) = document["logs"]
    checkpoint = log["checkpoint"]
    assert checkpoint["key_fingerprint"] == fingerprint and checkpoint["signature"]
    assert checkpoint["seq"] == log["head_seq"] and checkpoint["signed_seq"] == log["head_seq"] - 1
    assert log["verify_commands"][1].endswith(
        f"--public-key PUBLIC-KEY.pub --head {log['head_seq']}:{log['head_hash']}"
    )
    page = invoke(*args).stdout
    assert fingerprint in page and checkpoint["signature"] in page
    assert escape(log["verify_commands"][1]) in page
    # the runs themselves are counted as before: checkpoints are not runs
    assert sum(r["runs"] for r in document["runs"]) == 3


# --- CSV and JSON --------------------------------------------------------------------------------


def test_csv_and_json_carry_the_same_figures(reports: dict[str, str]) -> None:
    document = json.loads(reports["json"])
    rows = list(csv.DictReader(io.StringIO(reports["csv"])))
    assert list(rows[0]) == render.CSV_COLUMNS

    def pick(section: str, item: str) -> dict[tuple[str, ...], int]:
        return {
            (r["system"], r["rule"], r["week"], r["store"], r["unit"]): int(r["value"])
            for r in rows
            if r["section"] == section and r["item"] == item
        }

    assert pick("total", "deleted") == {
        (t["system"], t["rule"], "", "", t["unit"]): t["deleted"] for t in document["totals"]
    }
    assert pick("deleted_week", "deleted") == {
        (w["system"], w["rule"], w["week"], "", w["unit"]): w["deleted"]
        for w in document["deletions_by_week"]
    }
    assert pick("deleted_store", "deleted") == {
        (s["system"], s["rule"], "", s["store"], s["unit"]): s["deleted"]
        for s in document["deletions_by_store"]
    }
    by_week = sum(w["deleted"] for w in document["deletions_by_week"])
    assert by_week == sum(t["deleted"] for t in document["totals"]) > 0
    sections = {r["section"] for r in rows}
    assert {"organisation", "rule", "compliance", "runs", "incident", "log", "residual"} <= sections


# --- several systems -----------------------------------------------------------------------------


def test_logs_of_two_systems_give_one_report(pbx: DemoRun, tmp_path: Path) -> None:
    other = demo_run(tmp_path / "other", refuse_first=False)
    result = invoke(
        "-c",
        pbx.config,
        "report",
        *period_args(),
        "--format",
        "json",
        "--log",
        pbx.log,
        "--log",
        other.log,
    )
    document = json.loads(result.stdout)
    host = json.loads(pbx.log.read_text().splitlines()[0])["host"]
    # both PBXs ran on this host: the log file tells the systems apart
    assert document["systems"] == [f"{host} ({pbx.log})", f"{host} ({other.log})"]
    for system, log in zip(document["systems"], (pbx.log, other.log), strict=True):
        deleted, _, _ = log_figures(log)
        totals = Counter[str]()
        for total in document["totals"]:
            if total["system"] == system:
                totals[total["rule"]] += total["deleted"]
        assert totals == deleted
        assert {r["rule"] for r in document["compliance"] if r["system"] == system} == set(deleted)
    assert [log["system"] for log in document["logs"]] == document["systems"]
    # the same log given twice is one system, counted once
    twice = invoke(
        "-c",
        pbx.config,
        "report",
        *period_args(),
        "--format",
        "json",
        "--log",
        pbx.log,
        "--log",
        pbx.log,
    )
    again = json.loads(twice.stdout)
    assert again["systems"] == [host]
    assert sum(t["deleted"] for t in again["totals"]) == sum(log_figures(pbx.log)[0].values())
    page = invoke(
        "-c", pbx.config, "report", *period_args(), "--log", pbx.log, "--log", other.log
    ).stdout
    assert f"retentiond audit verify {other.log}" in page


# --- residual copies -----------------------------------------------------------------------------


def mariadb_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "retentiond.yaml"
    path.write_text(f"""\
version: 1
timezone: Europe/Berlin
audit:
  path: {tmp_path / "audit.jsonl"}
connections:
  cdrdb:
    url: {url}
rules:
  - name: call-records
    description: Call detail records
    keep: 3 months
    schedule: daily 03:15
    stores:
      - {{type: sql, connection: cdrdb, table: cdr, time_column: calldate, batch_size: 100}}
safety:
  max_delete_fraction: 0.9
""")
    return path


def server_variable(server: SqlEngine, name: str) -> str:
    with server.connect() as connection:
        row = connection.execute(text("SHOW VARIABLES LIKE :n"), {"n": name}).one()
    return str(row[1])


@pytest.mark.server_clock  # enforces its rules on the MariaDB server first
def test_residual_copies_on_mariadb(
    mariadb_url: str,
    mariadb_server: SqlEngine,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> None:
    database = pbx_database(mariadb_url)
    database.create("cdr")
    database.execute(
        "CREATE TABLE transient_cdr (calldate datetime NOT NULL, src varchar(80) NOT NULL)"
    )
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    calls = cdr_rows([now - timedelta(days=3 * i) for i in range(120)], seed=3)
    database.insert("cdr", calls)
    config_file = mariadb_config(tmp_path, mariadb_url)
    loaded = load_config(config_file)
    run_rules(loaded)

    backups = tmp_path / "backup"
    (backups / "2026").mkdir(parents=True)
    names = [f"out-{c['dst']}-{c['src']}-{c['uniqueid']}.tgz" for c in calls[:3]]
    for name, age in zip(names, (3, 40, 400), strict=True):
        file = backups / "2026" / name
        file.write_bytes(b"backup")
        moment = time.time() - age * 86400
        os.utime(file, (moment, moment))
    (backups / "link.tgz").symlink_to(backups / "2026" / names[0])
    voicemail_conf = tmp_path / "voicemail.conf"
    voicemail_conf.write_text(
        "[general]\nattach=yes\ndelete=no\n\n[default]\n"
        "1001 => 1234,Erika Mustermann,erika@example.org,,attach=yes|delete=yes\n"
        "1002 => 1234,Max Mustermann,max@example.org\n"
        "1003 => 1234,Lena Fischer,,\n"
    )
    findings = residual.detect(
        loaded.config,
        backup_folders={"FreePBX backups": backups, "3CX backups": tmp_path / "none"},
        voicemail_conf=voicemail_conf,
    )
    found = {f.check: f for f in findings}

    log_bin = server_variable(mariadb_server, "log_bin")
    binlog = found["MariaDB binary log"]
    assert f"log_bin={log_bin}" in binlog.detail
    assert binlog.state == ("found" if log_bin == "ON" else "none")
    assert "cdrdb" in binlog.place and "127.0.0.1:3306" in binlog.place

    transient = found["transient_cdr table"]
    assert transient.state == "found" and transient.attention
    assert "no rule covers it" in transient.detail

    backup = found["FreePBX backups folder"]
    assert backup.state == "found" and backup.attention  # older than the 3 months of the rule
    assert backup.detail.startswith("3 files; newest 3 days old, oldest 400 days old")
    assert found["3CX backups folder"].state == "none"

    mail = found["voicemail sent by e-mail"]
    assert mail.state == "found" and mail.detail.startswith("2 of 3 mailboxes e-mail")
    assert "1 of them delete the message" in mail.detail

    period = Period(today() - timedelta(days=6), today(), BERLIN)
    built = build.build_report(loaded, [], period, residual=findings, residual_host="pbx-1")
    page = render.html(built)
    assert escape(binlog.detail) in page and "transient_cdr exists" in page
    assert "(file names not listed: they can carry call data)" in page
    deleted, _, _ = log_figures(tmp_path / "audit.jsonl")
    assert sum(t.deleted for t in built.totals) == deleted["call-records"] > 0

    personal = {str(c[k]) for c in calls for k in ("src", "dst", "clid", "cnam", "uniqueid")}
    personal |= {*names, "Erika Mustermann", "Max Mustermann", "erika@example.org", "1001"}
    texts = [page, render.csv_text(built)]
    assert not leaked(personal, texts=texts, documents=[render.json_text(built)])


def test_wal_archiving_on_postgresql(
    postgres_url: str, postgres_server: SqlEngine, tmp_path: Path
) -> None:
    config_file = mariadb_config(tmp_path, postgres_url)
    findings = residual.detect(
        load_config(config_file).config, backup_folders={}, voicemail_conf=tmp_path / "no.conf"
    )
    with postgres_server.connect() as connection:
        mode = str(connection.execute(text("SHOW archive_mode")).scalar())
    (wal,) = [f for f in findings if f.check == "PostgreSQL WAL archive"]
    assert f"archive_mode={mode}" in wal.detail
    assert wal.state == ("none" if mode == "off" else "found")
    (transient,) = [f for f in findings if f.check == "transient_cdr table"]
    assert transient.state == "none"


def test_an_unreachable_database_is_not_checked_with_the_reason(tmp_path: Path) -> None:
    config_file = mariadb_config(tmp_path, "mariadb+pymysql://nobody@127.0.0.1:1/cdr")
    findings = residual.detect(
        load_config(config_file).config, backup_folders={}, voicemail_conf=tmp_path / "no.conf"
    )
    assert [f.check for f in findings[:2]] == ["MariaDB binary log", "transient_cdr table"]
    for finding in findings[:2]:
        assert finding.state == "not checked"
        assert finding.detail.startswith("not checked: cannot connect to cdrdb")


# --- PDF ------------------------------------------------------------------------------------------


def pdf_available() -> str | None:
    """Why a PDF cannot be made and looked at here, or None."""
    try:
        render.pdf_engine()
    except RetentiondError as error:
        return str(error)
    if shutil.which("pdftoppm") is None:
        return "pdftoppm is missing (apt-get install poppler-utils)"
    return None


def test_pdf_first_page_is_a_real_page(pbx: DemoRun, tmp_path: Path) -> None:
    missing = pdf_available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    pdf = tmp_path / "report.pdf"
    invoke("-c", pbx.config, "report", *period_args(), "--format", "pdf", "-o", pdf)
    assert pdf.read_bytes().startswith(b"%PDF-")
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", pdf, tmp_path / "page"],
        check=True,
        timeout=60,
    )
    (png,) = tmp_path.glob("page*.png")
    assert png.stat().st_size > 10_000
    pytest.importorskip("PIL", reason="Pillow (a WeasyPrint dependency) checks the page")
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        gray = image.convert("L")
        assert gray.size[0] > 400 and gray.size[1] > 600
        assert ImageStat.Stat(gray).stddev[0] > 20  # text and tables, not a blank page
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) is needed to check the PDF's text")
    words = subprocess.run(
        ["pdftotext", pdf, "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "Beispiel GmbH" in words and "Residual copies" in words
    assert not leaked(pbx.personal, texts=[words])


def test_pdf_without_weasyprint_names_what_to_install(
    pbx: DemoRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # import fails as if not installed
    with pytest.raises(RetentiondError) as error:
        invoke(
            "-c", pbx.config, "report", *period_args(), "--format", "pdf", "-o", tmp_path / "x.pdf"
        )
    assert "retentiond[pdf]" in str(error.value)
    assert "apt-get install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0" in str(
        error.value
    )
    assert not (tmp_path / "x.pdf").exists()


# --- privacy --------------------------------------------------------------------------------------


def test_no_personal_data_in_any_form(pbx: DemoRun, reports: dict[str, str]) -> None:
    assert len(pbx.personal) > 500  # the check has something to find
    found = leaked(
        pbx.personal,
        texts=[reports["html"], reports["csv"], reports["rules.md"], reports["rules.html"]],
        documents=[reports["json"]],
    )
    assert not found, found[:5]


# --- the command line -----------------------------------------------------------------------------


def test_command_line_mistakes(pbx: DemoRun) -> None:
    missing = run_cli("-c", pbx.config, "report", "--format", "json")
    assert missing.exit_code == 2 and "--from DATE --to DATE" in missing.output
    backwards = run_cli("-c", pbx.config, "report", "--from", "2026-02-01", "--to", "2026-01-01")
    assert backwards.exit_code == 2 and "ends before it begins" in backwards.output
    rules_pdf = run_cli("-c", pbx.config, "report", "--rules", "--format", "pdf")
    assert rules_pdf.exit_code == 2


def test_installed_command(pbx: DemoRun) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}

    def retentiond(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "retentiond", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    if retentiond("report", "--help").returncode != 0:
        pytest.skip("`retentiond report` is not registered in retentiond.cli.main yet")
    result = retentiond("-c", pbx.config, "report", "--rules")
    assert result.returncode == 0, result.stderr
    assert "| call-records |" in result.stdout


# --- the verdict ----------------------------------------------------------------------------------


START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 31, tzinfo=UTC)


def covered(moment: datetime) -> datetime:
    return moment + timedelta(days=2)  # daily runs plus a day of grace


def daily(first: datetime, last: datetime) -> list[datetime]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def test_daily_verified_runs_meet_the_deadline() -> None:
    runs = daily(START - timedelta(days=1), END)
    assert verdicts.verdict_for(runs, "done", START, END, covered)[:2] == ("met", "green")
    assert verdicts.verdict_for(runs, "failed", START, END, covered)[:2] == ("met", "amber")


def test_a_week_without_a_verified_run_exceeds_the_deadline() -> None:
    runs = [t for t in daily(START - timedelta(days=1), END) if not 10 <= t.day <= 16]
    verdict, level, note = verdicts.verdict_for(runs, "done", START, END, covered)
    assert (verdict, level) == ("deadline exceeded", "red")
    assert "2026-03-11" in note and "2026-03-17" in note


def test_no_verified_run_is_red_and_a_late_start_is_amber() -> None:
    assert verdicts.verdict_for([], None, START, END, covered)[:2] == ("no verified run", "red")
    late = daily(START + timedelta(days=5), END)
    assert verdicts.verdict_for(late, "done", START, END, covered)[1] == "amber"
    stopped = daily(START - timedelta(days=1), START + timedelta(days=20))
    assert verdicts.verdict_for(stopped, "done", START, END, covered)[1] == "red"


# --- what verification found: warnings, repairs, problems -----------------------------------------

# The start of an entry a power loss cut short; the marker must never reach a report.
TORN = b'{"seq":9999,"ts":"2026-11-26T02:15:04.118512Z","type":"batch_done","run_id":"torn-7f3a'
TORN_MARKER = "torn-7f3a"


def signed_demo_run(folder: Path) -> DemoRun:
    """A demo PBX enforced for real with audit.signing_key set: every run ends signed."""
    private, _, _ = audit.generate_key_pair(folder.parent / f"{folder.name}-keys")
    config_file = demo.build(folder, days=40)
    signed = config_file.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
    config_file.write_text(signed + ORGANISATION)
    personal = personal_data(config_file)
    run_rules(load_config(config_file))
    return DemoRun(config_file, folder / "audit.jsonl", personal)


def without_last_checkpoint(run: DemoRun) -> None:
    """What a kill between a run's last entry and its checkpoint leaves (each entry is synced
    as it is written): the log without its last line."""
    lines = run.log.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "checkpoint"
    run.log.write_bytes(b"".join(lines[:-1]))


@dataclass(frozen=True)
class Forms:
    html: str
    csv: list[dict[str, str]]
    json: dict[str, Any]

    def log_rows(self) -> dict[str, str]:
        return {r["item"]: r["value"] for r in self.csv if r["section"] == "log"}


def report_forms(run: DemoRun, out: Path) -> Forms:
    forms = {}
    for form in ("html", "csv", "json"):
        invoke("-c", run.config, "report", *period_args(), "--format", form, "-o", out / form)
        forms[form] = (out / form).read_text()
    assert not leaked(
        run.personal | {TORN_MARKER},
        texts=[forms["html"], forms["csv"]],
        documents=[forms["json"]],
    )
    return Forms(
        forms["html"], list(csv.DictReader(io.StringIO(forms["csv"]))), json.loads(forms["json"])
    )


@pytest.fixture(scope="module")
def torn(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A signed log whose last line a power loss cut short, not yet repaired."""
    run = signed_demo_run(tmp_path_factory.mktemp("torn") / "pbx")
    with run.log.open("ab") as file:
        file.write(TORN)
    return run


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A signed log whose last run was killed before its checkpoint."""
    run = signed_demo_run(tmp_path_factory.mktemp("unsigned") / "pbx")
    without_last_checkpoint(run)
    return run


@pytest.fixture(scope="module")
def repaired(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A torn last line that the next real run moved aside (log_repaired) and signed."""
    run = signed_demo_run(tmp_path_factory.mktemp("repaired") / "pbx")
    with run.log.open("ab") as file:
        file.write(TORN)
    run_rules(load_config(run.config))
    return run


@pytest.fixture(scope="module")
def missing_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A run killed before its checkpoint, then the signing key taken out of the config: the
    next run goes on unsigned, so that checkpoint is missing for good."""
    run = signed_demo_run(tmp_path_factory.mktemp("missing") / "pbx")
    without_last_checkpoint(run)
    text = run.config.read_text()
    run.config.write_text(re.sub(r"  signing_key: .*\n", "", text, count=1))
    run_rules(load_config(run.config), ["voicemail"])
    return run


def test_an_intact_log_is_green_without_warnings_or_repairs(
    pbx: DemoRun, reports: dict[str, str]
) -> None:
    (log,) = json.loads(reports["json"])["logs"]
    assert (log["intact"], log["level"]) == (True, "green")
    assert log["problems"] == [] and log["warnings"] == [] and log["repairs"] == []
    assert (log["unsigned_tail"], log["torn_tail"]) == (0, None)
    assert '<tr class="log green">' in reports["html"]
    assert "warning:" not in reports["html"]
    assert "No repair of the log was recorded." in reports["html"]
    rows = list(csv.DictReader(io.StringIO(reports["csv"])))
    assert {r["item"]: r["value"] for r in rows if r["section"] == "log"}["level"] == "green"
    assert not [r for r in rows if r["section"] == "log_repair"]


def test_a_torn_last_line_is_reported_as_a_warning(torn: DemoRun, tmp_path: Path) -> None:
    before = torn.log.read_bytes()
    forms = report_forms(torn, tmp_path)
    assert torn.log.read_bytes() == before  # a report reads; the next run repairs
    chain = audit.verify(torn.log)
    line = len(before.splitlines())
    message = (
        f"the last line is incomplete ({len(TORN)} bytes at audit.jsonl:{line}, likely a power "
        "loss while it was written); the next run moves it aside and records that in the log"
    )

    (log,) = forms.json["logs"]
    assert (log["intact"], log["level"]) == (True, "amber")
    assert log["entries"] == line - 1 and log["head_seq"] == chain.head[0]
    assert log["problems"] == []
    assert log["warnings"] == [
        {"kind": "torn_tail", "message": message, "seq": None, "file": "audit.jsonl", "line": line}
    ]
    assert log["torn_tail"] == {
        "file": "audit.jsonl",
        "line": line,
        "bytes": len(TORN),
        "sha256": hashlib.sha256(TORN).hexdigest(),
        "after_seq": chain.head[0],
    }
    assert log["unsigned_tail"] == 0  # the last complete entry is a checkpoint

    assert '<tr class="log amber">' in forms.html and '<tr class="log green">' not in forms.html
    assert (
        f'<strong>warning:</strong> <span class="log-warning torn-tail">audit.jsonl:{line}: '
        in (forms.html)
    )
    assert str(escape(message)) in forms.html

    rows = forms.log_rows()
    assert (rows["intact"], rows["level"]) == ("True", "amber")
    assert rows["warning_torn_tail"] == f"audit.jsonl:{line}: {message}"
    assert rows["torn_tail_line"] == f"audit.jsonl:{line}"
    assert rows["torn_tail_bytes"] == str(len(TORN))
    assert rows["torn_tail_sha256"] == hashlib.sha256(TORN).hexdigest()


def test_entries_after_the_last_checkpoint_are_a_warning(unsigned: DemoRun, tmp_path: Path) -> None:
    forms = report_forms(unsigned, tmp_path)
    entries = list(audit.read_entries(unsigned.log))
    last_checkpoint = max(e.seq for e in entries if e.type == "checkpoint")
    tail = entries[-1].seq - last_checkpoint
    assert tail > 1

    (log,) = forms.json["logs"]
    assert (log["intact"], log["level"]) == (True, "amber")
    assert log["problems"] == [] and log["torn_tail"] is None
    assert log["unsigned_tail"] == tail
    (warning,) = log["warnings"]
    assert warning["kind"] == "unsigned_tail" and warning["line"] == last_checkpoint + 1
    assert warning["message"] == (
        f"{tail} entries after the last signed checkpoint are hash-chained but not yet signed: "
        "the run that wrote them ended without its checkpoint (it was interrupted, or could not "
        "use the signing key); the next run signs them"
    )
    assert log["checkpoint"]["seq"] == last_checkpoint  # the last one there is, still shown

    assert '<tr class="log amber">' in forms.html
    assert str(escape(warning["message"])) in forms.html
    rows = forms.log_rows()
    assert rows["level"] == "amber" and rows["unsigned_tail"] == str(tail)
    assert rows["warning_unsigned_tail"].endswith(warning["message"])


def test_a_repaired_log_lists_the_repair_without_its_content(
    repaired: DemoRun, tmp_path: Path
) -> None:
    forms = report_forms(repaired, tmp_path)  # no form carries the torn bytes (TORN_MARKER)
    (side_file,) = repaired.log.parent.glob("audit.jsonl.torn-*")
    assert side_file.read_bytes() == TORN
    digest = hashlib.sha256(TORN).hexdigest()
    (entry,) = [e for e in audit.read_entries(repaired.log) if e.type == "log_repaired"]

    (log,) = forms.json["logs"]
    assert (log["intact"], log["level"]) == (True, "green")  # repaired and signed since
    assert log["warnings"] == [] and log["torn_tail"] is None
    assert log["repairs"] == [
        {
            "at": datetime.fromisoformat(entry.ts).isoformat(),
            "seq": entry.seq,
            "reason": "incomplete last line",
            "removed_bytes": len(TORN),
            "removed_sha256": digest,
            "moved_to": side_file.name,
        }
    ]

    page = forms.html
    (row,) = [line for line in page.splitlines() if line.startswith('<tr class="log-repair">')]
    assert f"<td>#{entry.seq}</td>" in row and f'<td class="n">{len(TORN)}</td>' in row
    assert side_file.name in row and digest[:16] in row
    assert digest not in page  # a prefix to compare, not the whole hash
    assert "No repair of the log was recorded." not in page
    assert "sha256sum" in page

    (repair_row,) = [r for r in forms.csv if r["section"] == "log_repair"]
    assert repair_row["store"] == str(repaired.log)
    assert repair_row["item"] == datetime.fromisoformat(entry.ts).isoformat()
    assert repair_row["value"] == (
        f"entry {entry.seq}: incomplete last line, {len(TORN)} bytes moved aside to "
        f"{side_file.name}, sha256 {digest}"
    )


def test_a_missing_checkpoint_makes_the_log_not_intact(
    missing_checkpoint: DemoRun, tmp_path: Path
) -> None:
    forms = report_forms(missing_checkpoint, tmp_path)
    assert audit.verify(missing_checkpoint.log).ok  # the hash chain alone is fine

    (log,) = forms.json["logs"]
    assert (log["intact"], log["level"]) == (False, "red")
    assert log["broken_line"] is None
    problem = log["problems"][0]
    assert problem["kind"] == "missing_checkpoint"
    assert problem["message"].startswith(
        f"missing checkpoint after entry {problem['line']} (run_finished of rule "
    )
    located = f"audit.jsonl:{problem['line']}: {problem['message']}"
    assert (
        f"The audit log {missing_checkpoint.log} does not verify: {located}."
        in (forms.json["notes"])
    )
    assert '<tr class="log red">' in forms.html
    assert f"BROKEN: {escape(located)}" in forms.html
    assert forms.log_rows()["problem_missing_checkpoint"] == located


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("torn", f"the last line is incomplete ({len(TORN)} bytes"),
        ("torn", "likely a power loss while it was written); the next run moves it aside"),
        ("unsigned", "after the last signed checkpoint are hash-chained but not yet signed"),
        ("repaired", "incomplete last line"),
        ("missing_checkpoint", "BROKEN: audit.jsonl:"),
    ],
)
def test_the_pdf_states_the_verification_too(
    case: str, words: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    missing = pdf_available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    run: DemoRun = request.getfixturevalue(case)
    pdf = tmp_path / "report.pdf"
    invoke("-c", run.config, "report", *period_args(), "--format", "pdf", "-o", pdf)
    text = subprocess.run(
        ["pdftotext", "-raw", pdf, "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout  # -raw: cell by cell, as drawn
    squeezed = "".join(text.split())  # table cells wrap anywhere, even inside file names
    assert "".join(words.split()) in squeezed
    if case == "repaired":
        (side_file,) = run.log.parent.glob("audit.jsonl.torn-*")
        assert side_file.name in squeezed
        assert hashlib.sha256(TORN).hexdigest()[:16] in squeezed
    assert TORN_MARKER not in squeezed
    assert not leaked(run.personal, texts=[text])

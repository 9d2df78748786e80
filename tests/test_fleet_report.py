"""The fleet report (`retentiond report --fleet DIR`): a service provider's PBXs, each with its own
config, deletion log and public key, in one document whose first page lists every system's
verdict; each log checked against its own system's key, and every system that fails named.

The systems are real: the demo PBX built and enforced at a fixed moment, signed with a key of its
own, then collected as the collection playbook does (config, log, public key). The 51-system PDF
is rendered once; its first two pages are read with pdfplumber, each page's first line with
pdftotext.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pdfplumber
import pytest
from privacy import leaked
from test_monitoring import firing, textfile_series
from test_report import personal_data
from test_report_pdf import RULED, squeeze

from retentiond import demo
from retentiond.config.loader import load_config
from retentiond.engine.engine import Engine
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.report import fleet, render

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
PERIOD = ("--from", "2026-05-18", "--to", "2026-06-15")
RETENTIOND = Path(sys.executable).parent / "retentiond"


@dataclass(frozen=True)
class Host:
    """A demo PBX enforced at NOW with its own signing key, and what a collection fetches."""

    config: Path
    log: Path
    public_key: Path
    personal: set[str]  # the PBX's numbers, names, uniqueids and file names

    def collect(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        shutil.copy(self.config, folder / "retentiond.yaml")
        shutil.copy(self.log, folder / self.log.name)
        shutil.copy(self.public_key, folder / "retentiond.pub")
        return folder


def enforced_host(folder: Path, signed: bool = True) -> Host:
    folder.mkdir(parents=True)
    private, public, _ = audit.generate_key_pair(folder / "keys")
    config = demo.build(folder / "pbx", now=NOW, days=180, hold=True)
    if signed:
        text = config.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
        config.write_text(text)
    loaded = load_config(config)
    engine = Engine(loaded, now=lambda: NOW)
    personal = personal_data(config)  # read before the run deletes any of it
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        for rule in loaded.config.rules:
            engine.run(rule, log)
    return Host(config, loaded.config.audit.path, public, personal)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Host]:
    folder = tmp_path_factory.mktemp("hosts")
    return {
        "alpha": enforced_host(folder / "alpha"),
        "bravo": enforced_host(folder / "bravo"),
        "unsigned": enforced_host(folder / "unsigned", signed=False),
    }


@pytest.fixture(scope="module")
def collected(hosts: dict[str, Host], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six systems: one sound, and one for each way a system fails."""
    folder = tmp_path_factory.mktemp("collected")
    hosts["alpha"].collect(folder / "pbx-alpha")
    tampered = hosts["bravo"].collect(folder / "pbx-bravo-tampered")
    log = tampered / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    finished = next(i for i, line in enumerate(lines) if '"type":"run_finished"' in line)
    lines[finished] = lines[finished].replace('"deleted":', '"deleted":1', 1)  # 544 -> 1544
    log.write_text("".join(lines))
    wrong_key = hosts["alpha"].collect(folder / "pbx-charlie-wrong-key")
    shutil.copy(hosts["bravo"].public_key, wrong_key / "retentiond.pub")
    no_key = hosts["alpha"].collect(folder / "pbx-delta-no-key")
    (no_key / "retentiond.pub").unlink()
    preset = folder / "pbx-echo-preset"
    preset.mkdir()
    (preset / "retentiond.yaml").write_text(
        "version: 1\npreset: freepbx\nkeep:\n  call-records: 3 months\n  voicemail: 60d\n"
        "  call-recordings: 30d\n"
    )
    hosts["unsigned"].collect(folder / "pbx-foxtrot-unsigned")
    return folder


def report(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RETENTIOND), "report", "--fleet", str(folder), *PERIOD, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass(frozen=True)
class JsonRun:
    result: subprocess.CompletedProcess[str]
    textfile: Path
    ended: float  # time.time() when the command had ended


@pytest.fixture(scope="module")
def as_json(collected: Path, tmp_path_factory: pytest.TempPathFactory) -> JsonRun:
    """`report --fleet --format json --metrics-textfile` on the six systems, run once for the
    tests of its output, its exit code and its metrics (the textfile changes no output)."""
    textfile = tmp_path_factory.mktemp("metrics") / "fleet.prom"
    result = report(collected, "--format", "json", "--metrics-textfile", str(textfile))
    return JsonRun(result, textfile, time.time())


def test_each_failed_system_is_named_and_the_command_fails(as_json: JsonRun) -> None:
    result = as_json.result
    assert result.returncode == 1, result.stderr
    named = {line.split(":", 1)[0]: line for line in result.stderr.splitlines() if ":" in line}
    assert set(named) == {
        "pbx-bravo-tampered",
        "pbx-charlie-wrong-key",
        "pbx-delta-no-key",
        "pbx-echo-preset",
        "pbx-foxtrot-unsigned",
    }
    assert "hash mismatch" in named["pbx-bravo-tampered"]
    assert "signed by another key" in named["pbx-charlie-wrong-key"]
    assert "no public key (*.pub) collected" in named["pbx-delta-no-key"]
    assert "retentiond init --from-config" in named["pbx-echo-preset"]
    assert "no checkpoints" in named["pbx-foxtrot-unsigned"]
    systems = {s["name"]: s for s in json.loads(result.stdout)["systems"]}
    assert list(systems) == sorted(systems)
    alpha = systems.pop("pbx-alpha")
    assert alpha["log_verified"] and alpha["level"] == "amber"  # one run: met since it
    assert {r["rule"] for r in alpha["report"]["compliance"]} == {
        "call-records",
        "voicemail",
        "call-recordings",
    }
    assert all(not s["log_verified"] and s["level"] == "red" for s in systems.values())
    assert systems["pbx-echo-preset"]["report"] is None


def test_no_personal_data_in_any_form(
    hosts: dict[str, Host], collected: Path, as_json: JsonRun
) -> None:
    personal = set().union(*(h.personal for h in hosts.values()))
    assert len(personal) > 100
    html, json_run = report(collected), as_json.result
    found = leaked(
        personal,
        texts=[html.stdout, html.stderr, json_run.stderr, as_json.textfile.read_text()],
        documents=[json_run.stdout],
    )
    assert found == []


def test_the_metrics_textfile_fires_the_alert_for_the_failed_systems(
    as_json: JsonRun, tmp_path: Path
) -> None:
    """`--metrics-textfile` for the controller's node_exporter: the alert rules name exactly the
    systems whose log did not verify (promtool on the file a real run wrote)."""
    assert as_json.result.returncode == 1
    series = textfile_series(as_json.textfile, as_json.ended)
    assert firing(series, "5m", "RetentiondFleetLogNotVerified", tmp_path, "system") == [
        "pbx-bravo-tampered",
        "pbx-charlie-wrong-key",
        "pbx-delta-no-key",
        "pbx-echo-preset",
        "pbx-foxtrot-unsigned",
    ]
    stale = "RetentiondFleetNotChecked"
    assert firing(series, "191h", stale, tmp_path, "alertname") == []
    assert firing(series, "193h", stale, tmp_path, "alertname") == [stale]


def test_a_sound_fleet_passes(hosts: dict[str, Host], tmp_path: Path) -> None:
    hosts["alpha"].collect(tmp_path / "pbx-one")
    hosts["bravo"].collect(tmp_path / "pbx-two")
    result = report(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Every log verified; 2 system(s) with a reservation." in result.stdout


def test_an_empty_or_missing_folder_says_what_to_give(tmp_path: Path) -> None:
    result = report(tmp_path)
    assert result.returncode != 0
    assert "holds no system" in result.stderr and "Traceback" not in result.stderr
    missing = report(tmp_path / "nowhere")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_the_fleet_report_in_german_has_no_english_of_its_own(collected: Path) -> None:
    built = fleet.build_fleet(collected, NOW.date().replace(day=1), NOW.date(), NOW, "de")
    page = render.fleet_html(built)
    assert "Löschbericht über alle Systeme" in page and "Die Systeme im Einzelnen" in page
    for english in ("Fleet deletion report", "The systems in detail", "no report", "collected"):
        assert english not in page


@dataclass(frozen=True)
class Pages:
    first_cells: set[str]  # the first page's table cells, whitespace removed
    first_text: str
    tops: list[str]  # each page's first line


@pytest.fixture(scope="module")
def fifty(hosts: dict[str, Host], tmp_path_factory: pytest.TempPathFactory) -> Pages:
    """50 customers' PBXs and one with a tampered log, as one PDF (rendered once: a page per
    system; only the first two pages are read in full, the rest by their first line)."""
    folder = tmp_path_factory.mktemp("fifty")
    for number in range(1, 51):
        hosts["alpha" if number % 2 else "bravo"].collect(
            folder / f"pbx-{number:02d}-mustermann-und-soehne-gmbh-hauptsitz"
        )
    tampered = hosts["alpha"].collect(folder / "pbx-17-tampered")
    log = tampered / "audit.jsonl"
    log.write_text(log.read_text().replace('"status":"done"', '"status":"dome"', 1))
    built = fleet.build_fleet(folder, NOW.date().replace(day=1), NOW.date(), NOW)
    assert [s.name for s in built.failed] == ["pbx-17-tampered"]
    path = folder / "fleet.pdf"
    path.write_bytes(pdf_of_fleet(built))
    with pdfplumber.open(path) as pdf:
        for page in pdf.pages[:2]:
            outside = [c["text"] for c in page.chars if c["x0"] < 0 or c["x1"] > page.width]
            assert not outside, f"page {page.page_number}: {''.join(outside)[:80]!r} off the page"
        first = pdf.pages[0]
        cells = {squeeze(c or "") for t in first.extract_tables(RULED) for row in t for c in row}
        text = first.extract_text() or ""
    # Each page's first line from poppler: pdfplumber took 10 s to parse the 55 pages for it.
    if shutil.which("pdftotext") is None:
        missing = "pdftotext (poppler-utils) is needed to read the PDF's pages"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    pages = subprocess.run(
        ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\f")[:-1]  # each page ends with a form feed
    return Pages(cells, squeeze(text), [page.split("\n", 1)[0] for page in pages])


def pdf_of_fleet(built: fleet.Fleet) -> bytes:
    try:
        return render.fleet_pdf(built)
    except RetentiondError as error:  # WeasyPrint or its libraries missing
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


def test_fifty_systems_first_page_lists_every_verdict(fifty: Pages) -> None:
    for number in range(1, 51):
        name = f"pbx-{number:02d}-mustermann-und-soehne-gmbh-hauptsitz"
        assert squeeze(f"! {name} met, with a reservation") in fifty.first_cells, name
    # the one that fails comes first, with its mark and why
    failing = squeeze("✗ pbx-17-tampered log does not verify")
    assert failing in fifty.first_cells
    assert fifty.first_text.index(failing) < fifty.first_text.index("pbx-01-")
    assert squeeze("Systems 51 ✓ 0 ! 50 ✗ 1") in fifty.first_text
    # then the systems in detail, then one page per system, in name order
    assert fifty.tops[0] == "Fleet deletion report"
    system_pages = [top for top in fifty.tops if top.startswith("pbx-")]
    assert system_pages == sorted(system_pages) and len(system_pages) == 51

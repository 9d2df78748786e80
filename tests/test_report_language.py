"""The report and the rule catalogue in German: the words, numbers and dates of the language, the
same pages on paper, and no English left a German DPO would have to read.

"No English left" is checked on the text of the German PDF (pdfplumber) and of the German rule
catalogue: a word is English when it is a word of an English message of any area
(tools/messages.extract) or one of the common English words below, and is none of the words of
the German translations; the fixture's own data (rule names, store labels, paths, systems) is
left out where it stands. The English PDF of the same report goes through the same check and
must fail it, so the check is not vacuous. Code (monospace: hashes, commands, config keys) is no
prose and is not checked."""

from __future__ import annotations

import html
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from reportdata import DEMO_GENERATED, DEMO_PERIOD, NOW, RULES, SITES, Month, rule_name
from test_report import invoke
from test_report_pdf import Paper, assert_verdicts_on_pages, pdf_of, read, squeeze

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.config.model import document_language
from retentiond.engine.engine import Engine
from retentiond.evidence import log as audit
from retentiond.evidence.report import build, render
from retentiond.evidence.report.summary import mark
from retentiond.evidence.report.values import Catalogue, Report
from retentiond.i18n import words

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import messages  # noqa: E402

pdfplumber = pytest.importorskip("pdfplumber")  # test_report_pdf has skipped already if missing

GERMAN = words("de")

# Words any English sentence is made of, whether or not a message of the code has them.
_COMMON = """
a about above after again all also an and any are as at back be because been before being below
between both but by can cannot could day days did do does done down during each end ended entries
entry every few file files first for found from further had has have he held her here his hold
holds how if in into is it its last later least log logs made may message messages more most must
my next no none nor not nothing now of off on once one only open or other our out over own page
per period record records report rule rules run runs same see seen she should signed so some such
than that the their them then there these they this those through to too under until up very was
we week weeks were what when where which while who why will with would yet you your deleted
deletion kept keep removed changed added verified since missing never whole store stores unit
"""
COMMON = set(_COMMON.split())
# The words the check must be able to find: if the fixture's data held one of them, the check
# would leave it out where the data stands.
CORE = {"the", "of", "and", "to", "is", "not", "with", "for", "deleted", "held", "until"}

WORD = re.compile(r"[^\W\d_]+")
CODE = re.compile(r"<code>.*?</code>|`[^`]*`", re.S)
TAG = re.compile(r"<[^>]+>")
# config keys named in prose (`until:`, `from/to`): code, whatever the language around them
KEY = re.compile(r"\b[a-z_]+(?:/[a-z_]+)+\b|\b[a-z_]+:(?=[\s).,]|$)")


def plain(message: str) -> str:
    """A message's prose: no placeholders, no markup, no code (code may stay English)."""
    text = CODE.sub(" ", message)
    text = TAG.sub(" ", text)
    text = KEY.sub(" ", text)
    return messages.PLACEHOLDER.sub(" ", text)


def words_of(text: str) -> set[str]:
    return {word.lower() for word in WORD.findall(text) if len(word) >= 2}


def english_words() -> set[str]:
    found = set(COMMON)
    for area in messages.AREAS:
        for message in messages.extract(area):
            ids = message.id if isinstance(message.id, tuple) else (message.id,)
            for text in ids:
                found |= words_of(plain(text))
    return found


def german_words() -> set[str]:
    found: set[str] = set()
    folder = messages.LOCALE / "de" / "LC_MESSAGES"
    for path in sorted(folder.glob("*.po")):
        with path.open("rb") as stream:
            catalog = read_po(stream, locale="de")
        for message in catalog:
            if not message.id:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            for text in strings:
                found |= words_of(plain(text or ""))
    return found


@pytest.fixture(scope="module")
def forbidden() -> set[str]:
    """Words that are English and no word of the German translations."""
    found = english_words() - german_words()
    assert found >= CORE
    return found


# --- the fixture's own data ----------------------------------------------------------------------


def data_of(loaded: LoadedConfig, report: Report | Catalogue) -> list[str]:
    """What the config and the logs name (not what the report says about them): the texts the
    report prints as they are, in whatever language their authors wrote them."""
    config = loaded.config
    found: list[str] = [str(loaded.path)]
    if config.organisation is not None:
        org = config.organisation
        found += [org.controller or "", org.dpo_contact or "", org.processing_record or ""]
    for rule in config.rules:
        found += [rule.name, rule.description or "", rule.purpose or "", rule.legal_basis or ""]
        found += [rule.schedule.text if rule.schedule else ""]
        found += [store.label for store in rule.stores]
    for hold in config.holds:
        found += [hold.id, hold.reason, hold.approved_by]
    if isinstance(report, Report):
        found += [report.zone, report.config_path, report.residual_host, *report.systems]
        found += [s.store for s in report.deletions_by_store]
        found += [h.store for h in report.holds.held]
        found += [f.place for f in report.residual]
        for log in report.logs:
            found += [log.path, log.head_hash, *log.verify_commands, *log.hosts]
    return [text for text in found if text]


def assert_data_keeps_the_check(data: Iterable[str]) -> None:
    """The fixture's data hides none of the words the check must find: a German organisation
    writes its config in German (paths aside), and no long word is part of any datum."""
    data = list(data)
    prose = " ".join(datum for datum in data if "/" not in datum)
    assert not CORE & words_of(prose), CORE & words_of(prose)
    assert not [w for w in CORE if len(w) >= 6 and any(w in datum for datum in data)]


# --- the check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leak:
    where: str
    word: str
    line: str

    def __str__(self) -> str:
        return f"{self.where}: {self.word!r} in {self.line!r}"


def is_data(chunk: str, data: list[str]) -> bool:
    """A piece of a datum as the page wraps it: a path or a rule name broken anywhere."""
    piece = chunk.strip(".,;:()[]")
    if not piece:
        return True
    if not (len(piece) >= 6 or re.search(r"[^\w]|\d|_", piece)):
        return False
    return any(piece in datum for datum in data)


def leaks(lines: Iterable[tuple[str, str]], forbidden: set[str], data: list[str]) -> list[Leak]:
    """Each English word in `lines` (where, text), with the line it stands in."""
    found = []
    for where, line in lines:
        for chunk in line.split():
            if is_data(chunk, data):
                continue
            for word in WORD.findall(chunk):
                if len(word) >= 2 and word.lower() in forbidden:
                    found.append(Leak(where, word, line))
    return found


def pdf_lines(paper: Paper) -> tuple[tuple[str, str], ...]:
    """The lines `page_lines` read from the PDF (when `read` was given it), never none."""
    assert paper.lines, f"{paper.path}: no lines read"
    return paper.lines


def page_lines(page: Any) -> Iterator[tuple[str, str]]:
    """A page's text, line by line, without what is set in monospace (code and hashes); the
    table headers dehyphenated (only headers hyphenate: `hyphens: auto` on th). Read by
    test_report_pdf's `read`, in the same pass as its checks of the page."""
    headers = [
        r
        for r in page.rects
        if isinstance(r.get("non_stroking_color"), tuple | list)
        and len(r["non_stroking_color"]) == 3
        and len(set(r["non_stroking_color"])) == 1
        and 0.9 < r["non_stroking_color"][0] < 1
    ]

    def inside(obj: dict[str, Any], boxes: list[dict[str, Any]] = headers) -> bool:
        middle_x, middle_y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return any(
            b["x0"] <= middle_x <= b["x1"] and b["top"] <= middle_y <= b["bottom"] for b in boxes
        )

    def prose(obj: dict[str, Any]) -> bool:
        if obj.get("object_type") != "char":
            return True
        return "Mono" not in obj.get("fontname", "") and not inside(obj)

    where = f"page {page.page_number}"
    for line in (page.filter(prose).extract_text() or "").splitlines():
        yield where, line
    for box in headers:
        cell = page.crop((box["x0"], box["top"], box["x1"], box["bottom"]))
        text = (cell.extract_text() or "").replace("\u2010\n", "").replace("\n", " ")
        yield f"{where} (header)", text


def html_lines(page: str) -> Iterator[tuple[str, str]]:
    """A page's visible text, line by line, without styles, code and hashes."""
    text = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    text = re.sub(r'<code>.*?</code>|<span class="hash">.*?</span>', " ", text, flags=re.S)
    text = re.sub(r"<br>|</tr>|</p>|</h\d>|</li>|</title>", "\n", text)
    for number, line in enumerate(html.unescape(TAG.sub(" ", text)).splitlines(), 1):
        if line.strip():
            yield f"line {number}", " ".join(line.split())


def markdown_lines(text: str) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(CODE.sub(" ", text).splitlines(), 1):
        yield f"line {number}", line


def assert_no_english(found: list[Leak]) -> None:
    assert not found, f"{len(found)} English words:\n" + "\n".join(map(str, found))


# --- the demo PBX in German -------------------------------------------------------------------

# What a German organisation writes into the demo's config (the demo's own texts are English).
DEMO_GERMAN = {
    "Call detail records (numbers, names, times, durations)": (
        "Verbindungsdaten (Rufnummern, Namen, Zeiten, Dauer)"
    ),
    "Troubleshooting and cost control": "Fehlersuche und Kostenkontrolle",
    "Art. 6(1)(f) GDPR": "Art. 6 Abs. 1 lit. f DSGVO",
    "Voicemail messages (voice, caller numbers and names)": (
        "Sprachnachrichten (Stimme, Rufnummern und Namen der Anrufer)"
    ),
    "Delivering messages to the called person": "Zustellung an die angerufene Person",
    "Recorded calls (voice, numbers in the file names)": (
        "Gesprächsaufzeichnungen (Stimme, Rufnummern in den Dateinamen)"
    ),
    "Quality assurance, with the caller's consent": "Qualitätssicherung, mit Einwilligung",
    "Art. 6(1)(a) GDPR": "Art. 6 Abs. 1 lit. a DSGVO",
    "Litigation (demo): the calls of two weeks are evidence": (
        "Rechtsstreit (Demo): Die Gespräche zweier Wochen sind Beweismittel"
    ),
    "approved_by: DPO": "approved_by: DSB",
}
ORGANISATION = """\
organisation:
  controller: Beispiel GmbH, Musterstraße 1, 10115 Berlin
  dpo_contact: Datenschutzbeauftragte der Beispiel GmbH
  processing_record: VVT-07 Telefonie
  language: de
"""


def germanize(path: Path, replacements: dict[str, str]) -> None:
    text = path.read_text()
    for english, german in replacements.items():
        if english in text:
            text = text.replace(english, german)
    path.write_text(text)


@dataclass(frozen=True)
class Demo:
    loaded: LoadedConfig
    german: Report
    english: Report


@pytest.fixture(scope="module")
def demo_pbx(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo PBX with a German config (organisation.language: de), signed and with its
    hold, enforced once at a fixed time; its report in German (the config's) and in English."""
    folder = tmp_path_factory.mktemp("german") / "pbx"
    private, _, _ = audit.generate_key_pair(folder.parent / "keys")
    config_file = demo.build(folder, now=NOW, days=180, hold=True)
    text = config_file.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
    config_file.write_text(ORGANISATION + text)
    for path in [config_file, *config_file.parent.glob("holds.d/*")]:
        germanize(path, DEMO_GERMAN)
    loaded = load_config(config_file)
    assert document_language(loaded.config) == "de"
    engine = Engine(loaded, now=lambda: NOW)
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        for rule in loaded.config.rules:
            engine.run(rule, log)
    reports = {
        language: build.build_report(
            loaded,
            [],
            DEMO_PERIOD,
            generated_at=DEMO_GENERATED,
            language=language,
        )
        for language in ("de", "en")
    }
    assert_data_keeps_the_check(data_of(loaded, reports["de"]))
    return Demo(loaded, reports["de"], reports["en"])


@pytest.fixture(scope="module")
def demo_german_pdf(demo_pbx: Demo, tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return read(pdf_of(demo_pbx.german), tmp_path_factory.mktemp("demo-de"), page_lines)


@pytest.fixture(scope="module")
def demo_english_pdf(demo_pbx: Demo, tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return read(pdf_of(demo_pbx.english), tmp_path_factory.mktemp("demo-en"), page_lines)


# --- 30 rules with long names over three systems, in German ----------------------------------


@dataclass(frozen=True)
class Big:
    loaded: LoadedConfig
    report: Report


@pytest.fixture(scope="module")
def big_german(thirty_rules_month: Month) -> Big:
    """The 30 rules as a German organisation writes them (organisation.language: de)."""
    report = thirty_rules_month.reports["de"]
    assert report.language == "de"
    return Big(thirty_rules_month.loaded["de"], report)


@pytest.fixture(scope="module")
def big_german_pdf(big_german: Big, tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return read(pdf_of(big_german.report), tmp_path_factory.mktemp("dreissig-pdf"), page_lines)


# --- the words, numbers and dates of the language --------------------------------------------

TERMS = [
    "Löschbericht",
    "Löschprotokoll",
    "Löschkonzept",
    "Aufbewahrungsfrist",
    "Rechtsgrundlage",
    "Löschfrist",
    "Sperrung",
    "Verantwortlicher",
    "Verzeichnis von Verarbeitungstätigkeiten",
    "Bewertung",
    "Datenkategorie",
]


def test_german_html_speaks_german(demo_pbx: Demo, big_german: Big) -> None:
    for report in (demo_pbx.german, big_german.report):
        page = render.html(report)
        assert '<html lang="de">' in page
        for term in TERMS:
            assert term in page, term
        assert 'content: "Seite " counter(page) " von " counter(pages);' in page
        period = f"{GERMAN.day(report.first_day)} bis {GERMAN.day(report.last_day)}"
        assert f"{period} (ganze Tage, Europe/Berlin)" in page
        assert f"{report.first_day} to {report.last_day}" not in page
    english = render.html(demo_pbx.english)
    assert '<html lang="en">' in english and "Löschkonzept" not in english


def test_german_numbers_and_dates(big_german: Big, big_german_pdf: Paper) -> None:
    report = big_german.report
    page = render.html(report)
    totals = [t for t in report.totals if t.deleted >= 1000]
    assert totals
    for total in totals:
        german = GERMAN.number(total.deleted)
        assert re.fullmatch(r"\d{1,3}(\.\d{3})+", german), german
        assert f'<td class="n">{german}</td>' in page
        assert f"{total.deleted:,}".replace(",", " ") not in page
    assert "02.06.2026 08:00 UTC" in page  # generated at, the language's moment
    assert "KW 18/2026" in page and ">KW 18</text>" in page  # weeks, in the table and the chart
    # what was deleted, on the first page, with a decimal comma in its size
    assert "01.05.2026bis31.05.2026" in squeeze(big_german_pdf.first_page)
    for number in {GERMAN.number(n) for n in (t.deleted for t in report.totals)}:
        assert number in "".join(big_german_pdf.pages)


def test_sizes_and_ticks_by_language() -> None:
    german, english = words("de"), words("en")
    assert render._size(german, 1536 * 1024) == "1,5 MiB"
    assert render._size(english, 1536 * 1024) == "1.5 MiB"
    assert render._size(german, 900) == "900 B"
    assert render._count(german, 1234567) == "1.234.567"
    assert render._count(english, 1234567) == "1 234 567"
    assert render._tick_label(german, 2.5) == "2,5" and render._tick_label(english, 2.5) == "2.5"
    assert render._tick_label(german, 1250) == "1.250"
    assert render._day(german, "2026-03-04") == "04.03.2026"
    assert render._day(german, "not a day") == "not a day"
    assert render._week(german, "2026-W09") == "KW 09/2026"
    assert render._week(german, "2026-W09", short=True) == "KW 09"
    assert render._week(english, "2026-W09", short=True) == "W09"


# --- the German PDF on paper ------------------------------------------------------------------


def test_german_demo_pdf_fits_and_shows_every_verdict(
    demo_pbx: Demo, demo_german_pdf: Paper
) -> None:
    paper = demo_german_pdf
    assert_verdicts_on_pages(paper, demo_pbx.german)
    held = [row for row in paper.rows if row and row[0] == "System" and len(row) == 9]
    header = held[0][7].replace("\u2010", "")  # a header may be hyphenated, a value never
    assert header == squeeze("Gesperrt (nicht fällig)")
    first = squeeze(paper.first_page)
    assert first.startswith("Löschbericht") and "Seite1von" in first
    hold = demo_pbx.german.holds.in_force[0]
    held_count = sum(c.held for c in demo_pbx.german.holds.held if c.hold == hold.id)
    assert squeeze(f"{hold.id}: {GERMAN.number(held_count)} Objekte gesperrt") in first
    assert squeeze(f"Überprüfung bis {GERMAN.day(hold.review_by)}") in first


def test_german_thirty_rules_fit_the_page(big_german: Big, big_german_pdf: Paper) -> None:
    report, paper = big_german.report, big_german_pdf
    assert report.systems == SITES and len(report.compliance) == RULES * 3
    assert_verdicts_on_pages(paper, report)
    catalogue = next(i for i, text in enumerate(paper.pages) if "1.Löschkonzept" in text)
    compliance = next(i for i, text in enumerate(paper.pages) if "2.Einhaltung" in text)
    assert paper.landscape[catalogue] and not paper.landscape[0]
    assert not any(paper.landscape[compliance:]) and all(paper.landscape[catalogue:compliance])
    lines = {row[0]: row[1:] for row in paper.first_rows if row}
    for rule in report.rules:
        assert len(lines[squeeze(rule.name)]) == len(SITES)
    level = {(c.system, c.rule): c.level for c in report.compliance}
    assert level[(SITES[2], rule_name(7))] == "red"
    assert f"{mark('red')} 1 von 90 Bewertungen" in paper.first_page


# --- no English left --------------------------------------------------------------------------


def test_no_untranslated_english_in_the_german_demo_pdf(
    demo_pbx: Demo, demo_german_pdf: Paper, forbidden: set[str]
) -> None:
    data = data_of(demo_pbx.loaded, demo_pbx.german)
    assert_no_english(leaks(pdf_lines(demo_german_pdf), forbidden, data))


def test_no_untranslated_english_in_the_german_thirty_rules_pdf(
    big_german: Big, big_german_pdf: Paper, forbidden: set[str]
) -> None:
    data = data_of(big_german.loaded, big_german.report)
    assert_data_keeps_the_check(data)
    assert_no_english(leaks(pdf_lines(big_german_pdf), forbidden, data))


def test_the_english_pdf_fails_the_same_check(
    demo_pbx: Demo, demo_english_pdf: Paper, forbidden: set[str]
) -> None:
    """Not vacuous: the same report in English is full of the words the check looks for, on
    every page, in the headers as in the prose."""
    data = data_of(demo_pbx.loaded, demo_pbx.english)
    found = leaks(pdf_lines(demo_english_pdf), forbidden, data)
    words_found = {leak.word.lower() for leak in found}
    assert len(words_found) > 100, sorted(words_found)
    assert words_found >= CORE, CORE - words_found
    pages = {leak.where.split(" (")[0] for leak in found}
    assert len(pages) == len(demo_english_pdf.pages)
    assert any(leak.where.endswith("(header)") for leak in found)
    # and a single English word in German prose is found, with its line
    one = leaks([("page 1", "Gelöscht 258 Dateien until 15.06.2026")], forbidden, [])
    assert [(leak.word, leak.where) for leak in one] == [("until", "page 1")]


def test_no_untranslated_english_in_the_german_rule_catalogue(
    demo_pbx: Demo, forbidden: set[str]
) -> None:
    catalogue = build.catalogue(demo_pbx.loaded, language="de")
    data = data_of(demo_pbx.loaded, catalogue)
    markdown, page = render.rules_markdown(catalogue), render.rules_html(catalogue)
    assert markdown.startswith("# Löschkonzept") and '<html lang="de">' in page
    for term in ("Aufbewahrungsfrist", "Rechtsgrundlage", "Löschfrist", "Datenkategorie"):
        assert term in markdown and term in page
    assert_no_english(
        leaks(markdown_lines(markdown), forbidden, data) + leaks(html_lines(page), forbidden, data)
    )
    english = build.catalogue(demo_pbx.loaded, language="en")
    assert len(leaks(markdown_lines(render.rules_markdown(english)), forbidden, data)) > 20
    assert len(leaks(html_lines(render.rules_html(english)), forbidden, data)) > 20


def test_no_iso_days_in_the_german_pdf(demo_german_pdf: Paper, big_german_pdf: Paper) -> None:
    """Every day and moment the German way (04.03.2026): none left as 2026-03-04 in the prose."""
    iso = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
    for paper in (demo_german_pdf, big_german_pdf):
        found = [f"{where}: {line!r}" for where, line in pdf_lines(paper) if iso.search(line)]
        assert not found, "\n".join(found)


def test_the_command_line_speaks_the_configs_language_or_the_one_asked_for(
    demo_pbx: Demo, tmp_path: Path
) -> None:
    """organisation.language: de makes `report` German; --language en overrides it."""
    config = demo_pbx.loaded.path
    period = ["--from", "2026-05-18", "--to", "2026-06-15"]
    german = invoke("-c", config, "report", "--rules", "--format", "md")
    assert german.exit_code == 0, german.output
    assert german.stdout.startswith("# Löschkonzept")
    english = invoke("-c", config, "report", "--rules", "--format", "md", "--language", "en")
    assert english.stdout.startswith("# Deletion rules")
    for language, heading in (("de", "2. Einhaltung der Löschfristen"), ("en", "2. Compliance")):
        out = tmp_path / f"report.{language}.html"
        result = invoke("-c", config, "report", *period, "--language", language, "-o", out)
        assert result.exit_code == 0, result.output
        page = out.read_text()
        assert f'<html lang="{language}">' in page and heading in page


# --- CSV and JSON are for machines: their names stay English --------------------------------


def shape(value: Any) -> Any:
    """A JSON document's keys, all the way down, without its values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return None


def test_csv_and_json_names_are_the_same_in_both_languages(demo_pbx: Demo) -> None:
    german, english = demo_pbx.german, demo_pbx.english
    assert render.csv_text(german).splitlines()[0] == ",".join(render.CSV_COLUMNS)
    names = [(r["section"], r["item"]) for r in render.csv_rows(german)]
    assert names == [(r["section"], r["item"]) for r in render.csv_rows(english)]
    assert shape(json.loads(render.json_text(german))) == shape(render.document(english))
    assert render.document(german)["report"] == "retentiond deletion report"

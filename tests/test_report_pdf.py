"""The PDF report on paper: every table fits A4, every rule's verdict is on a page, and the first
page answers what a DPO files. Read from the PDF's own text and layout (pdfplumber), every page
rendered with pdftoppm; for the demo PBX and for 30 rules with long names over three systems."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reportdata import RULES, SITES, Demo, Month, rule_name

from retentiond.errors import RetentiondError
from retentiond.evidence.report import render
from retentiond.evidence.report.summary import mark, verdict_cell
from retentiond.evidence.report.values import Report

try:
    import pdfplumber
except ImportError:  # the dev extra has it; in CI its absence is a failure, not a skip
    if os.environ.get("CI"):
        raise
    pytest.skip("pdfplumber (dev extra) reads the PDF", allow_module_level=True)

# What a reader of the PDF makes of one pdfplumber page: (where, line) pairs
PageLines = Callable[[Any], Iterable[tuple[str, str]]]
# Tables by their ruled lines only: the chart's bars are rectangles, not cell borders.
RULED = {"vertical_strategy": "lines_strict", "horizontal_strategy": "lines_strict"}


def squeeze(text: str) -> str:
    """Text without whitespace: a wrapped cell breaks its words anywhere."""
    return "".join(text.split())


# --- reading a PDF --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paper:
    path: Path
    pages: list[str]  # each page's text, whitespace removed
    first_page: str  # the first page's text as it reads, lines joined
    rows: list[list[str]]  # every table row of every page, cells whitespace removed
    first_rows: list[list[str]]  # the table rows of the first page
    landscape: list[bool]  # each page: wider than high
    lines: tuple[tuple[str, str], ...] = ()  # (where, line) of each page, when asked for


def read(document: bytes, folder: Path, lines: PageLines | None = None) -> Paper:
    """The PDF written to `folder`, each character box checked to be inside its page, and every
    page rendered to an image; with `lines`, each page's lines as it reads them (the PDF is
    parsed once, the slow part, for both)."""
    path = folder / "report.pdf"
    path.write_bytes(document)
    pages, rows, first_rows, landscape = [], [], [], []
    page_lines: list[tuple[str, str]] = []
    first_page = ""
    with pdfplumber.open(path) as pdf:
        for page in pdf.pages:
            outside = [
                c["text"]
                for c in page.chars
                if c["x0"] < 0 or c["x1"] > page.width or c["top"] < 0 or c["bottom"] > page.height
            ]
            assert not outside, f"page {page.page_number}: {''.join(outside)[:80]!r} off the page"
            for word in page.extract_words():
                assert word["x0"] >= 0 and word["x1"] <= page.width, word
                assert word["top"] >= 0 and word["bottom"] <= page.height, word
            text = page.extract_text() or ""
            pages.append(squeeze(text))
            landscape.append(page.width > page.height)
            table_rows = [
                [squeeze(cell or "") for cell in row]
                for table in page.extract_tables(RULED)
                for row in table
            ]
            rows += table_rows
            if page.page_number == 1:
                first_page, first_rows = " ".join(text.split()), table_rows
            if lines is not None:
                page_lines += lines(page)
        count = len(pdf.pages)
    rendered(path, count)
    return Paper(path, pages, first_page, rows, first_rows, landscape, tuple(page_lines))


def rendered(pdf: Path, pages: int) -> None:
    """pdftoppm draws every page: one image per page, none of them blank."""
    if shutil.which("pdftoppm") is None and not os.environ.get("CI"):
        pytest.skip("pdftoppm (poppler-utils) is needed to render the pages")
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", pdf, pdf.parent / "page"], check=True, timeout=120
    )
    images = sorted(pdf.parent.glob("page-*.png"))
    assert len(images) == pages
    from PIL import Image, ImageStat

    for image_path in images:
        with Image.open(image_path) as image:
            assert ImageStat.Stat(image.convert("L")).stddev[0] > 5, image_path.name


def pdf_of(report: Report) -> bytes:
    try:
        return render.pdf(report)
    except RetentiondError as error:  # WeasyPrint or its libraries missing
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


def compliance_rows(paper: Paper) -> dict[tuple[str, str], str]:
    """(system, rule): the verdict cell of every row of the compliance tables, on any page."""
    found = {}
    for row in paper.rows:
        if len(row) == 9 and row[0] != "System":
            found[(row[0], row[1])] = row[8]
    return found


def assert_verdicts_on_pages(paper: Paper, report: Report) -> None:
    """Each rule's verdict, with its mark and its explanation, is in its row on some page."""
    rows = compliance_rows(paper)
    assert len(report.compliance) == len(rows)
    for c in report.compliance:
        cell = rows[(squeeze(c.system), squeeze(c.rule))]
        assert cell == squeeze(f"{mark(c.level)} {c.verdict} {c.note}"), (c.rule, cell)


def assert_first_page_sums_up(paper: Paper, report: Report) -> None:
    page = squeeze(paper.first_page)
    for system in report.systems:
        assert squeeze(system) in page
    assert squeeze(f"{report.first_day} to {report.last_day}") in page
    # one line per rule, with a mark and the verdict for each system
    lines = {row[0]: row[1:] for row in paper.first_rows if row}
    for rule in report.rules:
        cells = lines[squeeze(rule.name)]
        assert len(cells) == len(report.systems), cells
        for system, cell in zip(report.systems, cells, strict=True):
            (c,) = [r for r in report.compliance if r.rule == rule.name and r.system == system]
            assert cell == squeeze(verdict_cell(c, len(report.systems))), cell
            assert cell.startswith(mark(c.level)) and cell[1:] in squeeze(c.verdict), cell
    deleted: dict[str, int] = {}
    for total in report.totals:
        deleted[total.unit] = deleted.get(total.unit, 0) + total.deleted
    assert deleted and any(deleted.values())
    for unit, count in deleted.items():
        assert squeeze(f"{count:,} {unit}".replace(",", " ")) in page
    for hold in report.holds.in_force:
        assert squeeze(f"{hold.id}:") in page and squeeze(str(hold.review_by)) in page
    for log in report.logs:
        state = "intact" if log.intact else "BROKEN"
        assert squeeze(f"{mark(log.level)} {state}, {log.entries} entries") in page
    if any(log.checkpoint for log in report.logs):
        assert "signedupto" in page
    # the detail starts on the next page
    assert "1.Rulecatalogue" not in page and "1.Rulecatalogue" in "".join(paper.pages[1:3])


# --- the demo PBX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_report(enforced_demo: Demo) -> Report:
    """The demo PBX, signed and with its legal hold, enforced once at a fixed time."""
    return enforced_demo.reports["en"]


@pytest.fixture(scope="module")
def demo_paper(demo_report: Report, tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return read(pdf_of(demo_report), tmp_path_factory.mktemp("demo-pdf"))


def test_demo_pdf_shows_every_verdict_within_the_page(
    demo_report: Report, demo_paper: Paper
) -> None:
    paper = demo_paper
    assert_verdicts_on_pages(paper, demo_report)
    held = [row for row in paper.rows if row and row[0] == "System" and len(row) == 9]
    header = held[0][7].replace("\u2010", "")  # a header may be hyphenated, a value never
    assert header == squeeze("Held (not due while held)")


def test_demo_first_page_is_the_summary(demo_report: Report, demo_paper: Paper) -> None:
    assert demo_report.holds.in_force and demo_report.logs[0].checkpoint is not None
    paper = demo_paper
    assert_first_page_sums_up(paper, demo_report)
    held = sum(c.held for c in demo_report.holds.held if c.hold == "DEMO-HOLD-1")
    assert held > 0 and f"DEMO-HOLD-1: {held:,} objects held".replace(",", " ") in paper.first_page


# --- 30 rules with long names over three systems ------------------------------------------------


@pytest.fixture(scope="module")
def big_report(thirty_rules_month: Month) -> Report:
    return thirty_rules_month.reports["en"]


@pytest.fixture(scope="module")
def big_paper(big_report: Report, tmp_path_factory: pytest.TempPathFactory) -> Paper:
    return read(pdf_of(big_report), tmp_path_factory.mktemp("thirty-pdf"))


def test_thirty_rules_over_three_systems_fit_the_page(big_report: Report, big_paper: Paper) -> None:
    assert big_report.systems == SITES and len(big_report.compliance) == RULES * 3
    paper = big_paper
    assert_verdicts_on_pages(paper, big_report)
    # the rule catalogue on landscape pages of its own; the summary and the rest in portrait
    catalogue = next(i for i, text in enumerate(paper.pages) if "1.Rulecatalogue" in text)
    compliance = next(i for i, text in enumerate(paper.pages) if "2.Compliance" in text)
    assert paper.landscape[catalogue] and not paper.landscape[0]
    assert not any(paper.landscape[compliance:]) and all(paper.landscape[catalogue:compliance])
    levels = {(c.system, c.rule): c.level for c in big_report.compliance}
    assert levels[(SITES[2], rule_name(7))] == "red"  # the rule that stopped running


def test_thirty_rules_first_page_is_the_summary(big_report: Report, big_paper: Paper) -> None:
    paper = big_paper
    assert_first_page_sums_up(paper, big_report)
    assert "✗ 1 of 90 rule verdicts" in paper.first_page


def test_html_summary_comes_before_the_detail(big_report: Report) -> None:
    page = render.html(big_report)
    summary, detail = page.split("</section>", 1)
    assert summary.count('<tr class="summary-rule">') == RULES
    assert "1. Rule catalogue" in detail and "1. Rule catalogue" not in summary
    assert ".summary { break-after: page; }" in page


def test_json_and_csv_keep_their_form(big_report: Report) -> None:
    document: dict[str, Any] = render.document(big_report)
    assert "summary" not in document
    assert render.csv_text(big_report).splitlines()[0] == ",".join(render.CSV_COLUMNS)

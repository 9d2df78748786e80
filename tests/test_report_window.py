"""The HTML report in a real browser: it fits a 1280-px window (nothing wider than the window,
no sideways scrolling) and prints on A4 with every character inside its page, in English and
German, for the demo PBX and for 30 rules with long names over three systems. Headless Debian
Chromium driven by selenium; the print is Chromium's own (DevTools Page.printToPDF), read back
with pdfplumber as tests/test_report_pdf.py reads WeasyPrint's."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from reportdata import Demo, Month
from test_audit_viewer import browser  # noqa: F401 - the headless Chromium fixture
from test_report_pdf import squeeze

from retentiond.evidence.report import render
from retentiond.evidence.report.summary import mark
from retentiond.evidence.report.values import Report

pdfplumber = pytest.importorskip("pdfplumber")

WINDOW = 1280
# Chromium draws the cells' borders as lines: tables by them
LINES = {"vertical_strategy": "lines", "horizontal_strategy": "lines"}
# Every element's right edge, and the page's scroll width, against the window's inner width.
WIDEST = """
const width = document.documentElement.clientWidth;
let widest = [0, ''];
for (const element of document.body.querySelectorAll('*')) {
  const right = element.getBoundingClientRect().right;
  if (right > widest[0]) widest = [right, element.tagName + '.' + element.className];
}
return [width, document.documentElement.scrollWidth, widest[0], widest[1]];
"""


@pytest.fixture(scope="module")
def reports(enforced_demo: Demo, thirty_rules_month: Month) -> dict[tuple[str, str], Report]:
    """The demo PBX's report and the 30-rule, three-system one (its German one as a German
    organisation writes its config), each in both languages."""
    built = {}
    for language in ("en", "de"):
        built[("demo", language)] = enforced_demo.reports[language]
        built[("thirty", language)] = thirty_rules_month.reports[language]
    return built


def _open(driver: Any, report: Report, folder: Path) -> None:
    page = folder / f"report-{report.language}.html"
    page.write_text(render.html(report), encoding="utf-8")
    driver.set_window_size(WINDOW, 900)
    driver.get(page.as_uri())


CASES = [(which, language) for which in ("demo", "thirty") for language in ("en", "de")]


@pytest.mark.parametrize(("which", "language"), CASES)
def test_the_page_fits_a_1280_px_window(
    browser: Any,  # noqa: F811
    reports: dict[tuple[str, str], Report],
    tmp_path: Path,
    which: str,
    language: str,
) -> None:
    report = reports[(which, language)]
    _open(browser, report, tmp_path)
    inner = browser.execute_script("return window.innerWidth")
    assert inner <= WINDOW
    width, scroll, right, element = browser.execute_script(WIDEST)
    assert scroll <= width, f"the page scrolls sideways: {scroll} px in a {width}-px window"
    assert right <= width, f"{element} reaches {right:.0f} px in a {width}-px window"
    # the column of text is the page's, not the window's: about 800 px, centred
    body = browser.execute_script("return document.body.getBoundingClientRect().width")
    assert 600 < body < width


# Chromium's print of the 30 rules in German, the longest words; the English one is WeasyPrint's
# to show (test_report_pdf.py) and takes as long
PRINTED = [case for case in CASES if case != ("thirty", "en")]


@pytest.mark.parametrize(("which", "language"), PRINTED)
def test_the_page_prints_on_a4_from_the_browser(
    browser: Any,  # noqa: F811
    reports: dict[tuple[str, str], Report],
    tmp_path: Path,
    which: str,
    language: str,
) -> None:
    """Chromium's print of the page: A4 (the page's own @page), every character inside its
    page, every rule of every system with its verdict on some page."""
    report = reports[(which, language)]
    _open(browser, report, tmp_path)
    printed = browser.execute_cdp_cmd(
        "Page.printToPDF", {"preferCSSPageSize": True, "printBackground": True}
    )
    path = tmp_path / "printed.pdf"
    path.write_bytes(base64.b64decode(printed["data"]))
    with pdfplumber.open(path) as pdf:
        assert len(pdf.pages) >= 3
        column = None  # where the compliance table's last column, the verdict, begins
        for page in pdf.pages:
            short, long = sorted((page.width, page.height))
            assert abs(short - 595) < 3 and abs(long - 842) < 3, (page.width, page.height)
            outside = [
                c["text"]
                for c in page.chars
                if c["x0"] < -0.5
                or c["x1"] > page.width + 0.5
                or c["top"] < -0.5
                or c["bottom"] > page.height + 0.5
            ]
            assert not outside, f"page {page.page_number}: {''.join(outside)[:80]!r} off the page"
            for table in page.find_tables(LINES):
                header = table.rows[0].cells
                if column is None and len(header) == 9 and header[-1] is not None:
                    column = header[-1][0]
        assert column is not None, "no compliance table found"
        verdicts = "".join(
            squeeze(page.crop((column - 1, 0, page.width, page.height)).extract_text() or "")
            for page in pdf.pages
        )
    # every rule's verdict, with its mark and its explanation, in the verdict column, in order
    at = 0
    for row in report.compliance:
        wanted = squeeze(f"{mark(row.level)} {row.verdict} {row.note}")
        found = verdicts.find(wanted, at)
        assert found >= 0, (row.system, row.rule, wanted)
        at = found + len(wanted)

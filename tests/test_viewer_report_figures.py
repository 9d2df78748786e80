"""The verifier page shows the same figures as the report: for a month of daily runs of 30 rules
(one of which stops running mid-month, so runs differ per rule), the page's runs and deletions
per rule and its deletions per ISO week equal what `evidence.report.build` computes from the same
log; in English and in German."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from reportdata import BERLIN, Month
from test_audit_viewer import browser, in_browser  # noqa: F401 - the headless Chromium fixture

from retentiond.evidence import log as audit
from retentiond.evidence.report import build
from retentiond.evidence.report.values import Period, Report
from retentiond.evidence.viewer import viewer_page


@pytest.fixture(scope="module")
def month(thirty_rules_month: Month) -> tuple[Path, Path, Report]:
    """One PBX's log (rule 7 stops after day 10), the page for its key, and the report of the
    whole log's time."""
    log = thirty_rules_month.logs[2]
    report = build.build_report(
        thirty_rules_month.loaded["en"],
        [log],
        Period(date(2026, 4, 27), date(2026, 6, 7), BERLIN),
        generated_at=datetime(2026, 6, 8, 8, 0, tzinfo=UTC),
    )
    return log, thirty_rules_month.public, report


def _count(text: str) -> int:
    return int(re.sub(r"\D", "", text))


@pytest.mark.parametrize("language", ["en", "de"])
def test_the_page_counts_as_the_report(
    browser: Any,  # noqa: F811
    month: tuple[Path, Path, Report],
    tmp_path: Path,
    language: str,
) -> None:
    from selenium.webdriver.common.by import By

    log, public, report = month
    page = tmp_path / "verify.html"
    page.write_text(viewer_page([audit.VerifyKey.from_file(public)], language), encoding="utf-8")
    shown = in_browser(browser, page, [log])
    assert shown["problems"] == []

    # runs and deletions per rule
    runs: Counter[str] = Counter()
    for row in report.runs:
        runs[row.rule] += row.runs
    deleted: Counter[str] = Counter()
    for total in report.totals:
        deleted[total.rule] += total.deleted
    cells = {
        row.get_attribute("data-rule"): row.find_elements(By.TAG_NAME, "td")
        for row in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-rule]")
    }
    assert {rule: (_count(c[1].text), _count(c[2].text)) for rule, c in cells.items()} == {
        rule: (runs[rule], deleted[rule]) for rule in runs
    }
    assert len(set(runs.values())) > 1, "the rules differ in their runs"

    # deletions per ISO week
    weekly: Counter[str] = Counter()
    for row in report.deletions_by_week:
        weekly[row.week] += row.deleted
    weeks = {
        row.get_attribute("data-week"): _count(row.find_elements(By.TAG_NAME, "td")[1].text)
        for row in browser.find_elements(By.CSS_SELECTOR, "#weeks tr[data-week]")
    }
    assert weeks == dict(weekly) and len(weeks) >= 4

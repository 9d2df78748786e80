"""The DPO report on holds, anonymization and data subject requests: every form carries the
log's figures, the anonymity claim follows the measured group sizes, and no number or extension
of a hold or a data subject appears anywhere in the output."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from privacy import leaked

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine import erasure
from retentiond.engine.engine import Engine
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.report import build, render
from retentiond.evidence.report.replay import UNKNOWN_RULE
from retentiond.evidence.report.values import Period, Report
from retentiond.policy.subjects import Subject

BERLIN = ZoneInfo("Europe/Berlin")

# --- reading the forms ----------------------------------------------------------------------------


class _Rows(HTMLParser):
    """Table rows of the HTML page as (class, [cell texts])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cells: list[str] | None = None
        self._class = ""
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._cells, self._class = [], dict(attrs).get("class") or ""
        elif tag in ("td", "th") and self._cells is not None:
            self._text = []
        elif tag == "br" and self._text is not None:
            self._text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cells is not None and self._text is not None:
            self._cells.append(" ".join("".join(self._text).split(" ")).strip())
            self._text = None
        elif tag == "tr" and self._cells is not None:
            self.rows.append((self._class, self._cells))
            self._cells = None

    def handle_data(self, text: str) -> None:
        if self._text is not None:
            self._text.append(text)


def html_rows(page: str, css_class: str) -> list[list[str]]:
    parser = _Rows()
    parser.feed(page)
    return [cells for cls, cells in parser.rows if css_class in cls.split()]


def csv_values(text: str, section: str) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(io.StringIO(text)) if r["section"] == section]


@dataclass(frozen=True)
class Forms:
    html: str
    csv: str
    json: dict[str, Any]
    json_text: str


def forms(report: Report) -> Forms:
    text = render.json_text(report)
    return Forms(render.html(report), render.csv_text(report), json.loads(text), text)


def count(value: int) -> str:
    """A count as the HTML page writes it."""
    return f"{value:,}".replace(",", " ")


# --- a log written entry by entry -----------------------------------------------------------------

HOLD_NUMBERS = ["+4930123456", "+491701234567"]
HOLD_EXTENSION = "1007"
SUBJECT_NUMBER = "+4940987654"

CONFIG = """\
version: 1
timezone: Europe/Berlin
audit:
  path: {audit}
connections:
  cdrdb:
    url: sqlite:///{folder}/master.db
rules:
  - name: call-records
    description: Call detail records
    keep: 3 months
    action: anonymize
    then_delete_after: 1 year
    min_keep: 1 month
    k_anonymity: 5
    schedule: daily 03:15
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        subject_columns: [src, dst]
        anonymize:
          src: truncate_digits
          dst: {{truncate_digits: 4}}
          clid: blank
          calldate: {{coarsen_time: day}}
          billsec: {{bucket: [0, 60, 300]}}
      - type: csv
        root: {folder}/cdr-csv
        anonymize:
          "1": truncate_digits
          "4": blank
  - name: call-recordings
    keep: 30d
    stores:
      - type: files
        root: {folder}/monitor
holds:
  - id: LIT-2
    reason: Billing dispute 2026-77
    approved_by: DPO
    review_by: 2026-03-20
    rules: [call-records]
    from: 2026-01-01
    to: 2026-01-31
    numbers: {numbers}
    extensions: ["{extension}"]
  - id: AUTH-3
    reason: Authority inquiry
    approved_by: Management
    review_by: 2026-12-31
    until: 2026-06-30
  - id: OLD-9
    reason: Ended before the report
    approved_by: DPO
    review_by: 2026-02-01
    until: 2026-02-15
"""

CDR = "cdrdb/cdr"


def csv_root(folder: Path) -> str:
    return f"{folder}/cdr-csv"


class Clock:
    """Stamps the entries of a log written by hand with the times a test gives."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Written:
    loaded: LoadedConfig
    log: Path
    clock: Clock
    writer: audit.AuditLog

    def at(self, day: str, kind: str, **fields: Any) -> None:
        self.clock.now = datetime.fromisoformat(day).replace(tzinfo=UTC)
        self.writer.append(kind, **fields)


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Written]:
    config_file = tmp_path / "retentiond.yaml"
    config_file.write_text(
        CONFIG.format(
            audit=tmp_path / "audit.jsonl",
            folder=tmp_path,
            numbers=json.dumps(HOLD_NUMBERS),
            extension=HOLD_EXTENSION,
        )
    )
    clock = Clock()
    with audit.AuditLog(tmp_path / "audit.jsonl", clock=clock) as writer:
        yield Written(load_config(config_file), tmp_path / "audit.jsonl", clock, writer)


def summary(hold: str, **changes: Any) -> dict[str, Any]:
    fields = {
        "hold": hold,
        "reason": "Litigation 3 O 123/26",
        "approved_by": "DPO",
        "review_by": "2026-03-15",
        "until": None,
        "rules": ["call-records"],
        "from": "2026-01-01",
        "to": "2026-01-31",
        "numbers": 2,
        "extensions": 1,
    }
    return fields | changes


def anonymize_run(
    w: Written,
    day: str,
    run_id: str,
    *,
    deleted: int,
    anonymized: int,
    held: dict[str, int],
    smallest: dict[str, int | None],
    forced: list[str] | None = None,
    csv_anonymized: int = 0,
) -> None:
    """One run of the two-stage rule as the engine writes it: delete stage, anonymize stage."""
    base = {"rule": "call-records", "keep": "3 months", "config_sha256": "ab" * 32}
    total_held = sum(held.values())
    held_fields = {"held": total_held, "held_by": held} if total_held else {}
    stores = [
        {"store": CDR, "kind": "sql", "unit": "rows", "total": 5000, "expired": deleted},
        {"store": CDR, "kind": "sql", "unit": "rows", "total": 5000, "expired": anonymized}
        | {"stage": "anonymize"}
        | held_fields,
        {"store": csv_root(w.log.parent), "kind": "csv", "unit": "lines"}
        | {"total": 900, "expired": csv_anonymized, "stage": "anonymize"},
    ]
    started = base | {
        "cutoff": day,
        "action": "anonymize",
        "delete_cutoff": day,
        "then_delete_after": "1 year",
        "stores": stores,
    }
    if forced:
        started["forced"] = forced
    w.at(day + "T02:15:00", "run_started", run_id=run_id, **started)
    if deleted:
        w.at(day + "T02:15:01", "batch_intent", run_id=run_id, store=CDR, batch=1, planned=deleted)
        w.at(day + "T02:15:02", "batch_done", run_id=run_id, store=CDR, batch=1, deleted=deleted)
    for batch, (label, count_) in enumerate(
        ((CDR, anonymized), (csv_root(w.log.parent), csv_anonymized)), start=2
    ):
        if not count_:
            continue
        intent = {"store": label, "batch": batch, "stage": "anonymize"}
        w.at(day + "T02:15:03", "batch_intent", run_id=run_id, planned=count_, **intent)
        w.at(day + "T02:15:04", "batch_done", run_id=run_id, anonymized=count_, deleted=0, **intent)
    finished = [
        {"store": CDR, "deleted": deleted, "batches": 1, "remaining": 0},
        {"store": CDR, "stage": "anonymize", "anonymized": anonymized}
        | {"smallest_group": smallest[CDR], "deleted": 0, "batches": 1, "remaining": None}
        | held_fields,
        {"store": csv_root(w.log.parent), "stage": "anonymize", "anonymized": csv_anonymized}
        | {"smallest_group": smallest.get("csv"), "deleted": 0, "batches": 1, "remaining": None},
    ]
    w.at(
        day + "T02:16:00",
        "run_finished",
        run_id=run_id,
        rule="call-records",
        status="done",
        deleted=deleted,
        anonymized=anonymized + csv_anonymized,
        stage="anonymize",
        stores=finished,
    )


def march(w: Written) -> Report:
    """A month with holds added, changed and ended, forced and refused runs, two erasures (one
    without an end) and an access search; a few entries before and after it."""
    w.at("2026-02-20T09:00:00", "hold_added", **summary("OLD-9"), covers={CDR: 7})
    w.at("2026-02-25T09:00:00", "hold_ended", hold="OLD-9", ended="its until date has passed")
    w.at("2026-03-02T09:00:00", "hold_added", **summary("LIT-1"), covers={CDR: 40})
    anonymize_run(
        w,
        "2026-03-03",
        "r1",
        deleted=10,
        anonymized=100,
        held={"LIT-1": 40},
        smallest={CDR: 6, "csv": 9},
        csv_anonymized=30,
    )
    w.at("2026-03-05T09:00:00", "hold_added", **summary("LIT-2"), covers={CDR: 12})
    w.at(
        "2026-03-10T09:00:00",
        "hold_changed",
        **summary("LIT-1", review_by="2026-04-30", until="2026-03-20"),
        changed=["review_by", "until"],
    )
    anonymize_run(
        w,
        "2026-03-12",
        "r2",
        deleted=4,
        anonymized=25,
        held={"LIT-1": 38, "LIT-2": 12},
        smallest={CDR: 3, "csv": 9},
        forced=["keep (3d) is shorter than the rule's min_keep (1 month)"],
    )
    w.at(
        "2026-03-14T10:00:00",
        "erasure_started",
        run_id="e1",
        ticket="DSR-2026-041",
        version="1.0",
        config_sha256="ab" * 32,
        stores=[
            {"rule": "call-records", "store": CDR, "unit": "rows", "found": 12, "held": 2},
            {"rule": "call-recordings", "store": "/m", "unit": "files", "found": 0, "held": 0}
            | {"unsearchable": True},
        ],
    )
    w.at("2026-03-14T10:00:01", "batch_intent", run_id="e1", stage="erase", store=CDR, batch=1)
    w.at(
        "2026-03-14T10:00:02",
        "batch_done",
        run_id="e1",
        stage="erase",
        store=CDR,
        batch=1,
        deleted=10,
    )
    w.at(
        "2026-03-14T10:00:03",
        "erasure_finished",
        run_id="e1",
        ticket="DSR-2026-041",
        status="done",
        reason=None,
        deleted=10,
        held=2,
        stores=[
            {"rule": "call-records", "store": CDR, "unit": "rows", "found": 12, "held": 2}
            | {"deleted": 10},
            {"rule": "call-recordings", "store": "/m", "unit": "files", "found": 0, "held": 0}
            | {"unsearchable": True, "deleted": 0},
        ],
    )
    w.at(
        "2026-03-16T11:00:00",
        "erasure_started",
        run_id="e2",
        ticket="DSR-2026-042",
        version="1.0",
        config_sha256="ab" * 32,
        stores=[{"rule": "call-records", "store": CDR, "unit": "rows", "found": 5, "held": 0}],
    )
    w.at("2026-03-16T11:00:01", "batch_intent", run_id="e2", stage="erase", store=CDR, batch=1)
    w.at(
        "2026-03-16T11:00:02",
        "batch_done",
        run_id="e2",
        stage="erase",
        store=CDR,
        batch=1,
        deleted=3,
    )
    w.at(
        "2026-03-18T08:00:00",
        "subject_search",
        ticket="A15-7",
        version="1.0",
        stores=[
            {"rule": "call-records", "store": CDR, "unit": "rows", "found": 4, "held": 1},
            {"rule": "call-recordings", "store": "/m", "unit": "files", "found": 2, "held": 0},
        ],
    )
    w.at("2026-03-21T03:00:00", "hold_ended", hold="LIT-1", ended="its until date has passed")
    anonymize_run(
        w,
        "2026-03-22",
        "r3",
        deleted=0,
        anonymized=38,
        held={"LIT-2": 15},
        smallest={CDR: 3, "csv": 9},
    )
    w.at(
        "2026-03-25T02:15:00",
        "run_refused",
        run_id="r4",
        rule="call-records",
        keep="3 months",
        cutoff="2026-03-25",
        reason="cdrdb/cdr: would anonymize 9000 rows, more than 10 times the previous run",
        forced=["keep (3d) is shorter than the rule's min_keep (1 month)"],
        stores=[],
    )
    w.at("2026-04-02T08:00:00", "subject_search", ticket="A15-8", version="1.0", stores=[])
    return build.build_report(
        w.loaded,
        [w.log],
        Period(date(2026, 3, 1), date(2026, 3, 31), BERLIN),
        generated_at=datetime(2026, 4, 3, 9, 0, tzinfo=UTC),
    )


def personal() -> set[str]:
    values = set(HOLD_NUMBERS) | {HOLD_EXTENSION, SUBJECT_NUMBER}
    for number in [*HOLD_NUMBERS, SUBJECT_NUMBER]:
        values |= set(Subject.parse([number]).numbers)
    return values


# --- holds ----------------------------------------------------------------------------------------


def test_holds_in_force_show_their_scope_by_counts_and_flag_an_overdue_review(
    written: Written,
) -> None:
    out = forms(march(written))
    in_force = {h["id"]: h for h in out.json["holds"]["in_force"]}
    assert list(in_force) == ["LIT-2", "AUTH-3"]  # OLD-9's until has passed
    lit = in_force["LIT-2"]
    assert (lit["numbers"], lit["extensions"]) == (2, 1)
    assert lit["review_by"] == "2026-03-20" and lit["review_overdue"] is True
    assert (lit["from_day"], lit["to_day"], lit["rules"]) == (
        "2026-01-01",
        "2026-01-31",
        ["call-records"],
    )
    auth = in_force["AUTH-3"]
    assert auth["review_overdue"] is False and auth["rules"] is None
    assert auth["until"] == "2026-06-30"
    assert any("LIT-2 was due for review on 2026-03-20" in note for note in out.json["notes"])

    rows = {cells[0]: cells for cells in html_rows(out.html, "hold")}
    assert set(rows) == {"LIT-2", "AUTH-3"}
    assert "review overdue" in rows["LIT-2"][3] and "review overdue" not in rows["AUTH-3"][3]
    assert html_rows(out.html, "red") and rows["LIT-2"] in html_rows(out.html, "red")
    assert rows["LIT-2"][5:9] == ["call-records", "2026-01-01 to 2026-01-31", "2", "1"]
    assert rows["AUTH-3"][5] == "all rules"

    hold_csv = {(r["store"], r["item"]): r["value"] for r in csv_values(out.csv, "hold")}
    assert hold_csv[("LIT-2", "review_overdue")] == "True"
    assert hold_csv[("LIT-2", "numbers")] == "2" and hold_csv[("LIT-2", "extensions")] == "1"
    assert hold_csv[("AUTH-3", "rules")] == "all"


def test_hold_history_of_the_period_is_the_logs(written: Written) -> None:
    out = forms(march(written))
    history = [(e["hold"], e["event"], e["at"][:10]) for e in out.json["holds"]["history"]]
    # OLD-9 was added and ended in February: outside the period
    assert history == [
        ("LIT-1", "added", "2026-03-02"),
        ("LIT-2", "added", "2026-03-05"),
        ("LIT-1", "changed", "2026-03-10"),
        ("LIT-1", "ended", "2026-03-21"),
    ]
    added, _, changed, ended = out.json["holds"]["history"]
    assert added["covers"] == {CDR: 40} and (added["numbers"], added["extensions"]) == (2, 1)
    assert changed["changed"] == ["review_by", "until"] and changed["until"] == "2026-03-20"
    assert ended["detail"] == "ended: its until date has passed"

    rows = html_rows(out.html, "hold-event")
    assert [(r[2], r[3]) for r in rows] == [
        ("LIT-1", "added"),
        ("LIT-2", "added"),
        ("LIT-1", "changed: review_by, until"),
        ("LIT-1", "ended: its until date has passed"),
    ]
    assert rows[0][0].startswith("2026-03-02") and f"held then: {CDR} 40" in rows[0][4]
    assert "numbers: 2, extensions: 1" in rows[2][4]
    events = csv_values(out.csv, "hold_event")
    assert [(r["store"], r["item"]) for r in events] == [
        ("LIT-1", "added"),
        ("LIT-2", "added"),
        ("LIT-1", "changed"),
        ("LIT-1", "ended"),
    ]


def test_objects_held_are_the_latest_counts_and_held_per_rule_is_in_the_matrix(
    written: Written,
) -> None:
    out = forms(march(written))
    held = {
        (h["hold"], h["store"]): (h["held"], h["counted_at"][:10])
        for h in out.json["holds"]["held"]
    }
    # LIT-1 kept 40, then 38, then ended: its last count is what became due on release
    assert held[("LIT-1", CDR)] == (38, "2026-03-12")
    assert held[("OLD-9", CDR)] == (7, "2026-02-20")
    # LIT-2 is in force: counted when added, then by each run
    assert held[("LIT-2", CDR)] == (15, "2026-03-22")
    (row,) = [r for r in html_rows(out.html, "hold") if r[0] == "LIT-2"]
    assert row[9].startswith(f"{CDR}: 15 (2026-03-22")
    csv_held = {(r["item"], r["store"]): int(r["value"]) for r in csv_values(out.csv, "hold_held")}
    assert csv_held == {key: value[0] for key, value in held.items()}

    (row,) = [c for c in out.json["compliance"] if c["rule"] == "call-records"]
    assert row["held"] == 0  # the last run of the period held nothing
    matrix = {
        r["rule"]: r["value"] for r in csv_values(out.csv, "compliance") if r["item"] == "held"
    }
    assert matrix["call-records"] == "0"


def test_held_count_in_the_matrix_is_the_last_runs(written: Written) -> None:
    written.at("2026-03-02T09:00:00", "hold_added", **summary("LIT-1"), covers={CDR: 40})
    anonymize_run(
        written,
        "2026-03-03",
        "r1",
        deleted=10,
        anonymized=100,
        held={"LIT-1": 40},
        smallest={CDR: 6, "csv": 9},
    )
    anonymize_run(
        written,
        "2026-03-04",
        "r2",
        deleted=1,
        anonymized=2,
        held={"LIT-1": 38},
        smallest={CDR: 6, "csv": 9},
    )
    report = build.build_report(
        written.loaded,
        [written.log],
        Period(date(2026, 3, 1), date(2026, 3, 31), BERLIN),
        generated_at=datetime(2026, 4, 3, tzinfo=UTC),
    )
    out = forms(report)
    (row,) = [c for c in out.json["compliance"] if c["rule"] == "call-records"]
    assert row["held"] == 38
    (cells,) = [
        c
        for c in html_rows(out.html, "amber")
        + html_rows(out.html, "green")
        + html_rows(out.html, "red")
        if c[1] == "call-records" and len(c) == 9
    ]
    assert cells[7] == "38"
    (lit,) = [h for h in out.json["holds"]["held"] if h["hold"] == "LIT-1"]
    assert (lit["store"], lit["held"]) == (CDR, 38)
    # the released-holds table lists LIT-1 (it is not in the config): its objects are due again
    (released,) = html_rows(out.html, "released")
    assert released[0] == "LIT-1" and released[2:4] == [CDR, "38"]


# --- anonymization --------------------------------------------------------------------------------


def test_anonymized_counts_per_week_and_store_beside_deletions(written: Written) -> None:
    out = forms(march(written))
    log = list(audit.read_entries(written.log))
    anonymized = sum(
        e.fields.get("anonymized", 0)
        for e in log
        if e.type == "batch_done" and e.fields.get("stage") != "erase"
    )
    deleted = sum(
        e.fields.get("deleted", 0)
        for e in log
        if e.type == "batch_done" and e.fields.get("stage") != "erase"
    )
    assert (anonymized, deleted) == (193, 14)
    totals = {(t["rule"], t["unit"]): t for t in out.json["totals"]}
    assert totals[("call-records", "rows")]["anonymized"] == 163
    assert totals[("call-records", "rows")]["deleted"] == 14  # erasures are not counted here
    assert totals[("call-records", "lines")]["anonymized"] == 30
    weeks = {
        (w["week"], w["unit"]): (w["deleted"], w["anonymized"])
        for w in out.json["deletions_by_week"]
    }
    assert weeks == {
        ("2026-W10", "rows"): (10, 100),
        ("2026-W10", "lines"): (0, 30),
        ("2026-W11", "rows"): (4, 25),
        ("2026-W12", "rows"): (0, 38),
    }
    stores = {s["store"]: (s["deleted"], s["anonymized"]) for s in out.json["deletions_by_store"]}
    assert stores == {CDR: (14, 163), csv_root(written.log.parent): (0, 30)}

    csv_weeks = {
        (r["week"], r["unit"], r["item"]): int(r["value"])
        for r in csv_values(out.csv, "deleted_week")
    }
    for (week, unit), (d, a) in weeks.items():
        assert (
            csv_weeks[(week, unit, "deleted")] == d and csv_weeks[(week, unit, "anonymized")] == a
        )
    html_weeks = {(r[0], r[3]): (r[4], r[5]) for r in html_rows(out.html, "week")}
    assert html_weeks == {key: (count(d), count(a)) for key, (d, a) in weeks.items()}
    html_totals = {(r[1], r[2]): (r[3], r[4]) for r in html_rows(out.html, "total")}
    assert html_totals[("call-records", "rows")] == ("14", "163")
    # the chart stacks the anonymized objects on the deleted ones
    assert out.html.count('<rect class="bar-anonymized"') == 3
    assert "2026-W12 call-records: 38 anonymized" in out.html


def test_two_stage_rule_shows_both_periods_in_every_catalogue(written: Written) -> None:
    out = forms(march(written))
    (rule,) = [r for r in out.json["rules"] if r["name"] == "call-records"]
    assert rule["stages"] == "anonymize after 3 months, delete after 1 year"
    assert rule["then_delete_after"] == "1 year" and rule["k_anonymity"] == 5
    assert rule["delete_deadline"] == "1 year + 1 day + 1d"
    assert rule["min_keep"] == "1 month"
    (cells,) = [c for c in html_rows(out.html, "rule") if c[0] == "call-records"]
    assert "anonymize after 3 months, delete after 1 year" in cells[8]
    assert "deletion: 1 year + 1 day + 1d" in cells[7]
    rule_csv = {
        r["item"]: r["value"] for r in csv_values(out.csv, "rule") if r["rule"] == "call-records"
    }
    assert rule_csv["stages"] == "anonymize after 3 months, delete after 1 year"
    assert rule_csv["delete_deadline"] == "1 year + 1 day + 1d"

    catalogue = build.catalogue(written.loaded)
    markdown = render.rules_markdown(catalogue)
    (line,) = [ln for ln in markdown.splitlines() if "| call-records |" in ln]
    assert "anonymize after 3 months, delete after 1 year (k = 5)" in line
    assert "deletion: 1 year + 1 day + 1d" in line and line.count(" | ") == 9
    page = render.rules_html(catalogue)
    (cells,) = [c for c in html_rows(page, "rule") if c[1] == "call-records"]
    assert "anonymize after 3 months, delete after 1 year" in cells[8]
    assert "deletion: 1 year + 1 day + 1d" in cells[7]
    (plain,) = [c for c in html_rows(page, "rule") if c[1] == "call-recordings"]
    assert plain[8] == "delete"


def test_method_statement_names_each_fields_transform(written: Written) -> None:
    out = forms(march(written))
    (rule,) = out.json["anonymization"]
    stores = {s["store"]: s for s in rule["stores"]}
    sql = {f["field"]: f["transform"] for f in stores[CDR]["fields"]}
    assert sql == {
        "src": "last 3 digits replaced by x",
        "dst": "last 4 digits replaced by x",
        "clid": "blanked",
        "calldate": "time cut down to the day",
        "billsec": "put into buckets 0, 60, 300",
    }
    fields = {f["field"]: f["transform"] for f in stores[csv_root(written.log.parent)]["fields"]}
    assert fields == {"field 1": "last 3 digits replaced by x", "field 4": "blanked"}
    rows = html_rows(out.html, "amber")
    (sql_row,) = [r for r in rows if r[1] == f"sql: {CDR}"]
    assert "dst: last 4 digits replaced by x" in sql_row[2]
    csv_method = {(r["store"], r["item"]): r["value"] for r in csv_values(out.csv, "anonymization")}
    assert csv_method[(CDR, "field billsec")] == "put into buckets 0, 60, 300"


def wording_for(written: Written, smallest: dict[str, int | None], runs: int = 1) -> dict[str, Any]:
    for i in range(runs):
        anonymize_run(
            written,
            f"2026-03-0{i + 3}",
            f"w{i}",
            deleted=0,
            anonymized=5,
            held={},
            smallest=smallest if i == runs - 1 else {CDR: 1, "csv": 1},
            csv_anonymized=5,
        )
    report = build.build_report(
        written.loaded,
        [written.log],
        Period(date(2026, 3, 1), date(2026, 3, 31), BERLIN),
        generated_at=datetime(2026, 4, 3, tzinfo=UTC),
    )
    out = forms(report)
    (rule,) = out.json["anonymization"]
    page_wordings = [
        r[4]
        for r in html_rows(out.html, "green") + html_rows(out.html, "amber")
        if len(r) == 5 and "rule:" in r[4]
    ]
    csv_wording = [
        r["value"] for r in csv_values(out.csv, "anonymization") if r["item"] == "wording"
    ]
    assert csv_wording == [rule["wording"]]
    assert len(page_wordings) == 1 and page_wordings[0].endswith("rule: " + rule["wording"])
    return dict(rule)


def test_anonymized_only_when_every_stores_latest_group_reaches_k(written: Written) -> None:
    # an earlier run measured groups of 1; the latest, of 5 and 9: k = 5 is reached everywhere
    rule = wording_for(written, {CDR: 5, "csv": 9}, runs=2)
    assert rule["wording"] == "anonymized" and rule["anonymous"] is True
    assert [s["smallest_group"] for s in rule["stores"]] == [5, 9]


def test_a_group_below_k_is_pseudonymized(written: Written) -> None:
    rule = wording_for(written, {CDR: 9, "csv": 2})
    assert rule["wording"] == "pseudonymized (smallest group 2 < 5)"
    assert rule["anonymous"] is False
    assert [s["wording"] for s in rule["stores"]] == [
        "anonymized",
        "pseudonymized (smallest group 2 < 5)",
    ]


def test_unmeasured_groups_are_pseudonymized(written: Written) -> None:
    rule = wording_for(written, {CDR: 7, "csv": None})
    assert rule["wording"] == "pseudonymized (group sizes not measured)"
    assert rule["stores"][1]["measured"] is False


def test_without_any_anonymize_run_nothing_is_called_anonymous(written: Written) -> None:
    report = build.build_report(
        written.loaded,
        [written.log],
        Period(date(2026, 3, 1), date(2026, 3, 31), BERLIN),
        generated_at=datetime(2026, 4, 3, tzinfo=UTC),
    )
    (rule,) = report.anonymization
    assert rule.wording == "pseudonymized (group sizes not measured)"


# --- data subject requests and forced runs --------------------------------------------------------


def test_erasures_and_searches_of_the_period_by_ticket_and_counts(written: Written) -> None:
    out = forms(march(written))
    erasures = {e["ticket"]: e for e in out.json["erasures"]}
    assert list(erasures) == ["DSR-2026-041", "DSR-2026-042"]
    done = erasures["DSR-2026-041"]
    assert (done["status"], done["found"], done["deleted"], done["held"]) == ("done", 12, 10, 2)
    assert done["started"].startswith("2026-03-14") and done["finished"] is not None
    assert [s["unsearchable"] for s in done["stores"]] == [False, True]
    open_ = erasures["DSR-2026-042"]
    assert open_["status"] == "no end recorded" and open_["finished"] is None
    assert (open_["found"], open_["deleted"], open_["held"]) == (5, 3, 0)

    (search,) = out.json["subject_searches"]  # A15-8 is after the period
    assert (search["ticket"], search["found"], search["held"]) == ("A15-7", 6, 1)

    rows = {r[0]: r for r in html_rows(out.html, "erasure")}
    assert rows["DSR-2026-041"][3:7] == ["done", "12", "10", "2"]
    assert rows["DSR-2026-042"][3].startswith("no end recorded")
    assert "cannot be searched" in rows["DSR-2026-041"][7]
    (search_row,) = html_rows(out.html, "search")
    assert search_row[0] == "A15-7" and search_row[3:5] == ["6", "1"]

    erasure_csv = {(r["store"], r["item"]): r["value"] for r in csv_values(out.csv, "erasure")}
    assert erasure_csv[("DSR-2026-041", "deleted")] == "10"
    assert erasure_csv[("DSR-2026-042", "status")] == "no end recorded"
    searches = {(r["store"], r["item"]): r["value"] for r in csv_values(out.csv, "subject_search")}
    assert searches[("A15-7", "found")] == "6"


def test_forced_runs_are_listed_with_the_guard_they_overrode(written: Written) -> None:
    out = forms(march(written))
    kinds = Counter(i["kind"] for i in out.json["incidents"])
    assert kinds == Counter({"forced": 2, "refused": 1})
    forced = [i for i in out.json["incidents"] if i["kind"] == "forced"]
    assert all("min_keep (1 month)" in i["reason"] for i in forced)
    assert [i["at"][:10] for i in forced] == ["2026-03-12", "2026-03-25"]
    rows = html_rows(out.html, "forced")
    assert len(rows) == 2 and "overridden with --force" in rows[0][4]
    assert len([r for r in csv_values(out.csv, "incident") if r["item"] == "forced"]) == 2
    # an erasure's batches are not runs: no "(unknown rule)" and no unconfirmed batch
    assert all(c["rule"] != UNKNOWN_RULE for c in out.json["compliance"])
    assert "batch unconfirmed" not in kinds


def test_nothing_personal_in_any_form(written: Written) -> None:
    report = march(written)
    out = forms(report)
    catalogue = build.catalogue(written.loaded)
    texts = [out.html, out.csv, render.rules_markdown(catalogue), render.rules_html(catalogue)]
    assert not leaked(personal(), texts=texts, documents=[out.json_text])
    # the check finds a number where there is one
    assert HOLD_NUMBERS[0] in leaked(personal(), texts=[out.html + HOLD_NUMBERS[0]])


# --- real runs ------------------------------------------------------------------------------------

TRANSFORMS = """\
        anonymize:
          src: truncate_digits
          dst: truncate_digits
          clid: blank
          channel: blank
          dstchannel: blank
          lastdata: blank
          uniqueid: blank
          recordingfile: blank
          calldate: {coarsen_time: day}
"""


def cdr(config_file: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows


@dataclass(frozen=True)
class RealRun:
    config: LoadedConfig
    log: Path
    personal: set[str]
    hold_number: str
    subject: str


@pytest.fixture
def real(tmp_path: Path) -> RealRun:
    """The demo PBX with a two-stage anonymize rule, a hold by number and extension over its
    oldest calls, enforced by the engine; then one erasure and one access search."""
    config_file = demo.build(tmp_path / "pbx", days=200)
    rows = cdr(config_file, "SELECT calldate, src, dst, clid, uniqueid, recordingfile FROM cdr")
    old = datetime.now(BERLIN) - timedelta(days=120)
    external = [
        (r[0], r[1]) for r in rows if str(r[1]).startswith("+49") and r[0] < f"{old:%Y-%m-%d}"
    ]
    hold_number = external[0][1]
    recent = datetime.now(BERLIN) - timedelta(days=30)
    subject = next(
        str(r[1])
        for r in rows
        if str(r[1]).startswith("+49") and r[0] > f"{recent:%Y-%m-%d}" and r[1] != hold_number
    )
    personal = {str(v) for r in rows for v in r[1:] if v}
    personal |= {p.name for p in (config_file.parent / "pbx" / "monitor").rglob("*") if p.is_file()}
    personal |= set(demo.NAMES) | set(Subject.parse([hold_number, subject]).numbers)
    text = config_file.read_text()
    text = text.replace(
        "    keep: 3 months\n",
        "    keep: 3 months\n    action: anonymize\n    then_delete_after: 6 months\n",
        1,
    )
    text = text.replace(
        "        subject_columns: [src, dst]",
        "        subject_columns: [src, dst]\n" + TRANSFORMS.rstrip("\n"),
        1,
    )
    review = (datetime.now(BERLIN) - timedelta(days=2)).date()
    text += f"""\
holds:
  - id: DISPUTE-1
    reason: Billing dispute
    approved_by: DPO
    review_by: {review}
    rules: [call-records]
    numbers: ["{hold_number}"]
    extensions: ["1003"]
  - id: WINDOW-2
    reason: Authority inquiry
    approved_by: Management
    review_by: {review + timedelta(days=60)}
    rules: [call-recordings]
    from: {(datetime.now(BERLIN) - timedelta(days=60)).date()}
    to: {(datetime.now(BERLIN) - timedelta(days=40)).date()}
organisation:
  controller: Beispiel GmbH
"""
    config_file.write_text(text)
    loaded = load_config(config_file)
    engine = Engine(loaded)
    with audit.AuditLog(loaded.config.audit.path) as log:
        for rule in loaded.config.rules:
            outcome = engine.run(rule, log)
            assert outcome.status == "done", outcome.message
        erasure.erase(engine, log, Subject.parse([subject]), "DSR-9", now=datetime.now(UTC))
        found = erasure.search(engine, Subject.parse([subject]))
        erasure.record_search(log, "A15-9", found)
    return RealRun(loaded, loaded.config.audit.path, personal, hold_number, subject)


def real_report(run: RealRun) -> Report:
    today = datetime.now(BERLIN).date()
    return build.build_report(run.config, [], Period(today - timedelta(days=6), today, BERLIN))


def test_real_runs_report_the_logs_holds_anonymization_and_erasure(real: RealRun) -> None:
    entries = list(audit.read_entries(real.log))
    out = forms(real_report(real))

    rule_of = {e.fields["run_id"]: e.fields["rule"] for e in entries if e.type == "run_started"}
    deleted: Counter[str] = Counter()
    anonymized: Counter[str] = Counter()
    for e in entries:
        if e.type == "batch_done" and e.fields["run_id"] in rule_of:
            deleted[rule_of[e.fields["run_id"]]] += e.fields["deleted"]
            anonymized[rule_of[e.fields["run_id"]]] += e.fields.get("anonymized", 0)
    assert anonymized["call-records"] > 0 and deleted["call-records"] > 0
    totals_d: Counter[str] = Counter()
    totals_a: Counter[str] = Counter()
    for t in out.json["totals"]:
        totals_d[t["rule"]] += t["deleted"]
        totals_a[t["rule"]] += t["anonymized"]
    assert totals_d == deleted and +totals_a == +anonymized

    finished = {e.fields["rule"]: e.fields for e in entries if e.type == "run_finished"}
    held_by: Counter[str] = Counter()
    for store in finished["call-records"]["stores"]:
        for hold, n in (store.get("held_by") or {}).items():
            held_by[hold] = max(held_by[hold], n)
    assert held_by["DISPUTE-1"] > 0
    held = {(h["hold"], h["store"]): h["held"] for h in out.json["holds"]["held"]}
    assert held[("DISPUTE-1", "cdrdb/cdr")] == held_by["DISPUTE-1"]
    matrix = {c["rule"]: c["held"] for c in out.json["compliance"]}
    assert matrix["call-records"] == held_by["DISPUTE-1"]
    added = [e.fields for e in entries if e.type == "hold_added"]
    assert {h["hold"] for h in out.json["holds"]["history"]} == {a["hold"] for a in added}
    in_force = {h["id"]: h for h in out.json["holds"]["in_force"]}
    assert in_force["DISPUTE-1"]["review_overdue"] and not in_force["WINDOW-2"]["review_overdue"]
    assert (in_force["DISPUTE-1"]["numbers"], in_force["DISPUTE-1"]["extensions"]) == (1, 1)

    (anon,) = out.json["anonymization"]
    (group,) = [s["smallest_group"] for s in finished["call-records"]["stores"] if s.get("stage")]
    assert anon["stores"][0]["smallest_group"] == group
    k = real.config.config.rule("call-records").k_anonymity
    expected = (
        "anonymized"
        if group is not None and group >= k
        else "pseudonymized (group sizes not measured)"
        if group is None
        else f"pseudonymized (smallest group {group} < {k})"
    )
    assert anon["wording"] == expected

    (ended,) = [e.fields for e in entries if e.type == "erasure_finished"]
    (row,) = out.json["erasures"]
    assert row["ticket"] == "DSR-9" and row["status"] == ended["status"] == "done"
    assert (row["deleted"], row["held"]) == (ended["deleted"], ended["held"])
    assert row["found"] == sum(s["found"] for s in ended["stores"]) > 0
    assert row["deleted"] > 0
    (search,) = out.json["subject_searches"]
    (logged,) = [e.fields for e in entries if e.type == "subject_search"]
    assert search["found"] == sum(s["found"] for s in logged["stores"])
    assert search["ticket"] == "A15-9"
    # the erasure's deletions are its own, not the rule's regular ones
    assert "(unknown rule)" not in {t["rule"] for t in out.json["totals"]}


def test_real_report_leaks_no_number_of_a_hold_or_subject(real: RealRun) -> None:
    out = forms(real_report(real))
    assert real.hold_number in real.personal and real.subject in real.personal
    found = leaked(real.personal, texts=[out.html, out.csv], documents=[out.json_text])
    assert not found, found[:5]


# --- PDF ------------------------------------------------------------------------------------------


def test_pdf_carries_holds_and_tickets_and_no_number(written: Written, tmp_path: Path) -> None:
    report = march(written)
    try:
        document = render.pdf(report)
    except RetentiondError as error:
        pytest.skip(str(error))
    assert document.startswith(b"%PDF-")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is needed to read the PDF's text")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(document)
    words = subprocess.run(
        ["pdftotext", pdf, "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    text = " ".join(words.split())  # table cells wrap their words across lines
    for expected in ("LIT-2", "review overdue", "DSR-2026-041", "A15-7", "forced"):
        assert expected in text, expected
    assert "pseudonymized (smallest group 3 < 5)" in text
    assert not leaked(personal(), texts=[words])
    pdfplumber = pytest.importorskip("pdfplumber", reason="pdfplumber (dev extra) reads the PDF")
    with pdfplumber.open(pdf) as paper:
        for page in paper.pages:  # holds, erasures and searches stay within A4's edges
            assert all(c["x0"] >= 0 and c["x1"] <= page.width for c in page.chars), page
            assert all(c["top"] >= 0 and c["bottom"] <= page.height for c in page.chars), page

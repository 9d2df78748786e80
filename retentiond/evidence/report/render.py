"""The report's forms: one self-contained HTML page (and the same page as PDF), CSV, JSON, and the
rule catalogue as Markdown or HTML.

The pages and the catalogue speak the report's language (`Report.language`, `Catalogue.language`):
the templates' words through jinja2.ext.i18n from the gettext catalogues (area "report"), and
numbers, sizes, days, moments and ISO weeks the language's way (i18n.Words); an identifier a reader
sees (a status, a unit, a store kind) is printed through `wording.label`. CSV and JSON are for
machines: their columns, keys, sections and item names are identifiers and stay English in every
language; only the prose the figures carry is in the report's language.

The HTML has no external reference at all: CSS inline, the chart an inline SVG, no script, no
image, no font to fetch, so the filed copy shows the same in ten years. Jinja2 escapes every value
(autoescape), so a rule description can never become markup.

CSV layout: one file, one figure per row, in the columns
`section, system, rule, week, store, unit, item, value`; `section` says what the row is
(organisation, period, rule, compliance, deleted_week, deleted_store, total, runs, incident,
hold, hold_event, hold_held, erasure, erasure_store, subject_search, config_hash, config_reload,
log, log_repair, residual, method, anonymization) and `item` names the figure within it.
Anonymized counts are the `anonymized` items of deleted_week, deleted_store and total. hold and
hold_event carry the hold id in the store column; hold_held names the hold in its item, the
store in store and when it was counted in week; erasure and subject_search carry their ticket in
the store column, erasure_store rows name it in their item. log and log_repair carry the log's
path in the store column; a log's problems and warnings are `problem_<kind>` and
`warning_<kind>` items, and a log_repair row is named by the time of its entry.
Empty columns do not apply to that section. JSON: the same figures as one document (`format` 1).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from babel.numbers import get_decimal_symbol
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from retentiond import i18n
from retentiond.errors import RetentiondError
from retentiond.evidence.report import fleet, wording
from retentiond.evidence.report.fleet import Fleet
from retentiond.evidence.report.summary import mark, summary, verdict_cell
from retentiond.evidence.report.values import Catalogue, Report
from retentiond.i18n import DEFAULT, Words

JSON_FORMAT = 1
PDF_PACKAGES = "libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core"
PDF_HINT = (
    "PDF reports need WeasyPrint and its system libraries: pip install 'retentiond[pdf]' and "
    f"apt-get install {PDF_PACKAGES}; or use --format html and print it to PDF"
)
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


@functools.cache
def _environment(language: str = DEFAULT) -> Environment:
    """The templates in `language`: its words (jinja2.ext.i18n, trimmed as extracted), and its
    numbers, dates and labels through the filters. One per language, made once."""
    words = i18n.words(language)
    env = Environment(
        loader=PackageLoader("retentiond.evidence.report", "templates"),
        # HTML templates are escaped; the Markdown one escapes its cells with the `md` filter.
        autoescape=select_autoescape(["html.j2"], default_for_string=True, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(words, newstyle=True)  # type: ignore[attr-defined]
    env.globals["language"] = words.language
    env.globals["page_footer"] = _page_footer(words)
    env.filters["when"] = functools.partial(_when, words)
    env.filters["day"] = functools.partial(_day, words)
    env.filters["week"] = functools.partial(_week, words)
    env.filters["size"] = functools.partial(_size, words)
    env.filters["count"] = functools.partial(_count, words)
    env.filters["label"] = functools.partial(wording.label, words)
    env.filters["md"] = _markdown_cell
    env.filters["mark"] = mark
    env.filters["verdict_cell"] = verdict_cell
    env.filters["fleet_verdict"] = functools.partial(fleet.short_verdict, words)
    return env


def _page_footer(words: Words) -> Markup:
    """The CSS `content` of the page footer, "page 2 of 9" in the language's words."""
    text = words.gettext("page {page} of {pages}")
    parts = []
    for piece in re.split(r"(\{page\}|\{pages\})", text):
        if piece in ("{page}", "{pages}"):
            parts.append(f"counter({piece[1:-1]})")
        elif piece:
            quoted = piece.replace("\\", "\\\\").replace('"', '\\"').replace("<", "\\3c ")
            parts.append(f'"{quoted}"')
    # CSS, not HTML: the words are the catalogue's, quoted and escaped for a CSS string above
    return Markup(" ".join(parts))  # noqa: S704


def _when(words: Words, moment: datetime | None, zone: Any = None) -> str:
    return words.moment(moment, zone)


def _day(words: Words, value: date | str | None, empty: str = "–") -> str:
    """A day in the language's way; a day the log carries as ISO text too (anything else as it
    is)."""
    if not isinstance(value, str):
        return words.day(value, empty)
    try:
        return words.day(date.fromisoformat(value), empty)
    except ValueError:
        return value


def _week(words: Words, label: str, short: bool = False) -> str:
    """An ISO week ("2026-W21") the language's way: "2026-W21" or "KW 21/2026"; short: "W21"
    or "KW 21" (the chart's axis)."""
    year, _, number = label.partition("-W")
    if short:
        return words.gettext("W{number}").format(number=number)
    return words.gettext("{year}-W{number}").format(year=year, number=number)


def _size(words: Words, count: int | None) -> str:
    if count is None:
        return ""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{_decimal(words, size)} {unit}"
        size /= 1024
    return f"{_decimal(words, size)} TiB"


def _decimal(words: Words, value: float) -> str:
    """One decimal place, with the language's decimal sign and no grouping: 1.5 / 1,5."""
    return f"{value:.1f}".replace(".", get_decimal_symbol(words.locale))


def _count(words: Words, value: int | None) -> str:
    """A count with the language's grouping; English groups with a space, as it always has (a
    comma reads as a decimal sign to half of Europe): 1 234 / 1.234."""
    text = words.number(value)
    return text.replace(",", " ") if words.language == "en" else text


def _markdown_cell(value: object) -> str:
    return " ".join(str(value).split()).replace("\\", "\\\\").replace("|", "\\|")


# --- the chart ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    rule: str
    value: int
    color: str
    # anonymized objects, stacked on the deleted ones in a lighter shade of the rule's colour
    anonymized: int = 0
    anonymized_y: float = 0.0
    anonymized_height: float = 0.0


@dataclass(frozen=True)
class WeekGroup:
    label: str
    short: str
    monday: date
    x: float
    width: float
    bars: list[Bar]


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    groups: list[WeekGroup]
    ticks: list[Tick]
    legend: list[tuple[str, str, float]]  # rule, colour, x (the page draws it below, wrapping)
    anonymized: bool = False  # some bar has an anonymized part (the legend says so)


def chart(report: Report) -> Chart:
    """Deleted objects per week (bar groups) and rule (bars), all systems and units together;
    anonymized objects stacked on top of them, lighter.

    The drawing is a fixed 680 units wide, so a year of weeks shrinks the bars, not the text.
    """
    words = i18n.words(report.language)
    rules = sorted({row.rule for row in report.deletions_by_week}) or [r.name for r in report.rules]
    colors = {rule: PALETTE[i % len(PALETTE)] for i, rule in enumerate(rules)}
    values: dict[tuple[str, str], int] = {}
    anonymized: dict[tuple[str, str], int] = {}
    for row in report.deletions_by_week:
        values[(row.week, row.rule)] = values.get((row.week, row.rule), 0) + row.deleted
        anonymized[(row.week, row.rule)] = anonymized.get((row.week, row.rule), 0) + row.anonymized
    top_value = _nice_ceiling(
        max((v + anonymized.get(key, 0) for key, v in values.items()), default=0)
    )
    width, left, right, top, plot_height = 680.0, 52.0, 672.0, 12.0, 170.0
    bottom = top + plot_height
    weeks = max(len(report.weeks), 1)
    group_width = (right - left) / weeks
    bar = min(16.0, group_width * 0.8 / max(len(rules), 1))
    label_every = -(-weeks // 14)  # at most 14 week labels
    groups = []
    for index, week in enumerate(report.weeks):
        x = left + index * group_width
        start = x + (group_width - bar * len(rules)) / 2
        bars = []
        for position, rule in enumerate(rules):
            value = values.get((week.label, rule), 0)
            height = plot_height * value / top_value if top_value else 0.0
            if value and height < 1:
                height = 1.0  # a deletion is never invisible
            more = anonymized.get((week.label, rule), 0)
            extra = plot_height * more / top_value if top_value else 0.0
            if more and extra < 1:
                extra = 1.0
            bars.append(
                Bar(
                    round(start + position * bar, 2),
                    round(bottom - height, 2),
                    round(max(bar - 0.5, 0.5), 2),
                    round(height, 2),
                    rule,
                    value,
                    colors[rule],
                    more,
                    round(bottom - height - extra, 2),
                    round(extra, 2),
                )
            )
        short = _week(words, week.label, short=True) if index % label_every == 0 else ""
        groups.append(
            WeekGroup(week.label, short, week.monday, round(x, 2), round(group_width, 2), bars)
        )
    ticks = [
        Tick(round(bottom - plot_height * step / 4, 2), _tick_label(words, top_value * step / 4))
        for step in range(5)
    ]
    legend = [(rule, colors[rule], left + i * 160.0) for i, rule in enumerate(rules)]
    shows_anonymized = any(anonymized.values())
    return Chart(
        width, bottom + 18, left, right, top, bottom, groups, ticks, legend, shows_anonymized
    )


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (at least 4)."""
    if value <= 0:
        return 0
    magnitude = 1
    while magnitude * 10 < value:
        magnitude *= 10
    for ceiling in (magnitude, 2 * magnitude, 5 * magnitude // 2, 5 * magnitude, 10 * magnitude):
        if value <= ceiling:
            return max(4, ceiling)
    return 10 * magnitude


def _tick_label(words: Words, value: float) -> str:
    if value >= 10 or value == 0:
        return _count(words, round(value))
    return f"{value:g}".replace(".", get_decimal_symbol(words.locale))


# --- HTML, PDF ------------------------------------------------------------------------------------


def html(report: Report) -> str:
    from zoneinfo import ZoneInfo

    template = _environment(report.language).get_template("report.html.j2")
    return template.render(
        report=report, summary=summary(report), chart=chart(report), zone=ZoneInfo(report.zone)
    )


def fleet_html(report: Fleet) -> str:
    """The fleet report (fleet.py): every system's verdict, then each system's first page."""
    template = _environment(report.language).get_template("fleet.html.j2")
    return template.render(fleet=report)


def fleet_pdf(report: Fleet) -> bytes:
    document: bytes = pdf_engine().HTML(string=fleet_html(report)).write_pdf()
    return document


def pdf_engine() -> Any:
    """The weasyprint module, or RetentiondError saying what to install."""
    try:
        with warnings.catch_warnings():
            # Without libharfbuzz-subset0 WeasyPrint warns about future versions; the PDF is fine.
            warnings.simplefilter("ignore", DeprecationWarning)
            import weasyprint
    except ImportError as error:
        raise RetentiondError(f"{PDF_HINT} ({error})") from None
    except OSError as error:  # cffi could not load Pango, HarfBuzz or fontconfig
        raise RetentiondError(f"{PDF_HINT} ({error})") from None
    return weasyprint


def pdf(report: Report) -> bytes:
    """The HTML page through WeasyPrint. RetentiondError when it or its libraries are missing."""
    engine = pdf_engine()
    document: bytes = engine.HTML(string=html(report)).write_pdf()
    return document


# --- JSON, CSV ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def document(report: Report) -> dict[str, Any]:
    """The report as a JSON-ready document: the same figures as the HTML page."""
    body = _plain(dataclasses.asdict(report))
    for rule in body["rules"]:
        rule.pop("keep_days", None)
    return {
        "report": "retentiond deletion report",
        "format": JSON_FORMAT,
        "period": {
            "from": body.pop("first_day"),
            "to": body.pop("last_day"),
            "zone": body.pop("zone"),
        },
        **body,
    }


def json_text(report: Report) -> str:
    return json.dumps(document(report), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ["section", "system", "rule", "week", "store", "unit", "item", "value"]


def fleet_json(report: Fleet) -> str:
    """The fleet report's figures: each system's verdict, whether its log verified, and its
    report's document (as `report --format json`), or why it has none."""
    value = {
        "first_day": report.first_day.isoformat(),
        "last_day": report.last_day.isoformat(),
        "generated_at": report.generated_at.isoformat(),
        "systems": [
            {
                "name": s.name,
                "level": s.level,
                "log_verified": s.log_verified,
                "problem": s.problem,
                "report": document(s.report) if s.report is not None else None,
            }
            for s in report.systems
        ],
    }
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def csv_text(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow(row)
    return out.getvalue()


def csv_rows(report: Report) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(section: str, item: str, value: object, **where: object) -> None:
        row = {column: "" for column in CSV_COLUMNS}
        row.update({key: "" if v is None else str(v) for key, v in where.items()})
        row["section"], row["item"] = section, item
        row["value"] = "" if value is None else str(_plain(value))
        rows.append(row)

    org = report.organisation
    for item, text in (
        ("controller", org.controller),
        ("dpo_contact", org.dpo_contact),
        ("processing_record", org.processing_record),
    ):
        add("organisation", item, text)
    for item, value in (
        ("from", report.first_day),
        ("to", report.last_day),
        ("zone", report.zone),
        ("generated_at", report.generated_at),
        ("version", report.version),
        ("config_path", report.config_path),
        ("config_sha256", report.config_sha256),
        ("systems", "; ".join(report.systems)),
    ):
        add("period", item, value)
    for rule in report.rules:
        for item in ("description", "purpose", "legal_basis", "start_event", "keep", "deadline"):
            add("rule", item, getattr(rule, item), rule=rule.name)
        add("rule", "action", rule.action, rule=rule.name)
        add("rule", "stages", rule.stages, rule=rule.name)
        for item in ("then_delete_after", "delete_deadline", "min_keep", "k_anonymity"):
            if getattr(rule, item) is not None:
                add("rule", item, getattr(rule, item), rule=rule.name)
        add("rule", "schedule", rule.schedule, rule=rule.name)
        for store in rule.stores:
            add("rule", "store_kind", store.kind, rule=rule.name, store=store.label)
    for c in report.compliance:
        where = {"system": c.system, "rule": c.rule}
        for item in (
            "keep",
            "deadline",
            "last_success",
            "last_run",
            "last_status",
            "remaining",
            "held",
        ):
            add("compliance", item, getattr(c, item), **where)
        add("compliance", "verdict", f"{c.verdict} ({c.level}): {c.note}", **where)
    for w in report.deletions_by_week:
        where = {"system": w.system, "rule": w.rule, "week": w.week, "unit": w.unit}
        add("deleted_week", "deleted", w.deleted, **where)
        add("deleted_week", "anonymized", w.anonymized, **where)
        if w.bytes is not None:
            add("deleted_week", "bytes", w.bytes, **where)
    for s in report.deletions_by_store:
        where = {"system": s.system, "rule": s.rule, "store": s.store, "unit": s.unit}
        add("deleted_store", "deleted", s.deleted, **where)
        add("deleted_store", "anonymized", s.anonymized, **where)
        add("deleted_store", "batches", s.batches, **where)
        if s.bytes is not None:
            add("deleted_store", "bytes", s.bytes, **where)
        add("deleted_store", "first_day", s.first_day, **where)
        add("deleted_store", "last_day", s.last_day, **where)
        for reason, count in s.skipped.items():
            add("deleted_store", f"skipped_{reason}", count, **where)
    for t in report.totals:
        where = {"system": t.system, "rule": t.rule, "unit": t.unit}
        add("total", "deleted", t.deleted, **where)
        add("total", "anonymized", t.anonymized, **where)
        if t.bytes is not None:
            add("total", "bytes", t.bytes, **where)
    for r in report.runs:
        add("runs", r.status, r.runs, system=r.system, rule=r.rule)
    for i in report.incidents:
        add("incident", i.kind, f"{_plain(i.at)} {i.reason}", system=i.system, rule=i.rule)
    _hold_rows(report, add)
    _subject_rows(report, add)
    for h in report.config_hashes:
        add(
            "config_hash",
            h.sha256,
            f"{_plain(h.first_seen)} to {_plain(h.last_seen)}, {h.runs} runs",
            system=h.system,
        )
    for reload in report.config_reloads:
        add(
            "config_reload",
            _plain(reload.at),
            f"{reload.old_sha256} -> {reload.new_sha256}; "
            f"changed {','.join(reload.rules_changed)}; added {','.join(reload.rules_added)}; "
            f"removed {','.join(reload.rules_removed)}",
            system=reload.system,
        )
    for log in report.logs:
        where = {"system": log.system, "store": log.path}
        add("log", "intact", log.intact, **where)
        add("log", "entries", log.entries, **where)
        add("log", "head_seq", log.head_seq, **where)
        add("log", "head_hash", log.head_hash, **where)
        add("log", "level", log.level, **where)
        if log.broken_line is not None:
            add("log", "broken_at_line", log.broken_line, **where)
            add("log", "broken_reason", log.broken_reason, **where)
        for finding in log.problems:
            add("log", f"problem_{finding.kind}", str(finding), **where)
        for finding in log.warnings:
            add("log", f"warning_{finding.kind}", str(finding), **where)
        if log.unsigned_tail:
            add("log", "unsigned_tail", log.unsigned_tail, **where)
        if log.torn_tail is not None:
            torn = log.torn_tail
            add("log", "torn_tail_line", f"{torn.file}:{torn.line}", **where)
            add("log", "torn_tail_bytes", torn.bytes, **where)
            add("log", "torn_tail_sha256", torn.sha256, **where)
        if log.checkpoint is not None:
            cp = log.checkpoint
            add("log", "checkpoint_signed_seq", cp.signed_seq, **where)
            add("log", "checkpoint_signed_hash", cp.signed_hash, **where)
            add("log", "checkpoint_key_fingerprint", cp.key_fingerprint, **where)
            add("log", "checkpoint_signature", cp.signature, **where)
        if log.begins_after:
            add("log", "begins_after", log.begins_after, **where)
        for command in log.verify_commands:
            add("log", "verify_command", command, **where)
        for repair in log.repairs:
            add(
                "log_repair",
                _plain(repair.at),
                f"entry {repair.seq}: {repair.reason}, {repair.removed_bytes} bytes moved aside "
                f"to {repair.moved_to}, sha256 {repair.removed_sha256}",
                **where,
            )
    for f in report.residual:
        add("residual", f.check, f"{f.state}: {f.detail}", store=f.place)
    for m in report.methods:
        add("method", m.kind, m.statement)
    for a in report.anonymization:
        add("anonymization", "wording", a.wording, rule=a.rule)
        add("anonymization", "k_anonymity", a.k_anonymity, rule=a.rule)
        for anonymized in a.stores:
            where = {"rule": a.rule, "store": anonymized.store}
            for transform in anonymized.fields:
                add("anonymization", f"field {transform.field}", transform.transform, **where)
            add("anonymization", "smallest_group", anonymized.smallest_group, **where)
            add("anonymization", "store_wording", anonymized.wording, **where)
    return rows


Add = Callable[..., None]


def _hold_rows(report: Report, add: Add) -> None:
    """Holds by id: their scope as counts, their history and what they keep, never a number."""
    for hold in report.holds.in_force:
        for item in (
            "reason",
            "approved_by",
            "review_by",
            "review_overdue",
            "until",
            "matches_nothing",
        ):
            add("hold", item, getattr(hold, item), store=hold.id)
        add("hold", "rules", "all" if hold.rules is None else "; ".join(hold.rules), store=hold.id)
        add("hold", "from", hold.from_day, store=hold.id)
        add("hold", "to", hold.to_day, store=hold.id)
        add("hold", "numbers", hold.numbers, store=hold.id)
        add("hold", "extensions", hold.extensions, store=hold.id)
    for event in report.holds.history:
        add(
            "hold_event",
            event.event,
            f"{_plain(event.at)} {event.hold}: {event.detail}",
            system=event.system,
            store=event.hold,
        )
    for held in report.holds.held:
        add(
            "hold_held",
            held.hold,
            held.held,
            system=held.system,
            store=held.store,
            week=_plain(held.counted_at),
        )


def _subject_rows(report: Report, add: Add) -> None:
    for e in report.erasures:
        where = {"system": e.system, "store": e.ticket}
        add("erasure", "started", e.started, **where)
        add("erasure", "finished", e.finished, **where)
        add("erasure", "status", e.status, **where)
        if e.reason:
            add("erasure", "reason", e.reason, **where)
        if e.outcome:
            add("erasure", "outcome", e.outcome, **where)
        for item in ("found", "deleted", "held"):
            add("erasure", item, getattr(e, item), **where)
        for s in e.stores:
            store_where = {"system": e.system, "rule": s.rule, "store": s.store, "unit": s.unit}
            for item in ("found", "held", "deleted"):
                add("erasure_store", f"{e.ticket} {item}", getattr(s, item), **store_where)
    for search in report.subject_searches:
        where = {"system": search.system, "store": search.ticket}
        add("subject_search", "at", search.at, **where)
        add("subject_search", "found", search.found, **where)
        add("subject_search", "held", search.held, **where)
        if search.outcome:
            add("subject_search", "outcome", search.outcome, **where)


# --- the rule catalogue ---------------------------------------------------------------------------


def rules_markdown(catalogue: Catalogue) -> str:
    return _environment(catalogue.language).get_template("rules.md.j2").render(catalogue=catalogue)


def rules_html(catalogue: Catalogue) -> str:
    env = _environment(catalogue.language)
    return env.get_template("rules.html.j2").render(catalogue=catalogue)

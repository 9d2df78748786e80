"""The report's words for the identifiers its figures carry (statuses, units, skip reasons, store
kinds, hold events, incident kinds): `label(words, identifier)` gives the text to print for one,
in the report's language. The identifiers themselves stay as they are in the values (CSS classes,
CSV and JSON keep them); only what a reader sees is translated. An identifier without a label is
printed as it is.

Also the few helpers the figures' modules share to write a value the language's way.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from babel.numbers import format_decimal

from retentiond.i18n import N_, Words, words
from retentiond.policy.durations import Duration
from retentiond.policy.schedule import Schedule

ENGLISH = words("en")  # the default of the functions that make text: the report as it always was

# identifier -> its English label, marked for the catalogue (N_) and translated by `label`.
# The English labels are the identifiers themselves: the English report prints them as it always
# has; the German catalogue gives each its German (tests/test_report_figures_language.py).
LABELS: dict[str, str] = {
    # store kinds (stores/kinds.py; its titles are the method statements' headings). "files"
    # names both a kind and a unit, and reads right as either
    "sql": N_("sql"),
    "asterisk_voicemail": N_("asterisk_voicemail"),
    "csv": N_("csv"),
    "3cx_call_history": N_("3cx_call_history"),
    # how a run ended (evidence/log RUN_END_STATUS, run_finished's status, engine/outcome.py),
    # and what the report says of a run or an erasure that recorded no end
    "done": N_("done"),
    "incomplete": N_("incomplete"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
    "refused": N_("refused"),
    "no end recorded": N_("no end recorded"),
    "unknown": N_("unknown"),
    # incident kinds besides the statuses (values.Incident.kind)
    "batch unconfirmed": N_("batch unconfirmed"),
    "forced": N_("forced"),
    # units, as the stores count their objects
    "rows": N_("rows"),
    "files": N_("files"),
    "messages": N_("messages"),
    "lines": N_("lines"),
    "calls": N_("calls"),
    "objects": N_("objects"),
    # why a store left an expired object alone (a batch's `skipped`)
    "undated": N_("undated"),
    "unparseable": N_("unparseable"),
    "unsafe_path": N_("unsafe_path"),
    "file_missing": N_("file_missing"),
    "still_referenced": N_("still_referenced"),
    "references_cleared": N_("references_cleared"),
    "changed": N_("changed"),
    "vanished": N_("vanished"),
    "unremovable": N_("unremovable"),
    "symlink": N_("symlink"),
    "lock_file": N_("lock_file"),
    "protected": N_("protected"),
    "other_filesystem": N_("other_filesystem"),
    "mount_point": N_("mount_point"),
    "not_regular_file": N_("not_regular_file"),
    "unreadable": N_("unreadable"),
    "hard_linked": N_("hard_linked"),
    "leftover_temp": N_("leftover_temp"),
    "unchanged": N_("unchanged"),
    "malformed_txt": N_("malformed_txt"),
    "aged_by_mtime": N_("aged_by_mtime"),
    "locked": N_("locked"),
    "named_by_row": N_("named_by_row"),
    "held": N_("held"),
    # hold events (values.HoldEvent.event); "changed" is above
    "added": N_("added"),
    "ended": N_("ended"),
    # erasure and search outcomes (engine/erasure.py)
    "erased": N_("erased"),
    "found": N_("found"),
    "no match": N_("no match"),
    "all held": N_("all held"),
    "not searched": N_("not searched"),
    # residual-copy findings' states (values.Finding.state); "found" is above
    "none": N_("none"),
    "not checked": N_("not checked"),
    # the state of a deletion log and the kinds of problem `audit verify` names
    "intact": N_("intact"),
    "chain": N_("chain"),
    "checkpoint": N_("checkpoint"),
    "order": N_("order"),
    "signature": N_("signature"),
    "key": N_("key"),
    "missing_checkpoint": N_("missing_checkpoint"),
    "no_checkpoints": N_("no_checkpoints"),
    "head": N_("head"),
    "unsigned_tail": N_("unsigned_tail"),
    "torn_tail": N_("torn_tail"),
    # residual-copy checks (values.Finding.check; evidence/report/residual.py marks them too)
    "MariaDB binary log": N_("MariaDB binary log"),
    "PostgreSQL WAL archive": N_("PostgreSQL WAL archive"),
    "transient_cdr table": N_("transient_cdr table"),
    "FreePBX backups folder": N_("FreePBX backups folder"),
    "3CX backups folder": N_("3CX backups folder"),
    "voicemail sent by e-mail": N_("voicemail sent by e-mail"),
    # rule actions
    "delete": N_("delete"),
    "anonymize": N_("anonymize"),
}


def label(words: Words, identifier: object) -> str:
    """What a reader sees for `identifier` in `words`' language."""
    text = str(identifier)
    english = LABELS.get(text)
    return text if english is None else words.gettext(english)


def whole(words: Words, value: int) -> str:
    """A count inside a sentence: as Python writes it in English (as the report always has),
    with the language's grouping otherwise (1.234)."""
    return str(value) if words.language == "en" else words.number(value)


def decimal(words: Words, value: float, places: int) -> str:
    """`value` with `places` decimals, rounded as Python's format does, in the language's way
    (3.5 / 3,5)."""
    fixed = f"{value:.{places}f}"
    if words.language == "en":
        return fixed
    pattern = "#,##0" + ("." + "0" * places if places else "")
    return format_decimal(Decimal(fixed), pattern, locale=words.language)


def span_text(span: timedelta, words: Words) -> str:
    """'1 day', '3 days', '1 hour', '1 day 6 hours' (as `retentiond status` names an interval),
    in `words`' language."""
    hours, rest = divmod(span.seconds, 3600)
    parts = [
        words.ngettext("{n} day", "{n} days", span.days),
        words.ngettext("{n} hour", "{n} hours", hours),
        words.ngettext("{n} minute", "{n} minutes", rest // 60),
    ]
    counts = [span.days, hours, rest // 60]
    shown = [part.format(n=n) for part, n in zip(parts, counts, strict=True) if n]
    return " ".join(shown) or words.ngettext("{n} minute", "{n} minutes", 0).format(n=0)


def period_text(words: Words, period: Duration | None) -> str:
    """A configured period (keep, then_delete_after, min_keep, the grace) for a reader: in
    English as the config writes it ("3 months", "90d"), in another language its parts in that
    language ("3 Monate", "90 Tage")."""
    if period is None:
        return ""
    if words.language == "en":
        return str(period)
    parts = [
        (period.years, words.ngettext("{n} year", "{n} years", period.years)),
        (period.months, words.ngettext("{n} month", "{n} months", period.months)),
        (period.weeks, words.ngettext("{n} week", "{n} weeks", period.weeks)),
        (period.days, words.ngettext("{n} day", "{n} days", period.days)),
    ]
    shown = [text.format(n=words.number(n)) for n, text in parts if n]
    return " ".join(shown) or words.ngettext("{n} day", "{n} days", 0).format(n=0)


WEEKDAY_NAMES = {
    "mon": N_("Monday"),
    "tue": N_("Tuesday"),
    "wed": N_("Wednesday"),
    "thu": N_("Thursday"),
    "fri": N_("Friday"),
    "sat": N_("Saturday"),
    "sun": N_("Sunday"),
}


def schedule_text(words: Words, schedule: Schedule) -> str:
    """A rule's schedule for a reader: in English as the config writes it ("daily 03:15"); in
    another language "täglich 03:15", "wöchentlich Sonntag 03:15", a cron expression as code."""
    if words.language == "en":
        return schedule.text
    minute, hour, _, _, weekday = schedule.cron
    raw = " ".join(schedule.text.strip().lower().split())
    at = f"{int(hour):02d}:{int(minute):02d}" if hour.isdigit() and minute.isdigit() else ""
    if raw == "hourly":
        return words.gettext("hourly")
    if raw.startswith("daily "):
        return words.gettext("daily at {time}").format(time=at)
    if raw.startswith("weekly ") and weekday in WEEKDAY_NAMES:
        day = words.gettext(WEEKDAY_NAMES[weekday])
        return words.gettext("weekly on {day} at {time}").format(day=day, time=at)
    return words.gettext("cron {expression}").format(expression=schedule.text)


# The reasons engine/holds.py records when a hold ends: fixed wording, so the report can say them
# in its language (a reason it does not know is shown as the log has it).
UNTIL_PASSED = "its until date has passed"
ENDED_BY = "not found in the config; ended by "
_UNTIL_PASSED = N_("its until date has passed")
_ENDED_BY = N_("not found in the config; ended by {option}")


def ended_reason(words: Words, recorded: str | None) -> str | None:
    """Why a hold ended, as the log recorded it, in `words`' language."""
    if recorded == UNTIL_PASSED:
        return words.gettext(_UNTIL_PASSED)
    if recorded and recorded.startswith(ENDED_BY):
        return words.gettext(_ENDED_BY).format(option=recorded.removeprefix(ENDED_BY))
    return recorded

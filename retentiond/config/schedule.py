"""When a rule runs: `hourly`, `daily HH:MM`, `weekly mon HH:MM`, or cron with weekday names."""

from __future__ import annotations

import re
from dataclasses import dataclass

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_HINT = (
    "write 'hourly', 'daily 03:15', 'weekly sun 03:15', or a cron expression such as "
    "'15 3 * * mon-fri' (weekdays by name)"
)

_HHMM = r"([01]?\d|2[0-3]):([0-5]\d)"
_DAILY = re.compile(rf"^daily\s+{_HHMM}$")
_WEEKLY = re.compile(rf"^weekly\s+([a-z]{{3}})\s+{_HHMM}$")
_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")
_CRON_DOW = re.compile(r"^(\*|[a-z]{3}(-[a-z]{3})?(,[a-z]{3}(-[a-z]{3})?)*)$")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; `cron` holds the five fields (minute hour day month weekday)."""

    text: str
    cron: tuple[str, str, str, str, str]


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raises ValueError with a hint. Numeric weekdays are refused on purpose:
    cron and APScheduler 3 disagree on what 0 means, and a wrong weekday is a silent mistake."""
    raw = " ".join(text.strip().lower().split())
    if raw == "hourly":
        return Schedule(text, ("0", "*", "*", "*", "*"))
    if daily := _DAILY.match(raw):
        return Schedule(text, (str(int(daily.group(2))), str(int(daily.group(1))), "*", "*", "*"))
    if weekly := _WEEKLY.match(raw):
        day = weekly.group(1)
        if day not in WEEKDAYS:
            raise ValueError(f"{day!r} is not a weekday; use one of {', '.join(WEEKDAYS)}")
        at_hour, at_minute = int(weekly.group(2)), int(weekly.group(3))
        return Schedule(text, (str(at_minute), str(at_hour), "*", "*", day))
    fields = raw.split(" ")
    if len(fields) == 5:
        minute, hour, dom, month, dow = fields
        if not all(_CRON_FIELD.match(f) for f in (minute, hour, dom, month)):
            raise ValueError(f"{text!r}: minute, hour, day and month must be numbers, ranges or *")
        if not _CRON_DOW.match(dow) or any(
            part not in WEEKDAYS for part in re.split(r"[,\-]", dow) if part != "*"
        ):
            raise ValueError(
                f"{text!r}: the weekday field takes names such as mon-fri, not numbers"
            )
        return Schedule(text, (minute, hour, dom, month, dow))
    raise ValueError(f"{text!r} is not a schedule: {SCHEDULE_HINT}")

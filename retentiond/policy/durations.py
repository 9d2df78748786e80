"""Retention periods in calendar terms: `3 months` and `P3M` are three calendar months."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from dateutil.relativedelta import relativedelta

_UNITS = {
    "d": "days",
    "day": "days",
    "days": "days",
    "w": "weeks",
    "week": "weeks",
    "weeks": "weeks",
    "m": "months",
    "mo": "months",
    "month": "months",
    "months": "months",
    "y": "years",
    "year": "years",
    "years": "years",
}
_SIMPLE = re.compile(r"^(\d+)\s*([a-z]+)$")
_ISO = re.compile(r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")

DURATION_HINT = "write a period such as '90d', '12w', '3 months', '1y' or ISO 8601 'P3M'"
# Longer is a typo (and beyond it `now - keep` leaves the calendar datetime can count).
MAX_YEARS = 1000


@dataclass(frozen=True)
class Duration:
    """A calendar period. Months and years are calendar months and years, never 30 or 365 days."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    text: str = ""

    def delta(self) -> relativedelta:
        return relativedelta(years=self.years, months=self.months, weeks=self.weeks, days=self.days)

    def before(self, moment: datetime) -> datetime:
        """This period before `moment` on its wall clock; month ends clamp (May 31 - 3m: Feb 28)."""
        return moment - self.delta()

    def after(self, moment: datetime) -> datetime:
        return moment + self.delta()

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.weeks or self.days)

    def shorter_than(self, other: Duration) -> bool:
        """Strictly shorter on every calendar (compared from a fixed long month, 1 Jan 2001)."""
        start = datetime(2001, 1, 31)
        return bool(self.after(start) < other.after(start)) and bool(
            self.after(datetime(2001, 2, 28)) < other.after(datetime(2001, 2, 28))
        )

    def __str__(self) -> str:
        return self.text or f"P{self.years}Y{self.months}M{self.weeks}W{self.days}D"


def parse_duration(text: str) -> Duration:
    """Parse '90d', '12w', '3m', '3 months', '1y', 'P3M', 'P1Y6M'. Raises ValueError with a hint."""
    raw = text.strip()
    iso = _ISO.match(raw.upper())
    simple = _SIMPLE.match(raw.lower())
    if iso:
        years, months, weeks, days = (_amount(g) if g else 0 for g in iso.groups())
        duration = Duration(years=years, months=months, weeks=weeks, days=days, text=raw)
    elif simple and simple.group(2) in _UNITS:
        duration = Duration(text=raw, **{_UNITS[simple.group(2)]: _amount(simple.group(1))})
    else:
        raise ValueError(f"{_shown(text)} is not a period: {DURATION_HINT}")
    months = duration.years * 12 + duration.months
    days = duration.weeks * 7 + duration.days
    if months > MAX_YEARS * 12 or days > MAX_YEARS * 366 or months * 31 + days > MAX_YEARS * 366:
        raise ValueError(f"{_shown(text)} is longer than {MAX_YEARS} years; check the number")
    return duration


def _amount(digits: str) -> int:
    # \d also matches other scripts' digits; a number of 20 digits is over any bound anyway
    return int(digits) if len(digits) <= 20 else 10**20


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")

"""What the commands print alike: times, sizes, and the one-line failure with its exit code."""

from __future__ import annotations

import sys
from datetime import datetime, tzinfo
from typing import NoReturn

import click


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"retentiond: {message}", err=True)
    sys.exit(code)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def local_time(moment: datetime | None, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if moment else "-"


def byte_size(count: int | None) -> str:
    size = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

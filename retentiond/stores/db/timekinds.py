"""The kinds of time column retentiond reads, and the values that count as a time at all.

Shared by the time-column code (`timecols`) and the dialects, which guard their SQL with the
same plausible ranges; it imports neither.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

# How the time column stores an instant, which decides the bound and how values read back.
TimeKind = Literal["local", "utc", "aware", "date", "epoch", "epoch_text", "text"]

# Values below these are clock garbage (MariaDB zero dates, epoch 0): undated, never the oldest.
DATETIME_FLOOR = datetime(1000, 1, 1)
# Epoch seconds are dated only with ten digits (2001-09-09 to 2286-11-20): a duration, a count
# or milliseconds in the time column is no call time, so it is counted undated, never read as one.
EPOCH_FLOOR = 1_000_000_000
EPOCH_CEILING = 10_000_000_000


KIND_WORDS: dict[TimeKind, str] = {
    "local": "wall-clock time in the configured zone",
    "utc": "TIMESTAMP, read in UTC",
    "aware": "timestamp with time zone",
    "date": "date only: a row expires after its whole day has",
    "epoch": "epoch seconds",
    "epoch_text": "epoch seconds stored as text",
    "text": "text 'YYYY-MM-DD HH:MM:SS' in the configured zone",
}

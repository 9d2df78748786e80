"""How many rows an SQL store's batch takes: decided here, and only here.

With batch_size in the config, every batch is that size, which makes runs comparable. Without
it, the rows per batch adapt: after each batch the size moves toward the one whose transaction
takes about `batch_time` (BATCH_TIME; TABLE_LOCK_BATCH_TIME where a DELETE locks the whole
table, MyISAM, Aria and SQLite, since the PBX's inserts wait for as long as it runs). Steps are
bounded (ADAPT_GROWTH, ADAPT_SHRINK) so one slow or fast batch does not swing the size.
"""

from __future__ import annotations

from dataclasses import dataclass

from retentiond.config.model import SqlStoreConfig

# The batch size of a table a DELETE locks whole, unless batch_size is set: about 10-20 ms per
# DELETE on FreePBX's cdr (MyISAM), so the PBX's inserts barely wait.
TABLE_LOCK_BATCH_SIZE = 250
# Adaptive batches (batch_size not set): the first batch has batch_size's default rows (or
# TABLE_LOCK_BATCH_SIZE), then each one is sized for a transaction of about this many seconds.
BATCH_TIME = 0.2
TABLE_LOCK_BATCH_TIME = 0.02
# A batch is at most this much larger, or smaller, than the one before, and within these bounds.
ADAPT_GROWTH = 1.5
ADAPT_SHRINK = 0.5
ADAPT_MIN_ROWS = 20
ADAPT_MAX_ROWS = 50_000


@dataclass(frozen=True)
class BatchSizing:
    """The rows of the first batch (of every batch, when fixed), and the seconds each batch's
    transaction aims at when the size adapts (None: a fixed size)."""

    rows: int
    batch_time: float | None


def batch_sizing(store: SqlStoreConfig, locks_table: bool = False) -> BatchSizing:
    """batch_size when it is set; else adaptive batches aiming at `batch_time`, shorter and
    starting smaller where each DELETE holds the whole table (`locks_table`) and the PBX's
    inserts wait."""
    if "batch_size" in store.model_fields_set:
        return BatchSizing(store.batch_size, None)
    rows = min(store.batch_size, TABLE_LOCK_BATCH_SIZE) if locks_table else store.batch_size
    aim = store.batch_time or (TABLE_LOCK_BATCH_TIME if locks_table else BATCH_TIME)
    return BatchSizing(rows, aim)


def adapted_size(size: int, batch_time: float | None, rows: int, seconds: float) -> int:
    """After a batch of `rows` that took `seconds`: the size that would take `batch_time`.

    Only a batch of at least half the current size says how long a full one takes (the
    last batch of a run is often small, and its fixed costs would dominate).
    """
    if batch_time is None or seconds <= 0 or rows < size / 2:
        return size
    wanted = rows * batch_time / seconds
    bounded = min(max(wanted, size * ADAPT_SHRINK), size * ADAPT_GROWTH)
    return int(min(max(bounded, ADAPT_MIN_ROWS), ADAPT_MAX_ROWS))

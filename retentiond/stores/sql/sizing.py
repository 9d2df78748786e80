"""How many rows an SQL store's batch takes: decided here, and only here.

With batch_size in the config, every batch is that size, which makes runs comparable. Without
it, the rows per batch adapt: after each batch the size moves toward the one whose transaction
takes about `batch_time` (BATCH_TIME; TABLE_LOCK_BATCH_TIME where a DELETE locks the whole
table, MyISAM, Aria and SQLite, since the PBX's inserts wait for as long as it runs). Steps are
bounded (ADAPT_GROWTH, ADAPT_SHRINK) so one slow or fast batch does not swing the size
(`retentiond.stores.db.sizing`, which the 3CX store shares).
"""

from __future__ import annotations

from dataclasses import dataclass

from retentiond.config.model import SqlStoreConfig
from retentiond.stores.db.sizing import BATCH_TIME, adapted_size

__all__ = ["BATCH_TIME", "BatchSizing", "adapted_size", "batch_sizing"]

# The batch size of a table a DELETE locks whole, unless batch_size is set: about 10-20 ms per
# DELETE on FreePBX's cdr (MyISAM), so the PBX's inserts barely wait.
TABLE_LOCK_BATCH_SIZE = 250
# Adaptive batches (batch_size not set): the first batch has batch_size's default rows (or
# TABLE_LOCK_BATCH_SIZE), then each one is sized for a transaction of about BATCH_TIME seconds,
# or this many where a DELETE locks the whole table.
TABLE_LOCK_BATCH_TIME = 0.02


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

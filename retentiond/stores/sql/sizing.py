"""How many rows an SQL store's batch takes: decided here, and only here.

With batch_size in the config, every batch is that size, which makes runs comparable. Without
it, the rows per batch adapt: after each batch the size moves toward the one whose transaction
takes about `batch_time` (BATCH_TIME; TABLE_LOCK_BATCH_TIME where a DELETE locks the whole
table, MyISAM, Aria and SQLite, since the PBX's inserts wait for as long as it runs;
KEY_WALK_BATCH_TIME where batches walk the primary key of a row-locking table). Steps are
bounded (ADAPT_GROWTH, ADAPT_SHRINK) so one slow or fast batch does not swing the size
(`retentiond.stores.db.sizing`, which the 3CX store shares).
"""

from __future__ import annotations

from dataclasses import dataclass

from retentiond.config.model import SqlStoreConfig
from retentiond.stores.db.sizing import BATCH_TIME, adapted_size

__all__ = ["BATCH_TIME", "BatchSizing", "adapted_size", "batch_sizing", "first_batch_rows"]

# The batch size of a table a DELETE locks whole, unless batch_size is set: about 10-20 ms per
# DELETE on FreePBX's cdr (MyISAM), so the PBX's inserts barely wait.
TABLE_LOCK_BATCH_SIZE = 250
# Adaptive batches (batch_size not set): the first batch has batch_size's default rows (or
# TABLE_LOCK_BATCH_SIZE), then each one is sized for a transaction of about BATCH_TIME seconds,
# or this many where a DELETE locks the whole table.
TABLE_LOCK_BATCH_TIME = 0.02
# Batches that walk an integer primary key (no index on the time column: FreePBX's cel) on an
# engine that locks rows: each DELETE takes a range of the oldest keys, far from the newest end
# where the PBX inserts, so a longer transaction does not hold its inserts; and a key range
# costs less per row the larger it is. On `cel` InnoDB (issue 20, benchmarks/README.md) 0.5 s
# purged 12% faster than 0.2 s with the writer's p99 at 22 ms against 47 ms, and fixed
# batches of 20,000 rows (about 0.35 s each) 1.6x faster than 0.2 s.
KEY_WALK_BATCH_TIME = 0.5


@dataclass(frozen=True)
class BatchSizing:
    """The rows of the first batch (of every batch, when fixed), and the seconds each batch's
    transaction aims at when the size adapts (None: a fixed size)."""

    rows: int
    batch_time: float | None


def batch_sizing(
    store: SqlStoreConfig, locks_table: bool = False, walks_key: bool = False
) -> BatchSizing:
    """batch_size when it is set; else adaptive batches aiming at `batch_time`, shorter and
    starting smaller where each DELETE holds the whole table (`locks_table`) and the PBX's
    inserts wait, longer where batches walk the primary key of a table whose DELETEs lock
    only their rows (`walks_key`)."""
    rows = first_batch_rows(store, locks_table)
    if "batch_size" in store.model_fields_set:
        return BatchSizing(rows, None)
    default = BATCH_TIME
    if locks_table:
        default = TABLE_LOCK_BATCH_TIME
    elif walks_key:
        default = KEY_WALK_BATCH_TIME
    return BatchSizing(rows, store.batch_time or default)


def first_batch_rows(store: SqlStoreConfig, locks_table: bool = False) -> int:
    """The rows of the first batch: batch_size when set, else its default, or at most
    TABLE_LOCK_BATCH_SIZE where each DELETE holds the whole table."""
    if "batch_size" in store.model_fields_set or not locks_table:
        return store.batch_size
    return min(store.batch_size, TABLE_LOCK_BATCH_SIZE)

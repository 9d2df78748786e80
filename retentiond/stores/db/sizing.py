"""Adaptive batch sizes, shared by the stores that size their batches by time (sql, 3CX).

After each batch the size moves toward the one whose transaction takes about the aimed time.
Steps are bounded (ADAPT_GROWTH, ADAPT_SHRINK) so one slow or fast batch does not swing the size.
"""

from __future__ import annotations

# The seconds each batch's transaction aims at, where a DELETE locks only its rows (InnoDB,
# PostgreSQL). Not longer: on FreePBX's cdr (InnoDB, seven secondary indexes) 0.5 s purged
# slower (15-24 s against 5-12 s) with a higher writer p99 (issue 20, benchmarks/README.md).
BATCH_TIME = 0.2
# A batch is at most this much larger, or smaller, than the one before, and within these bounds.
ADAPT_GROWTH = 1.5
ADAPT_SHRINK = 0.5
ADAPT_MIN_ROWS = 20
ADAPT_MAX_ROWS = 50_000


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

"""A batch's per-object checks and unlinks, a few objects at a time.

On a cold cache an unlink waits on the disk (the inode, the block bitmaps its blocks go back
to) and on the ext4 journal; `unlinkat` and `stat` release the GIL, so a few threads overlap
those waits where one waits for each in turn (issue 20: a cold batch's unlinks took about half
the time with 4 threads). Each task is one whole object (a message, a recording): its own
checks and unlinks, in their order, right one after the other, exactly as one thread would do
them. The caller hands over one folder's objects at a time and keeps that folder's descriptor
open until `run` returns, so no task meets a descriptor closed or reused under it.

Every task's outcome comes back, in the order of the objects. An unexpected error in a task
cancels the tasks not yet started and is raised once every started one has ended: nothing is
unlinked after the batch has failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overlap:
    """Runs tasks on up to `threads` threads (1: in the caller's thread, one after the other)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    def run(self, task: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`task(item)` for every item, the results in the items' order."""
        if self.threads == 1 or len(items) < 2:
            return [task(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="retentiond-unlink")
        futures: list[Future[R]] = [self._pool.submit(task, item) for item in items]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if pending:  # a task failed: start no more, let the started ones end
            for future in pending:
                future.cancel()
            wait(pending)
        for future in futures:
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error  # the first failed task's, in the items' order
        return [future.result() for future in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Overlap:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""Overlap: a batch's tasks on a few threads, every outcome back, nothing after a failure."""

from __future__ import annotations

import threading
import time

import pytest

from retentiond.stores.fs.overlap import Overlap


def test_results_come_back_in_the_order_of_the_items() -> None:
    with Overlap(4) as overlap:
        # Later items finish first: the order is the items', not the finishing order.
        results = overlap.run(lambda n: time.sleep((10 - n) / 1000) or n * n, list(range(10)))

    assert results == [n * n for n in range(10)]


def test_tasks_run_at_the_same_time_with_several_threads() -> None:
    # Each task waits for three others at a barrier: one after the other, it would time out.
    barrier = threading.Barrier(4, timeout=5)

    with Overlap(4) as overlap:
        results = overlap.run(lambda n: barrier.wait() >= 0 and n, [0, 1, 2, 3])

    assert results == [0, 1, 2, 3]


def test_one_thread_runs_the_tasks_in_the_callers_thread_in_order() -> None:
    seen: list[tuple[int, str]] = []

    with Overlap(1) as overlap:
        overlap.run(lambda n: seen.append((n, threading.current_thread().name)), [0, 1, 2])

    assert seen == [(n, threading.current_thread().name) for n in range(3)]


def test_a_failed_task_is_raised_after_every_started_task_ended_and_the_rest_never_start() -> None:
    started: list[int] = []
    ended: list[int] = []
    lock = threading.Lock()

    def task(n: int) -> int:
        with lock:
            started.append(n)
        if n == 1:
            raise ValueError("task 1 failed")
        if n > 1:
            time.sleep(0.05)  # still running when task 1 has failed
        with lock:
            ended.append(n)
        return n

    overlap = Overlap(2)
    try:
        with pytest.raises(ValueError, match="task 1 failed"):
            overlap.run(task, list(range(200)))
        with lock:
            running_when_raised = sorted(set(started) - set(ended) - {1})
    finally:
        overlap.close()

    assert running_when_raised == []  # nothing still unlinking once the batch has failed
    assert len(started) < 200  # the tasks not yet started were cancelled
    time.sleep(0.1)
    assert len(started) == len(set(started))
    assert sorted(set(started) - {1}) == sorted(ended)  # and none started afterwards

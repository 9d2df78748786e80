"""How `retentiond run` starts the work: the daemon with its monitoring, or every rule once.

Both attach the same monitoring to the runs: pings per rule, and Prometheus metrics when the
config asks for them (over HTTP for the daemon, a node_exporter textfile for `run --once`).
prometheus-client is imported only then: it costs 13 MiB. `run --once` finishes the current
batch on SIGTERM or SIGINT and then stops: a batch is never cut in half.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Rule
from retentiond.engine.engine import Engine
from retentiond.engine.observers import RunObserver
from retentiond.engine.outcome import RunOutcome
from retentiond.evidence import log as audit

Progress = Callable[[str, int, int], None]


def serve(loaded: LoadedConfig) -> int:
    """The daemon with its monitoring: metrics over HTTP when configured, pings per rule."""
    from retentiond.service.daemon import Daemon
    from retentiond.service.pings import Pings

    config = loaded.config
    observers: list[RunObserver] = []
    metrics = None
    if config.monitoring.metrics_listen:  # prometheus-client only when asked for: 13 MiB
        from retentiond.service.metrics import Metrics

        metrics = Metrics(config.rules, config.safety.deadline_grace)
        metrics.seed_from_audit(audit.log_path(config))
        metrics.serve(config.monitoring.metrics_listen)
        observers.append(metrics)
    pings = Pings(config.rules, config.monitoring.ping_timeout)
    observers.append(pings)
    try:
        return Daemon(loaded, observers=observers).serve()
    finally:
        pings.close(5)
        if metrics is not None:
            metrics.close()


def run_once(
    loaded: LoadedConfig,
    rules: Sequence[Rule],
    *,
    progress: Progress | None = None,
    after_rule: Callable[[], None] | None = None,
    force: bool = False,
    end_holds: tuple[str, ...] = (),
) -> tuple[list[RunOutcome], tuple[int, str]]:
    """Each rule once, in order, with pings and the metrics textfile; the outcomes and the
    deletion log's head after them."""
    from retentiond.service.pings import Pings

    config = loaded.config
    pings = Pings(rules, config.monitoring.ping_timeout)
    observers: list[RunObserver] = [pings]
    metrics = None
    if config.monitoring.metrics_textfile:
        from retentiond.service.metrics import Metrics

        metrics = Metrics(config.rules, config.safety.deadline_grace)
        observers.insert(0, metrics)
    with (
        stop_on_signals() as stop,
        audit.open_log(config) as log,
    ):
        engine = Engine(
            loaded,
            stop=stop,
            progress=progress,
            observers=observers,
            force=force,
            end_holds=end_holds,
        )
        outcomes = []
        for rule in rules:
            outcomes.append(engine.run(rule, log))
            if after_rule is not None:
                after_rule()
            if stop.is_set():
                break
        head = log.head
    pings.close(config.monitoring.ping_timeout)
    if metrics is not None and config.monitoring.metrics_textfile:
        # Seeded from the whole log, so a rule not run now keeps its last success in the file.
        metrics.seed_from_audit(audit.log_path(config))
        metrics.write_textfile(config.monitoring.metrics_textfile)
    return outcomes, head


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT finish the current batch, then stop: a batch is never cut in half."""
    stop = threading.Event()

    def request_stop(signum: int, _: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, request_stop)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

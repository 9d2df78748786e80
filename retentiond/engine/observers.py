"""Who is told when runs start and end: metrics, pings, the daemon's sd_notify status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from retentiond.config.model import Rule
from retentiond.engine.outcome import RunOutcome

log = structlog.get_logger()


class RunObserver(Protocol):
    """Told when runs start and end: metrics, pings, sd_notify status. Must not raise."""

    def run_started(self, rule: Rule) -> None: ...

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None: ...


def tell(observers: Sequence[RunObserver], event: str, *args: Any) -> None:
    """Call `event` on every observer. Observers are monitoring: their failure never stops
    enforcement."""
    for observer in observers:
        try:
            getattr(observer, event)(*args)
        except Exception as error:  # any observer bug must not stop a run
            log.warning(
                "observer failed", observer=type(observer).__name__, error=type(error).__name__
            )

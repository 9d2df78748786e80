"""Which deletion log a config names, and its writer: the one place that turns the `audit`
settings into an `AuditLog`, so every command and the daemon write (and rotate) alike.

The writer is returned closed: use it in a `with`, which opens and locks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retentiond.errors import AuditError
from retentiond.evidence.log.entries import Entry
from retentiond.evidence.log.writer import AuditLog

if TYPE_CHECKING:
    from retentiond.config.model import Config


def log_path(config: Config) -> Path:
    """The log the config names (audit.path); its rotated files lie beside it."""
    return config.audit.path


def open_log(config: Config) -> AuditLog:
    """The writer of the config's log, with its rotation options."""
    settings = config.audit
    return AuditLog(
        settings.path,
        rotate_bytes=settings.rotate_bytes,
        rotate_yearly=settings.rotate_yearly,
    )


def open_serial_log(config: Config, on_failure: Callable[[], None]) -> SerialAuditLog:
    """The daemon's writer of the config's log, with its rotation options (`SerialAuditLog`)."""
    settings = config.audit
    return SerialAuditLog(
        settings.path,
        on_failure=on_failure,
        rotate_bytes=settings.rotate_bytes,
        rotate_yearly=settings.rotate_yearly,
    )


class SerialAuditLog(AuditLog):
    """The daemon's one writer, shared by the worker (runs) and the main thread (reloads).

    After a failed append an AuditLog refuses every further one, so `failure` is kept and
    `on_failure` called: the daemon then exits for systemd to restart it, rather than live on
    with every run failing.
    """

    def __init__(self, path: Path, on_failure: Callable[[], None], **options: Any) -> None:
        super().__init__(path, **options)
        self._append_lock = threading.Lock()
        self._on_failure = on_failure
        self.failure: str | None = None

    def append(self, type: str, **fields: Any) -> Entry:
        with self._append_lock:  # two appends at once would give two entries the same seq
            try:
                return super().append(type, **fields)
            except AuditError as error:
                self.failure = str(error)
                self._on_failure()
                raise

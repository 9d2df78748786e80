"""The daemon's own log: structlog, readable on a terminal, JSON lines for journald otherwise.

Events carry rule names, store labels and counts only. Tracebacks never show local variables,
because locals of a store can hold the very phone numbers being deleted.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

# syslog priorities for the "<N>" prefix journald reads (SyslogLevelPrefix=yes is its default)
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _syslog_prefix(_: WrappedLogger, method: str, line: str | bytes) -> str:
    text = line.decode() if isinstance(line, bytes) else line
    return f"<{_PRIORITY.get(method, 6)}>{text}"


def configure(
    *,
    verbose: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
    json: bool | None = None,
) -> None:
    """Set up logging once per process. Logs go to stderr, so stdout stays the command's output."""
    out = stream if stream is not None else sys.stderr
    as_json = not out.isatty() if json is None else json
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: list[Any]
    if as_json:
        renderer = [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(sort_keys=True),
            _syslog_prefix,
        ]
    else:
        renderer = [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def _drop(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    raise structlog.DropEvent


def silence() -> None:
    """No log output at all (tests of other output, `--json` consumers that want quiet)."""
    structlog.configure(processors=[_drop])

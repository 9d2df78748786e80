"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET per call.

systemd (`Type=notify`) reads READY=1, STATUS=…, WATCHDOG=1, RELOADING=1 and STOPPING=1 from
it. Without NOTIFY_SOCKET (started by hand, in a test) every call does nothing. A send never
waits: a reader that is slow or gone must not stall a run or its stop, so a full socket drops
the message with a debug event.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger()


def notify(*lines: str) -> bool:
    """Send `lines` as one message; True if it was sent. Never raises: monitoring, not control."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.send("\n".join(lines).encode(), socket.MSG_DONTWAIT)
    except BlockingIOError:
        log.debug("notify dropped", reason="socket full")
        return False
    except OSError:
        return False
    return True


def reloading() -> tuple[str, str]:
    """The lines that start a reload; systemd ≥ 253 wants the monotonic time with them."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None if systemd wants none."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (our parent, a wrapper)
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds / 2 if seconds > 0 else None

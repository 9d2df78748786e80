"""sd_notify never waits: systemd may read its socket late or not at all (a stalled manager, a
full queue), and a run or its stop must not wait for it. Real AF_UNIX datagram sockets only."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from structlog.testing import capture_logs

from retentiond.service import sdnotify


@pytest.fixture
def unread_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A notify socket with a tiny receive buffer that nobody reads."""
    address = f"retentiond-test-{secrets.token_hex(6)}"
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    reader.bind("\0" + address)
    monkeypatch.setenv("NOTIFY_SOCKET", f"@{address}")
    yield reader
    reader.close()  # also releases a sender the old code left blocked in send()


def test_sends_to_a_full_socket_return_at_once_and_are_dropped_with_a_debug_event(
    unread_socket: socket.socket,
) -> None:
    sent: list[bool] = []

    def ping() -> None:
        for _ in range(100):  # the queue holds about ten datagrams
            sent.append(sdnotify.notify("WATCHDOG=1"))

    with capture_logs() as events:
        started = time.monotonic()
        sender = threading.Thread(target=ping, daemon=True)
        sender.start()
        sender.join(timeout=5)
        took = time.monotonic() - started

    assert not sender.is_alive(), f"notify blocked after {len(sent)} messages"
    assert took < 2
    assert sent[0] is True
    assert sent[-1] is False  # the queue is full: dropped, not waited for
    dropped = [e for e in events if e["event"] == "notify dropped"]
    assert dropped and all(e["log_level"] == "debug" for e in dropped)
    assert len(dropped) == sent.count(False)


def test_a_message_is_delivered_again_once_the_reader_catches_up(
    unread_socket: socket.socket,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:  # fills the queue
        other.connect(unread_socket.getsockname())
        with contextlib.suppress(BlockingIOError):
            while True:
                other.send(b"WATCHDOG=1", socket.MSG_DONTWAIT)
    assert _within(2, lambda: sdnotify.notify("STOPPING=1")) is False
    with contextlib.suppress(BlockingIOError):
        while True:
            unread_socket.recv(4096, socket.MSG_DONTWAIT)
    assert sdnotify.notify("STOPPING=1") is True
    assert unread_socket.recv(4096) == b"STOPPING=1"


def _within(seconds: float, call: Callable[[], bool]) -> bool:
    """`call()` in a thread; fails the test if it has not returned after `seconds`."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return result[0]

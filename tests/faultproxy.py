"""A small TCP proxy for fault tests: it forwards to a real database server and, on request,
cuts connections, holds back the server's answers, or refuses new connections.

    proxy = FaultProxy("127.0.0.1", 3306)   # listens on 127.0.0.1:<proxy.port>
    proxy.cut_after(20_000)                 # cut every connection after 20 kB more answers
    proxy.delay(5)                          # answers arrive 5 s late
    proxy.refuse()                          # new connections are closed at once
    proxy.stop_listening()                  # new connections are refused (ECONNREFUSED)
    proxy.lose_commit(skip=2)               # the 3rd COMMIT is applied, its reply never arrives
    proxy.normal()                          # pass-through again

Every connection is a pair of sockets and two pump threads; cutting one shuts both sockets down
so the client sees what it would see when a server or a firewall drops the connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

CHUNK = 65536
POLL = 0.05  # seconds a pump waits before it looks at the controls again


class _Link:
    """One proxied connection: the client's socket and the server's."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self.dropping_reply = False  # a COMMIT went through: drop its answer and cut

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to (host, port), with faults switched on and off at run time."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._delay = 0.0
        self._budget: int | None = None  # server->client bytes left before the next cut
        self._refusing = False
        self._accept_left: int | None = None  # connections accepted before refusing
        self._commits_to_skip: int | None = None  # COMMITs let through before one is lost
        self._commit_applied = True
        self._after_lost_commit: Callable[[], None] | None = None
        self._closing = False
        self.accepted = 0  # connections forwarded to the server
        self.refused = 0  # connections closed at once by refuse() or allow()
        self.cuts = 0  # times open connections were cut
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    # -- controls --------------------------------------------------------------------------------

    def normal(self) -> None:
        """Pass everything through; listen again if stopped."""
        with self._lock:
            self._delay = 0.0
            self._budget = None
            self._refusing = False
            self._accept_left = None
            self._commits_to_skip = None
        if self._listener is None:
            self._listen()

    def cut_all(self) -> int:
        """Close both sides of every open connection now; the number cut."""
        with self._lock:
            links = list(self._links)
            self._links.clear()
            if links:
                self.cuts += 1
        for link in links:
            link.close()
        return len(links)

    def cut_after(self, nbytes: int) -> None:
        """Forward `nbytes` more bytes from the server (all connections together), then cut every
        open connection once, in the middle of whatever answer those bytes belonged to."""
        with self._lock:
            self._budget = nbytes

    def delay(self, seconds: float) -> None:
        """Hold back every chunk the server sends for `seconds` before passing it on."""
        with self._lock:
            self._delay = seconds

    def refuse(self, on: bool = True) -> None:
        """Accept new connections and close them at once, as a server that is going down."""
        with self._lock:
            self._refusing = on

    def allow(self, count: int) -> None:
        """Forward the next `count` connections, then close any later one at once."""
        with self._lock:
            self._accept_left = count

    def lose_commit(
        self, skip: int = 0, applied: bool = True, then: Callable[[], None] | None = None
    ) -> None:
        """Let `skip` COMMITs through, then cut the connection that sends the next one: once the
        server has answered it, dropping the answer (`applied`: committed, and the client cannot
        know), or before passing it on (never committed). `then` runs right after the cut."""
        with self._lock:
            self._commits_to_skip = skip
            self._commit_applied = applied
            self._after_lost_commit = then

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused by the kernel."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        self._closing = True
        self.stop_listening()
        self.cut_all()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- machinery -------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # the same port again after stop_listening
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(
            target=self._accept, args=(listener,), name="faultproxy-accept", daemon=True
        ).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stop_listening closed it
            with self._lock:
                refuse = self._refusing or self._accept_left == 0
                if self._accept_left:
                    self._accept_left -= 1
                if refuse:
                    self.refused += 1
            if refuse:
                _slam(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _slam(client)
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._lock:
                self.accepted += 1
                self._links.add(link)
            threading.Thread(target=self._pump_up, args=(link,), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(link,), daemon=True).start()

    def _pump_up(self, link: _Link) -> None:
        """Client to server, untouched but for the COMMIT `lose_commit` picks."""
        while not link.closed.is_set():
            chunk = _receive(link.client)
            if chunk is None:
                continue
            if chunk and _is_commit(chunk) and self._loses_commit():
                if not self._commit_applied:
                    self._lose(link)
                    return
                link.dropping_reply = True
            if not chunk or not _send(link.server, chunk):
                break
        self._drop(link)

    def _loses_commit(self) -> bool:
        with self._lock:
            if self._commits_to_skip is None:
                return False
            if self._commits_to_skip > 0:
                self._commits_to_skip -= 1
                return False
            self._commits_to_skip = None
            return True

    def _lose(self, link: _Link) -> None:
        """Cut the connection of a lost COMMIT, then tell the test."""
        with self._lock:
            self._links.discard(link)
            self.cuts += 1
            then = self._after_lost_commit
        link.close()
        if then is not None:
            then()

    def _pump_down(self, link: _Link) -> None:
        """Server to client: delayed, and cut when the byte budget runs out."""
        while not link.closed.is_set():
            chunk = _receive(link.server)
            if chunk is None:
                continue
            if not chunk:
                break
            if link.dropping_reply:
                self._lose(link)
                return
            received = time.monotonic()
            with self._lock:
                delay = self._delay
                cut = False
                if self._budget is not None:
                    if len(chunk) >= self._budget:
                        chunk, cut = chunk[: self._budget], True
                        self._budget = None
                    else:
                        self._budget -= len(chunk)
            while delay > 0 and not link.closed.is_set():
                left = received + delay - time.monotonic()
                if left <= 0:
                    break
                link.closed.wait(min(left, POLL))
            if link.closed.is_set():
                break
            if chunk and not _send(link.client, chunk):
                break
            if cut:
                self.cut_all()
                return
        self._drop(link)

    def _drop(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
        link.close()


def _receive(sock: socket.socket) -> bytes | None:
    """A chunk, b"" at the end, or None when nothing came within POLL."""
    try:
        readable, _, _ = select.select([sock], [], [], POLL)
        if not readable:
            return None
        return sock.recv(CHUNK)
    except (OSError, ValueError):  # closed meanwhile
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _is_commit(chunk: bytes) -> bool:
    """A COMMIT on its own: a MySQL COM_QUERY packet (3 bytes length, 1 sequence, 0x03) or a
    PostgreSQL simple Query message ('Q', 4 bytes length, the text ending in NUL)."""
    return chunk[4:] == b"\x03COMMIT" or (chunk[:1] == b"Q" and chunk[5:] == b"COMMIT\x00")


def _slam(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

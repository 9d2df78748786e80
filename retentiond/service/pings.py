"""Pings to an uptime monitor (healthchecks.io style): when a rule's run starts, succeeds or fails.

A run observer. Pings are sent from one background thread through a bounded queue, so a slow or
unreachable monitor never delays enforcement; when the queue is full a ping is dropped with a
warning. The request bodies hold the rule name, the status and counts: no personal data. Logs
name the monitor's host only, since ping URLs often embed a secret token.

    pings = Pings(config.rules, config.monitoring.ping_timeout)
    engine = Engine(loaded, observers=[metrics, pings])
    ...
    pings.close(5)   # at shutdown: send what is queued, for at most 5 seconds
"""

from __future__ import annotations

import base64
import contextlib
import queue
import threading
import time
import urllib.error
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog

from retentiond import __version__
from retentiond.config.model import PingConfig, Rule
from retentiond.engine.observers import RunObserver
from retentiond.engine.outcome import RunOutcome

log = structlog.get_logger()

USER_AGENT = f"retentiond/{__version__}"
QUEUE_SIZE = 64
_RESPONSE_LIMIT = 4096  # a monitor's answer is read (and discarded) up to this many bytes
_POLL = 0.2  # seconds the sender waits for work before checking whether it was closed


@dataclass(frozen=True)
class _Ping:
    rule: str
    event: str  # start | success | failure
    url: str
    body: bytes | None  # None: GET; else POST with this text


class Pings(RunObserver):
    """A RunObserver that calls each rule's `ping` URLs: start, then success or failure.

    The URLs are those of the rule being run (so a reloaded config needs no new Pings);
    `rules` starts the sender thread at once when any of them has pings. `timeout` bounds
    each request. Success means status `done`; any other status calls the failure URL.
    Nothing here raises into the engine.
    """

    def __init__(
        self, rules: Iterable[Rule] = (), timeout: float = 10.0, *, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.timeout = timeout
        self._queue: queue.Queue[_Ping | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._abandon = threading.Event()
        self.sent = 0  # pings the monitor accepted (2xx), for tests and status
        self.failed = 0  # pings that failed or were dropped
        if any(rule.ping is not None for rule in rules):
            self._start()

    # -- RunObserver ---------------------------------------------------------------------

    def run_started(self, rule: Rule) -> None:
        try:
            if rule.ping is not None and rule.ping.start:
                self._enqueue(_Ping(rule.name, "start", rule.ping.start, None))
        except Exception as error:  # monitoring must never stop enforcement
            log.warning(
                "ping not queued", rule=getattr(rule, "name", None), error=type(error).__name__
            )

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None:
        try:
            if rule.ping is None:
                return
            done = outcome.status == "done"
            url = rule.ping.success if done else rule.ping.failure
            if url:
                event = "success" if done else "failure"
                self._enqueue(_Ping(rule.name, event, url, _summary(rule.name, outcome)))
        except Exception as error:  # monitoring must never stop enforcement
            log.warning(
                "ping not queued", rule=getattr(rule, "name", None), error=type(error).__name__
            )

    def report_attempted(self, ping: PingConfig | None, period: str, error: str | None) -> None:
        """A DPO report delivered (success URL) or failed (failure URL) for `period`."""
        try:
            url = None if ping is None else (ping.failure if error else ping.success)
            if url:
                event = "failure" if error else "success"
                text = f"report {period}: " + (f"failed: {error}" if error else "delivered")
                self._enqueue(_Ping("reports", event, url, text.encode()))
        except Exception as error_:  # monitoring must never stop enforcement
            log.warning("ping not queued", rule="reports", error=type(error_).__name__)

    # -- queue and sender ----------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(
                    target=self._send_all, name="retentiond-pings", daemon=True
                )
                self._thread.start()

    def _enqueue(self, ping: _Ping) -> None:
        if self._closing.is_set():
            log.warning("ping dropped: shutting down", rule=ping.rule, ping=ping.event)
            return
        self._start()
        try:
            self._queue.put_nowait(ping)
        except queue.Full:
            self._count(failed=1)
            log.warning(
                "ping dropped: too many pings waiting",
                rule=ping.rule,
                ping=ping.event,
                host=_host(ping.url),
                waiting=self._queue.maxsize,
            )

    def _send_all(self) -> None:
        while not self._abandon.is_set():
            try:
                ping = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if ping is None or self._abandon.is_set():
                return
            try:
                self._send(ping)
            except Exception as error:  # a bug here must not end the sender
                self._count(failed=1)
                log.warning(
                    "ping failed", rule=ping.rule, ping=ping.event, error=type(error).__name__
                )

    def _send(self, ping: _Ping) -> None:
        import urllib.request  # here: most configs ping nothing, and it costs a run 40-80 ms

        url, authorization = _split_credentials(ping.url)
        headers = {"User-Agent": USER_AGENT}
        if ping.body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        request = urllib.request.Request(  # noqa: S310 (the config allows http and https only)
            url, data=ping.body, method="GET" if ping.body is None else "POST", headers=headers
        )
        if authorization:  # not passed on to wherever a redirect points
            request.add_unredirected_header("Authorization", authorization)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read(_RESPONSE_LIMIT)
                status = response.status
        except Exception as error:
            self._count(failed=1)
            log.warning(
                "ping failed",
                rule=ping.rule,
                ping=ping.event,
                host=_host(ping.url),
                reason=_reason(error, ping.url),
            )
            return
        self._count(sent=1)
        log.debug(
            "ping sent",
            rule=ping.rule,
            ping=ping.event,
            host=_host(ping.url),
            status=status,
            seconds=round(time.monotonic() - started, 3),
        )

    def _count(self, *, sent: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.failed += failed

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued, for at most `timeout` seconds, then stop. True if all was sent.

        Pings still waiting after that are dropped with a warning; a request in flight is left
        to its own timeout in the (daemon) sender thread. Later pings are dropped.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self._closing.set()
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        if self._abandon.is_set():  # closed before, and gave up then
            return not thread.is_alive()
        woken = False
        with contextlib.suppress(queue.Full):  # wakes the sender at once; if full, it polls
            self._queue.put_nowait(None)
            woken = True
        thread.join(max(deadline - time.monotonic(), 0.0))
        if not thread.is_alive():
            return True
        self._abandon.set()
        log.warning(
            "pings not sent before shutdown",
            waiting=max(self._queue.qsize() - woken, 0),
            seconds=timeout,
        )
        return False


def _summary(rule: str, outcome: RunOutcome) -> bytes:
    """A short body for the monitor's log: the rule, its status and counts. No store labels."""
    text = f"retentiond {__version__}: rule {rule} {outcome.status}, {outcome.deleted} deleted"
    remaining = [s.remaining for s in outcome.stores if s.remaining is not None]
    if remaining:
        text += f", {sum(remaining)} expired left"
    text += f", {outcome.seconds:.1f} s\n"
    return text.encode()


def _split_credentials(url: str) -> tuple[str, str | None]:
    """`https://user:secret@host/…` as the URL without them and a Basic Authorization value
    (urllib would take `user:secret@host` for the host name)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = base64.b64encode(pair.encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _host(url: str) -> str:
    """The host of a URL, without credentials, path or query (which may hold a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


def _reason(error: Exception, url: str) -> str:
    """Why a request failed, without the URL (it may embed a token)."""
    if isinstance(error, urllib.error.HTTPError):
        error.close()
        text = f"HTTP {error.code}"
    elif isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError):
            text = "timed out"
        elif isinstance(reason, OSError):
            text = reason.strerror or str(reason) or type(reason).__name__
        else:
            text = str(reason)
    elif isinstance(error, TimeoutError):
        text = "timed out"
    elif isinstance(error, OSError):
        text = error.strerror or str(error) or type(error).__name__
    else:
        text = type(error).__name__
    return text.replace(url, _host(url))

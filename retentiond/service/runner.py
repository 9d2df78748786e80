"""The daemon's run process: each run of a rule, and the start-up check, in a process of its own.

A run with an SQL store imports SQLAlchemy and a database driver (20 to 40 MiB) that no module
can unload, so the daemon, which between runs only waits, would keep them for good. It starts a
fresh `python -m retentiond.service.runner` instead (never a fork: the daemon has threads) and
talks to it over the child's stdin and stdout, one JSON object a line. The child's stderr is the
daemon's: its log lines go where the daemon's go.

The daemon keeps the audit log, the one writer that holds its lock. The child's engine writes
through an `AuditProxy`: the daemon appends each entry (`append` with fsync) before it answers,
so the child applies nothing the log has not recorded. Checkpoints are signed in the child,
which reads the key; the daemon appends a signature only while it is over the log's head.

Daemon to child: the task (first line) and the answers to the child's calls, in order.

    {"task": "run", "rule": NAME, ...}     one run of one rule
    {"task": "start", "rules": [...], ...} sign the log's unsigned end, open every store once

The task carries the LoadedConfig the daemon has accepted, pickled: the child runs with exactly
that config, even if the file has changed since. Only the child unpickles: the daemon never
runs anything a child sends.

Child to daemon: calls (answered: `append`, `append_unsynced`, `append_signature`,
`rotate_if_due`, `last_entry`, `holds`) and news (`tell`, not answered: `run_started`,
`progress`, `run_finished`, `crashed`, `stopped`, `tail_unsigned`, `store_failed`, `checked`).

SIGTERM and SIGINT stop a run after its current batch (the daemon forwards its own stop; systemd
sends SIGTERM to every process of the service as well). The start-up check ignores them, as the
daemon itself does until it is ready.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import structlog

from retentiond import logs
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import HoldConfig, Rule
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome, StoreOutcome
from retentiond.engine.undated import Undated
from retentiond.errors import AuditError, StoreError
from retentiond.evidence.log import (
    CHECKPOINT,
    GENESIS,
    AuditLog,
    Entry,
    Signer,
    json_safe,
    log_path,
)

log = structlog.get_logger()

# The child tells systemd nothing: only the daemon speaks for the service.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_ERRORS: dict[str, type[Exception]] = {
    "AuditError": AuditError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}
_DAEMON_GONE = (
    "the daemon, which writes the audit log, is gone; nothing more is deleted in this run"
)

News = Callable[[str, dict[str, Any]], None]


# --- the daemon's side -------------------------------------------------------------------------


class RunProcess:
    """One child process, from the daemon: starts it, answers its calls, hands on its news."""

    def __init__(self, task: dict[str, Any], loaded: LoadedConfig) -> None:
        environment = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        # Born with the stop signals blocked (a mask survives exec): one that comes before the
        # child has its handlers waits for them instead of killing it mid-start.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.process = subprocess.Popen(
                # -P: the package, never a `retentiond` folder in the working directory
                [sys.executable, "-P", "-m", "retentiond.service.runner"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=environment,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        level = _log_level()
        self._send(
            task
            | {
                "loaded": _pickled(loaded),
                "verbose": level <= logging.DEBUG,
                "quiet": level >= logging.WARNING,
            }
        )

    def serve(self, audit: AuditLog, holds: Callable[[], Sequence[HoldConfig]], news: News) -> int:
        """Answer the child's calls until it ends; its exit status (negative: the signal that
        ended it). A message that is not the protocol's (a bug) ends the child."""
        assert self.process.stdout is not None and self.process.stdin is not None
        try:
            for line in self.process.stdout:
                try:
                    message = json.loads(line)
                    if "call" in message:
                        self._send(_answer(message, audit, holds))
                    else:
                        news(str(message["tell"]), message)
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    log.error("the run process broke the protocol", error=type(error).__name__)
                    self.process.kill()
                    break
        except BaseException:
            self.process.kill()  # never leave it waiting for an answer that cannot come
            raise
        finally:
            self.process.stdout.close()
            with suppress(OSError):  # the daemon lives for months: no descriptor may leak
                self.process.stdin.close()
            self.process.wait()
        return self.process.returncode

    def stop(self) -> None:
        """Ask the child to stop after its current batch."""
        self.process.send_signal(signal.SIGTERM)  # a no-op once it has been waited for

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the child is gone: `serve` sees the end of its output and its exit status


def exit_status(status: int) -> str:
    """A child's exit status as a person reads it: `killed by SIGKILL`, `exit code 1`."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit code {status}"


def outcome_from_fields(fields: dict[str, Any]) -> RunOutcome:
    """The RunOutcome a child reported with `run_finished`."""
    cutoff = fields["cutoff"]
    return RunOutcome(
        **fields
        | {
            "stores": [_store_outcome(store) for store in fields["stores"]],
            "cutoff": None if cutoff is None else datetime.fromisoformat(cutoff),
        }
    )


def _store_outcome(fields: dict[str, Any]) -> StoreOutcome:
    undated = fields.get("undated")
    return StoreOutcome(**fields | {"undated": None if undated is None else Undated(**undated)})


def _answer(
    message: dict[str, Any], audit: AuditLog, holds: Callable[[], Sequence[HoldConfig]]
) -> dict[str, Any]:
    call = message["call"]
    try:
        if call == "holds":
            return {"holds": _pickled(list(holds()))}
        if call == "append":
            entry: Entry | None = audit.append(message["type"], **message["fields"])
        elif call == "append_unsynced":
            entry = audit.append_unsynced(message["type"], **message["fields"])
        elif call == "append_signature":
            entry = audit.append_signature(message["fields"])
        elif call == "rotate_if_due":
            entry = audit.rotate_if_due()
        elif call == "last_entry":
            entry = audit.last_entry
        else:
            raise TypeError(f"no such call: {call}")
    except AuditError as error:
        return {"error": "AuditError", "message": str(error)}
    except (TypeError, ValueError) as error:  # a bug in the caller, raised there as here
        return {"error": type(error).__name__, "message": str(error)}
    return {"entry": None if entry is None else asdict(entry)}


def _pickled(value: Any) -> str:
    return base64.b64encode(pickle.dumps(value)).decode("ascii")


def _log_level() -> int:
    """The daemon's log level, for the child to log at the same."""
    level = getattr(structlog.get_logger().bind(), "get_effective_level", None)
    return int(level()) if callable(level) else logging.INFO


# --- the child's side --------------------------------------------------------------------------


class _Channel:
    """The child's end: calls wait for their answer; news does not."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self._reader = reader
        self._writer = writer

    def receive(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise AuditError(_DAEMON_GONE)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def call(self, call: str, **fields: Any) -> dict[str, Any]:
        self._send({"call": call, **fields})
        return self.receive()

    def tell(self, news: str, **fields: Any) -> None:
        self._send({"tell": news, **fields})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            self._writer.flush()
        except OSError:
            raise AuditError(_DAEMON_GONE) from None


class AuditProxy:
    """The audit log as the child sees it (an `AuditWriter`): the daemon does every write."""

    def __init__(self, channel: _Channel, path: Path) -> None:
        self._channel = channel
        self.path = path  # read directly (history, hold fingerprints): reading needs no lock

    @property
    def head(self) -> tuple[int, str]:
        last = self.last_entry
        return (0, GENESIS) if last is None else (last.seq, last.hash)

    @property
    def last_entry(self) -> Entry | None:
        return self._result(self._channel.call("last_entry"))

    def append(self, type: str, **fields: Any) -> Entry:
        """Returns once the daemon has written and synced the entry, as `AuditLog.append`."""
        return self._written("append", type, fields)

    def append_unsynced(self, type: str, **fields: Any) -> Entry:
        return self._written("append_unsynced", type, fields)

    def checkpoint(self, signer: Signer) -> Entry:
        """Sign the head here; the daemon appends it unless the head has moved on meanwhile (a
        reload's entry), and then the new head is signed."""
        for _ in range(100):
            seq, head_hash = self.head
            if seq == 0:
                raise ValueError("an empty audit log has nothing to sign")
            answer = self._channel.call("append_signature", fields=signer.sign(seq, head_hash))
            entry = self._result(answer)
            if entry is not None:
                return entry
        raise AuditError(f"the audit log {self.path} changed while a checkpoint was signed")

    def sign_tail(self, signer: Signer) -> Entry | None:
        """As `AuditLog.sign_tail`: sign the log's end unless a checkpoint already does."""
        last = self.last_entry
        if last is None or last.type == CHECKPOINT:
            return None
        return self.checkpoint(signer)

    def rotate_if_due(self) -> Entry | None:
        return self._result(self._channel.call("rotate_if_due"))

    def _written(self, call: str, type: str, fields: dict[str, Any]) -> Entry:
        # Datetimes become text as the log writes them; a wrong type fails here, as it would there
        safe = {key: json_safe(value, key) for key, value in fields.items()}
        entry = self._result(self._channel.call(call, type=type, fields=safe))
        assert entry is not None
        return entry

    @staticmethod
    def _result(answer: dict[str, Any]) -> Entry | None:
        if "error" in answer:
            raise _ERRORS.get(answer["error"], RuntimeError)(answer["message"])
        fields = answer["entry"]
        return None if fields is None else Entry(**fields)


class _Reporter:
    """The engine's observer in the child: tells the daemon, whose observers do the work."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def run_started(self, rule: Rule) -> None:
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        self._channel.tell("run_started", run_id=run_id)

    def run_finished(self, rule: Rule, outcome: RunOutcome) -> None:
        fields = asdict(outcome)
        fields["cutoff"] = outcome.cutoff.isoformat() if outcome.cutoff else None
        self._channel.tell("run_finished", outcome=fields)


def _run(channel: _Channel, task: dict[str, Any], loaded: LoadedConfig) -> int:
    stop = threading.Event()

    def stop_after_batch(signum: int, _: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_after_batch)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if stop.is_set():
        channel.tell("stopped")  # the daemon stopped while this process started
        return 0

    def holds() -> list[HoldConfig]:
        # Asked before every batch: a hold a reload added meanwhile stops the next batch
        answer = channel.call("holds")
        found = pickle.loads(base64.b64decode(answer["holds"]))  # noqa: S301 - from the daemon
        assert isinstance(found, list)
        return found

    def progress(label: str, done: int, expected: int) -> None:
        channel.tell("progress", label=label, done=done, expected=expected)

    engine = Engine(
        loaded, stop=stop, progress=progress, observers=[_Reporter(channel)], holds=holds
    )
    audit = AuditProxy(channel, log_path(loaded.config))
    try:
        engine.run(loaded.config.rule(task["rule"]), audit)
    except Exception as crash:  # the daemon logs it; its text may name a store's file
        channel.tell("crashed", error=type(crash).__name__)
        return 1
    return 0


def _start(channel: _Channel, task: dict[str, Any], loaded: LoadedConfig) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    key = loaded.config.audit.signing_key
    if key is not None:
        try:
            AuditProxy(channel, log_path(loaded.config)).sign_tail(Signer.from_config(key))
        except AuditError as error:
            channel.tell("tail_unsigned", reason=str(error))
    engine = Engine(loaded)
    for name in task["rules"]:
        try:
            with engine.open_stores(loaded.config.rule(name)):
                pass
        except StoreError as error:
            channel.tell("store_failed", rule=name, message=str(error))
            return 0
    channel.tell("checked")
    return 0


def _private_pipes() -> tuple[IO[bytes], IO[bytes]]:
    """The pipes to the daemon, moved off fds 0 and 1: whatever a library prints then goes to
    stderr, never into the answers."""
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return reader, writer


def main() -> int:
    """The child: born with SIGTERM, SIGINT and SIGHUP blocked; each task unblocks them once
    it has its handlers."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the daemon's business
    reader, writer = _private_pipes()
    channel = _Channel(reader, writer)
    task = channel.receive()
    logs.configure(verbose=task["verbose"], quiet=task["quiet"])
    loaded = pickle.loads(base64.b64decode(task["loaded"]))  # noqa: S301 - from the daemon
    assert isinstance(loaded, LoadedConfig)
    tasks = {"run": _run, "start": _start}
    return tasks[task["task"]](channel, task, loaded)


if __name__ == "__main__":
    sys.exit(main())

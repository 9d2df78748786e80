"""The Asterisk manager interface (AMI): refreshing message-waiting lamps after a batch.

One login per batch, a VoicemailRefresh per mailbox, a logoff. Failures name no mailbox and no
secret; the secret comes from `ami.secret_file` or the systemd credential `ami`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from retentiond.config.model import AmiConfig
from retentiond.credentials import CredentialError, read_secret

_AMI_NAME = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: nothing can end a line


class AmiFailure(Exception):
    """The lamps could not be refreshed; `reason` names no mailbox and no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ami_refresh(ami: AmiConfig, mailboxes: Sequence[tuple[bytes, ...]]) -> int:
    """Log in to AMI, send VoicemailRefresh for each (context, mailbox), log off.

    Returns how many refreshes Asterisk refused; raises AmiFailure when it cannot be asked.
    """
    secret = ami_secret(ami)
    if not _AMI_NAME.fullmatch(ami.username):
        raise AmiFailure("ami.username must be one word of printable ASCII")
    try:
        with socket.create_connection((ami.host, ami.port), timeout=ami.timeout) as connection:
            connection.settimeout(ami.timeout)
            with connection.makefile("rb") as replies:
                session = _AmiSession(connection, replies)
                session.banner()
                login = [("Action", "Login"), ("Username", ami.username), ("Secret", secret)]
                reply = session.send([*login, ("Events", "off")])
                if reply.get("response", "").lower() != "success":
                    raise AmiFailure("login refused; check ami.username and the AMI secret")
                refused = 0
                for number, (context, mailbox) in enumerate(mailboxes, start=1):
                    names = [name.decode("ascii", "replace") for name in (context, mailbox)]
                    if not all(_AMI_NAME.fullmatch(name) for name in names):
                        refused += 1  # a folder name that could smuggle a line into AMI
                        continue
                    where = [("Context", names[0]), ("Mailbox", names[1])]
                    action = [("Action", "VoicemailRefresh"), *where, ("ActionID", str(number))]
                    reply = session.send(action)
                    if reply.get("response", "").lower() != "success":
                        refused += 1
                with contextlib.suppress(AmiFailure):  # refreshed already; a rude goodbye is fine
                    session.send([("Action", "Logoff")])
                return refused
    except TimeoutError:
        raise AmiFailure(f"no answer within {ami.timeout:g}s (ami.timeout)") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise AmiFailure(f"cannot talk to {ami.host}:{ami.port} ({reason})") from None


class _AmiSession:
    """The AMI line protocol: `Key: Value` lines, each block ended by an empty line."""

    _LINE_LIMIT = 8192
    _BLOCK_LIMIT = 200  # lines

    def __init__(self, connection: socket.socket, replies: BinaryIO) -> None:
        self._connection = connection
        self._replies = replies

    def banner(self) -> None:
        line = self._replies.readline(self._LINE_LIMIT)
        if not line.startswith(b"Asterisk Call Manager"):
            raise AmiFailure("the port does not speak the Asterisk manager protocol")

    def send(self, fields: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Send one action and return its response block, passing over events."""
        message = "".join(f"{key}: {value}\r\n" for key, value in fields) + "\r\n"
        self._connection.sendall(message.encode("utf-8"))
        while True:
            block = self._block()
            if "response" in block:
                return block

    def _block(self) -> dict[str, str]:
        block: dict[str, str] = {}
        for _ in range(self._BLOCK_LIMIT):
            line = self._replies.readline(self._LINE_LIMIT)
            if not line:
                raise AmiFailure("Asterisk closed the connection")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                if block:
                    return block
                continue
            key, colon, value = text.partition(":")
            if colon:
                block.setdefault(key.strip().lower(), value.strip())
        raise AmiFailure("an AMI reply too long to be one")


def ami_secret(ami: AmiConfig) -> str:
    path = ami.secret_file
    if path is None:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if not credentials:
            raise AmiFailure(
                "secret missing: set ami.secret_file or pass the systemd credential 'ami'"
            )
        path = Path(credentials) / "ami"
    try:
        secret = read_secret(path, "the AMI secret file")
    except CredentialError as error:
        raise AmiFailure(str(error)) from None
    if not secret or "\n" in secret or "\r" in secret:
        raise AmiFailure(f"secret file {path} must hold the secret on one line")
    return secret

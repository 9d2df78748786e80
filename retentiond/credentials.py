"""Reading passwords and secrets from files, and only from files that are not world-readable.

A password file anyone on the PBX can read is a leak waiting to be copied; retentiond refuses it
with the `chmod` that fixes it, as it refuses a readable signing key. Group-readable files are
accepted: `root:retentiond 0640` is how a service user is given a secret. A file others may
write is refused too, as ssh refuses such keys: whoever can change it can point retentiond at
a database of their own. Files under systemd's `$CREDENTIALS_DIRECTORY` are made private by
systemd itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class CredentialError(Exception):
    """A secret file that must not or cannot be used; the message says what to change."""


def secret_file_problem(path: Path, what: str) -> str | None:
    """What is wrong with a secret file's type or mode, told by its metadata alone, so that
    loading the config can say it; None when it looks fine or is not there (yet) to tell."""
    try:
        info = os.lstat(path)
    except (OSError, ValueError):
        return None  # missing or out of reach: reading it says why, when it is needed
    if stat.S_ISLNK(info.st_mode):
        return f"{what} {path} is a symlink; point the config at the file itself"
    if not stat.S_ISREG(info.st_mode):
        return f"{what} {path} is not a regular file"
    return _mode_problem(info.st_mode, path, what)


def _mode_problem(mode: int, path: Path, what: str) -> str | None:
    if mode & stat.S_IROTH:
        return (
            f"{what} {path} is readable by every user on this host; "
            f"run `chmod o-rwx {path}` (0600, or 0640 with the retentiond group)"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "every user on this host" if mode & stat.S_IWOTH else "its group"
        return (
            f"{what} {path} can be changed by {who}; "
            f"run `chmod go-w {path}` (0600, or 0640 with the retentiond group)"
        )
    return None


def read_secret(path: Path, what: str) -> str:
    """The file's text without its line end, after checking who may read it."""
    try:
        # Without blocking: a FIFO in the file's place would hang the open until written to.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == 40:  # ELOOP: a symlink
            raise CredentialError(
                f"{what} {path} is a symlink; point the config at the file itself"
            ) from None
        raise CredentialError(f"cannot read {what} {path}: {error.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CredentialError(f"{what} {path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        problem = _mode_problem(info.st_mode, path, what)
        if problem is not None:
            raise CredentialError(problem)
        data = handle.read(64 * 1024)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{what} {path} is not UTF-8 text") from None
    return text.rstrip("\r\n")

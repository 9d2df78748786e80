"""Reading passwords and secrets from files, and only from files that are not world-readable.

A password file anyone on the PBX can read is a leak waiting to be copied; retentiond refuses it
with the `chmod` that fixes it, as it refuses a readable signing key. Group-readable files are
accepted: `root:retentiond 0640` is how a service user is given a secret. Files under systemd's
`$CREDENTIALS_DIRECTORY` are made private by systemd itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class CredentialError(Exception):
    """A secret file that must not or cannot be used; the message says what to change."""


def read_secret(path: Path, what: str) -> str:
    """The file's text without its line end, after checking who may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
        if info.st_mode & stat.S_IROTH:
            raise CredentialError(
                f"{what} {path} is readable by every user on this host; "
                f"run `chmod o-rwx {path}` (0600, or 0640 with the retentiond group)"
            )
        data = handle.read(64 * 1024)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{what} {path} is not UTF-8 text") from None
    return text.rstrip("\r\n")

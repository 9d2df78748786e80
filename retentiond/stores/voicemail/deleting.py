"""Deleting one planned voicemail message under its folder's lock, if it is still the one planned.

Asterisk renumbers and moves messages (msg0003 becomes msg0002 when one is deleted, INBOX to Old
when one is heard): a message is deleted only when its number still holds exactly the files
planned, unchanged, and its origtime still says what it said. The audio goes first and the `.txt`
last, as Asterisk counts messages by their `.txt`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from datetime import datetime

from retentiond.stores.fs.ages import mtime_age
from retentiond.stores.fs.folders import (
    CHANGED,
    UNREADABLE,
    UNREMOVABLE,
    VANISHED,
    Skip,
    check_component,
    same_file,
)
from retentiond.stores.voicemail.messages import (
    PlannedMessage,
    message_stem,
    parse_origtime,
    read_txt,
)


def delete_message(
    fd: int, by_stem: Mapping[bytes, set[bytes]], message: PlannedMessage, *, cutoff: datetime
) -> tuple[int, str | None, int]:
    """Under the folder lock: unlink one message if it is still the one planned.

    Touches nothing but the message's own files and reads `by_stem` only, so several messages
    of the held folder can be deleted at once (fs/overlap.py).

    Returns the bytes freed, why the message was not (completely) deleted (None if it was), and
    how many of the files unlinked had another name (HARD_LINKED).
    """
    if message.age is not None and not message.age < cutoff:
        return 0, CHANGED, 0  # a plan made for another cutoff is never applied
    try:
        for name in (message.stem, *(file.name for file in message.files)):
            check_component(name)
    except Skip as skip:
        return 0, skip.reason, 0
    planned = {file.name for file in message.files}
    if any(message_stem(name) != message.stem for name in planned):
        return 0, CHANGED, 0
    if not message.aged_by_mtime and message.txt not in planned:
        return 0, CHANGED, 0  # dated by a .txt the plan does not hold: its origtime is unchecked
    current = by_stem.get(message.stem, set())
    if not current:
        return 0, _gone(fd, by_stem, message), 0
    if current != planned:
        return 0, CHANGED, 0  # a file came or went: Asterisk is working on this number
    newest: datetime | None = None
    linked: set[bytes] = set()
    for file in message.files:
        if file.name == message.txt and not message.aged_by_mtime:
            # Its status from the same open as the text checked below: one lookup, and they agree
            try:
                status, text = read_txt(fd, message.txt)
            except Skip:
                return 0, CHANGED, 0
            if parse_origtime(text) != message.age:
                return 0, CHANGED, 0
        else:
            try:
                status = os.stat(file.name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return 0, CHANGED, 0
            except OSError:
                return 0, UNREADABLE, 0
        if not same_file(status, file):
            return 0, CHANGED, 0  # renumbered, moved, or rewritten since planning
        if status.st_nlink > 1:
            linked.add(file.name)
        modified = mtime_age(status)
        newest = modified if newest is None else max(newest, modified)
    if message.aged_by_mtime and (newest is None or not newest < cutoff):
        return 0, CHANGED, 0
    freed = unlinked_linked = 0
    # Asterisk counts a message by its .txt, so the .txt goes last
    for file in sorted(message.files, key=lambda f: f.name == message.txt):
        try:
            os.unlink(file.name, dir_fd=fd)
        except FileNotFoundError:
            return freed, CHANGED, unlinked_linked
        except OSError:
            return freed, UNREMOVABLE, unlinked_linked
        freed += file.size
        unlinked_linked += file.name in linked
    return freed, None, unlinked_linked


def _gone(fd: int, by_stem: Mapping[bytes, set[bytes]], message: PlannedMessage) -> str:
    """Why a planned message is no longer under its number: renumbered (changed) or deleted."""
    planned = {(file.device, file.inode) for file in message.files}
    for name in itertools.chain.from_iterable(by_stem.values()):
        try:
            status = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if (status.st_dev, status.st_ino) in planned:
            return CHANGED
    return VANISHED

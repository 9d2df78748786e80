"""Deleting a files store's planned recordings, each file checked again right before.

A file is unlinked only when it is still the regular file planned: same device, inode and size
(a growing file is still being recorded), reached through the same folders, and (aged by mtime)
still older than the cutoff. One file changed keeps the whole recording; one removed by someone
else does not. Emptied YYYY/MM/DD folders go after the batch, deepest first.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime

from retentiond.stores.files.walk import PlannedFile, Recording
from retentiond.stores.fs.ages import mtime_age
from retentiond.stores.fs.folders import (
    CHANGED,
    UNREADABLE,
    UNREMOVABLE,
    VANISHED,
    FolderChain,
    Skip,
    check_component,
    same_file,
)


def delete_recording(
    chain: FolderChain,
    recording: Recording,
    cutoff: datetime,
    skipped: Counter[str],
    *,
    by_mtime: bool,
) -> list[tuple[PlannedFile, os.stat_result]]:
    """Unlink the files of one planned recording if all are still as planned.

    One file changed (rewritten, replaced, grown, made young) keeps the whole recording;
    one removed by someone else does not. Returns the files unlinked, each with its status
    as checked right before.
    """
    checked: list[tuple[PlannedFile, os.stat_result]] = []
    vanished = 0
    for planned in recording:
        try:
            checked.append((planned, _check(chain, planned, cutoff, by_mtime)))
        except Skip as skip:
            if skip.reason == VANISHED:
                vanished += 1
                continue
            if vanished:
                skipped[VANISHED] += vanished
            skipped[skip.reason] += len(recording) - vanished
            return []
    if vanished:
        skipped[VANISHED] += vanished
    deleted = []
    for planned, status in checked:
        try:
            os.unlink(planned.name, dir_fd=chain.open(planned.folder))
        except Skip as skip:
            skipped[skip.reason] += 1
            continue
        except FileNotFoundError:
            skipped[VANISHED] += 1
            continue
        except OSError:
            skipped[UNREMOVABLE] += 1
            continue
        deleted.append((planned, status))
    return deleted


def _check(
    chain: FolderChain, planned: PlannedFile, cutoff: datetime, by_mtime: bool
) -> os.stat_result:
    """The status of a planned file if it is still the file planned, or raise Skip."""
    if planned.age is not None and not planned.age < cutoff:
        raise Skip(CHANGED)  # a plan made for another cutoff is never applied
    for component in (*planned.folder, planned.name):
        check_component(component)
    folder_fd = chain.open(planned.folder)
    try:
        status = os.stat(planned.name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise Skip(VANISHED) from None
    except OSError:
        raise Skip(UNREADABLE) from None
    if not _still_planned(status, planned, cutoff, by_mtime):
        raise Skip(CHANGED)
    return status


def _still_planned(
    status: os.stat_result, planned: PlannedFile, cutoff: datetime, by_mtime: bool
) -> bool:
    if not same_file(status, planned):  # a growing file is still being recorded
        return False
    return not by_mtime or mtime_age(status) < cutoff


def remove_emptied_date_folders(chain: FolderChain, folder: tuple[bytes, ...]) -> None:
    """Remove the YYYY/MM/DD folders a batch emptied, upwards, up to the first non-empty one."""
    while folder and folder[-1].isdigit():
        try:
            parent_fd = chain.open(folder[:-1])
        except Skip:
            return
        try:
            os.rmdir(folder[-1], dir_fd=parent_fd)
        except FileNotFoundError:
            pass  # already gone; its parent may be empty now
        except OSError:
            return  # not empty, or no longer a plain folder: leave it and everything above
        folder = folder[:-1]

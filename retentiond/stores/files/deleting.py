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
    folder: int | Skip,
    recording: Recording,
    cutoff: datetime,
    *,
    by_mtime: bool,
) -> tuple[list[tuple[PlannedFile, os.stat_result]], Counter[str]]:
    """Unlink the files of one planned recording if all are still as planned.

    `folder` is the descriptor of the recording's folder (its files share one), opened by the
    caller, or why it could not be opened. One file changed (rewritten, replaced, grown, made
    young) keeps the whole recording; one removed by someone else does not. Returns the files
    unlinked, each with its status as checked right before, and what was left alone and why:
    its own counts, so recordings can be deleted by several threads at once (fs/overlap.py).
    """
    skipped: Counter[str] = Counter()
    checked: list[tuple[PlannedFile, os.stat_result]] = []
    vanished = 0
    for planned in recording:
        try:
            checked.append((planned, _check(folder, planned, cutoff, by_mtime)))
        except Skip as skip:
            if skip.reason == VANISHED:
                vanished += 1
                continue
            if vanished:
                skipped[VANISHED] += vanished
            skipped[skip.reason] += len(recording) - vanished
            return [], skipped
    if vanished:
        skipped[VANISHED] += vanished
    deleted = []
    for planned, status in checked:
        assert not isinstance(folder, Skip)  # _check raised it otherwise
        try:
            os.unlink(planned.name, dir_fd=folder)
        except FileNotFoundError:
            skipped[VANISHED] += 1
            continue
        except OSError:
            skipped[UNREMOVABLE] += 1
            continue
        deleted.append((planned, status))
    return deleted, skipped


def open_recording_folder(chain: FolderChain, recording: Recording) -> int | Skip:
    """The descriptor of the folder a recording's files are in, or why it cannot be opened."""
    if not recording:
        return Skip(CHANGED)
    folder = recording[0].folder
    if any(planned.folder != folder for planned in recording):
        return Skip(CHANGED)  # a plan only ever groups files of one folder
    try:
        for component in folder:
            check_component(component)
        return chain.open(folder)
    except Skip as skip:
        return skip


def _check(
    folder: int | Skip, planned: PlannedFile, cutoff: datetime, by_mtime: bool
) -> os.stat_result:
    """The status of a planned file if it is still the file planned, or raise Skip."""
    if planned.age is not None and not planned.age < cutoff:
        raise Skip(CHANGED)  # a plan made for another cutoff is never applied
    check_component(planned.name)
    if isinstance(folder, Skip):
        raise Skip(folder.reason)  # a new one: threads never share an exception's traceback
    try:
        status = os.stat(planned.name, dir_fd=folder, follow_symlinks=False)
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

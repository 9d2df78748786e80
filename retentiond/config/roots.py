"""System folders, which no store root may be, contain, or (for some) lie in.

A store deletes what is older than its period below its root. Pointed at `/etc` or `/var` (a
typo, a preset reading a broken PBX setting, `root: /var/spool/asterisk/..`), it would delete
the system's own files, and `check` would call it fine. So such a root is a config error,
judged after resolving symlinks and `..` the way the kernel will when the store opens it.
A store whose root really is such a folder says so with `allow_system_root: true`, which
`check` shows as a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

# Folders that are no store's root, nor inside one: below them is fine
# (/var/spool/asterisk/monitor, /var/lib/3cxpbx/..., /home/pbx/recordings).
SYSTEM_FOLDERS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",  # noqa: S108 - a name to refuse, not a place to write
        "/usr",
        "/usr/local",
        "/var",
        "/var/backups",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/spool",
        "/var/tmp",  # noqa: S108 - a name to refuse, not a place to write
    }
)

# Where the system keeps programs, libraries, settings and the kernel's views: no PBX data
# lies there, so no root may either (/usr/local, where software built by hand lives, may).
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr/bin",
    "/usr/include",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/libx32",
    "/usr/sbin",
    "/usr/share",
    "/usr/src",
)


def system_folder(root: Path) -> str | None:
    """Why `root` is a system folder, or None; as written and as resolved (symlinks, `..`)."""
    written = os.path.normpath(root)
    resolved = os.path.realpath(root)
    for path in dict.fromkeys((written, resolved)):
        why = _why_system(path)
        if why is not None:
            shown = str(root) if path == str(root) else f"{root} (that is {path})"
            return f"{shown} {why}"
    return None


def _why_system(path: str) -> str | None:
    if path in SYSTEM_FOLDERS:
        return "is a system folder"
    contained = sorted(folder for folder in SYSTEM_FOLDERS if _is_below(folder, path))
    if contained:
        return f"contains the system folder {contained[0]}"
    tree = next((tree for tree in SYSTEM_TREES if _is_below(path, tree)), None)
    if tree is not None:
        return f"lies in {tree}, where the system keeps its programs and settings"
    return None


def _is_below(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def refuse_system_root(root: Path, allowed: bool) -> Path:
    """`root`, unless it is a system folder and the store does not allow that (ValueError)."""
    why = system_folder(root)
    if why is not None and not allowed:
        raise ValueError(
            f"{why}: a store there would delete the system's own files. Set root to the "
            "folder the PBX writes these files to (e.g. /var/spool/asterisk/monitor); only if "
            "this folder holds nothing but them, add allow_system_root: true to this store"
        )
    return root


def system_root_warning(root: Path | None, allowed: bool) -> str | None:
    """The line `check` shows for a system folder allowed as a root."""
    why = system_folder(root) if root is not None and allowed else None
    if why is None:
        return None
    return f"warning: root {why}; allowed by allow_system_root: true, so files there are deleted"

"""What a file's name says to the files store: a lock file, a greeting, its stem and siblings.

Names stay bytes: PBX file names carry phone numbers and caller names in whatever encoding the
caller ID had. They become text only to be matched (undecodable bytes escaped) or compared with
a database column (UTF-8, else not at all).
"""

from __future__ import annotations

import os


def is_lock_file(name: bytes) -> bool:
    return name in (b".lock", b"lock") or name.startswith(b".lock-")


_GREETINGS = (b"busy", b"unavail", b"greet", b"temp")


def is_greeting(name: bytes) -> bool:
    """Voicemail greetings (`busy.wav`, `unavail.WAV`, ...): never retention's business."""
    return name.split(b".", 1)[0] in _GREETINGS


def name_stem(name: bytes) -> bytes:
    """The name up to its last dot: `x.12.wav` and `x.12.mp3` share the stem `x.12`."""
    stem, dot, _ = name.rpartition(b".")
    return stem if dot else name


def stem_text(name: bytes) -> str:
    """A file name without its extension, as text for matching (undecodable bytes escaped)."""
    return os.fsdecode(name_stem(name))


def sibling_order(name: bytes) -> tuple[bytes, bytes]:
    # By stem first: `x.mp3`, `x.n.wav`, `x.wav` would put a stranger between two siblings.
    return name_stem(name), name


def as_text(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def relative_text(folder: tuple[bytes, ...], name: bytes) -> str | None:
    """The path below the root as a row names it (`1001/x.wav`); None when it is not UTF-8."""
    return as_text(b"/".join((*folder, name)))

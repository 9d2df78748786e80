"""Realistic Asterisk voicemail spools for tests: layout, msgNNNN.txt and lock files as
app_voicemail writes them (research/pbx_domain.md §2).

`realistic_spool(root, cutoff)` builds one spool around a cutoff and says which messages expire;
`add_message` and `hold_lockfile` build anything else.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Fragments of the spool's personal data: none may appear in a log line, result or exception.
MAILBOXES = ("1001", "1002", "2001")
CALLERIDS = (
    '"Erika Mustermann" <+4930123456>',
    '"Max Mustermann" <+4917612345678>',
    '"Unknown" <+498912345678>',
)
PERSONAL_FRAGMENTS = (
    *MAILBOXES,
    "Mustermann",
    "Erika",
    "4930123456",
    "4917612345678",
    "498912345678",
    "msg0",
    "transcript",
)

# Audio as app_voicemail writes it: wav49 as .WAV (GSM in a WAV container) and plain .wav.
AUDIO = {
    "WAV": b"RIFF\x3c\x00\x00\x00WAVEfmt \x14\x00\x00\x001\x00" + bytes(40),
    "wav": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00" + bytes(200),
    "gsm": bytes(33 * 5),
}
TRANSCRIPT = b"Hallo, hier ist Erika Mustermann, bitte rufen Sie mich unter 030 123456 zurueck.\n"
GREETINGS = ("busy.wav", "unavail.WAV", "greet.wav", "temp.gsm")


@dataclass(frozen=True)
class Message:
    """One message as files in a folder: `msgNNNN.<format>`, `.txt`, `msgNNNN_*.*` siblings."""

    folder: Path
    number: int
    paths: tuple[Path, ...]

    @property
    def stem(self) -> str:
        return f"msg{self.number:04d}"

    @property
    def key(self) -> str:
        """`mailbox/folder/NNNN`, for test messages only."""
        return f"{self.folder.parent.name}/{self.folder.name}/{self.number:04d}"

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.paths)

    def exists(self) -> bool:
        return all(path.exists() for path in self.paths)

    def gone(self) -> bool:
        return not any(path.exists() for path in self.paths)


@dataclass
class Spool:
    root: Path
    expired: list[Message] = field(default_factory=list)
    kept: list[Message] = field(default_factory=list)
    protected: list[Path] = field(default_factory=list)  # greetings, tmp/, lock files

    def message(self, key: str) -> Message:
        for message in (*self.expired, *self.kept):
            if message.key == key:
                return message
        raise KeyError(key)

    @property
    def expired_bytes(self) -> int:
        return sum(message.size for message in self.expired)

    def files(self) -> set[Path]:
        """Every file and link under the root, as it is now."""
        return {path for path in self.root.rglob("*") if not path.is_dir() or path.is_symlink()}


def set_mtime(path: Path, when: datetime) -> None:
    ns = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def message_txt(
    *,
    origtime: datetime,
    mailbox: str,
    callerid: str,
    sequence: int,
    duration: int = 12,
    flag: str = "",
) -> str:
    """msgNNNN.txt exactly as leave_voicemail() writes it (Asterisk 20, FreePBX dialplan)."""
    epoch = int(origtime.timestamp())
    origdate = time.strftime("%a %b %e %I:%M:%S %p UTC %Y", time.gmtime(epoch))
    return (
        ";\n"
        "; Message Information file\n"
        ";\n"
        "[message]\n"
        f"origmailbox={mailbox}\n"
        "context=macro-vm\n"
        "macrocontext=ext-local\n"
        "exten=s-NOANSWER\n"
        "rdnis=unknown\n"
        "priority=2\n"
        f"callerchan=PJSIP/trunk-sipgate-{sequence:08x}\n"
        f"callerid={callerid}\n"
        f"origdate={origdate}\n"
        f"origtime={epoch}\n"
        "category=\n"
        f"msg_id={epoch}-{sequence:08x}\n"
        f"flag={flag}\n"
        f"duration={duration}\n"
    )


_sequence = iter(range(1, 1_000_000))


def add_message(
    root: Path,
    mailbox: str,
    folder: str,
    number: int,
    *,
    origtime: datetime,
    context: str = "default",
    formats: tuple[str, ...] = ("WAV", "wav"),
    transcript: bool = False,
    txt: str | None = None,
    with_txt: bool = True,
    mtime: datetime | None = None,
    callerid: str = CALLERIDS[0],
    flag: str = "",
) -> Message:
    """A message with its files written at `mtime` (default: `origtime`, as Asterisk would).

    `txt` replaces the standard msgNNNN.txt; `with_txt=False` leaves it out.
    """
    directory = root / context / mailbox / folder
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"msg{number:04d}"
    paths: list[Path] = []
    for extension in formats:
        path = directory / f"{stem}.{extension}"
        path.write_bytes(AUDIO.get(extension, AUDIO["wav"]))
        paths.append(path)
    if transcript:
        path = directory / f"{stem}_transcript.txt"
        path.write_bytes(TRANSCRIPT)
        paths.append(path)
    if with_txt:
        if txt is None:
            txt = message_txt(
                origtime=origtime,
                mailbox=mailbox,
                callerid=callerid,
                sequence=next(_sequence),
                flag=flag,
            )
        path = directory / f"{stem}.txt"
        path.write_text(txt, encoding="utf-8")
        paths.append(path)
    for path in paths:
        set_mtime(path, mtime or origtime)
    return Message(directory, number, tuple(paths))


def hold_lockfile(folder: Path) -> Path:
    """Take a folder's lock as Asterisk's lockfile mode does: `.lock-XXXXXXXX` linked to `.lock`.

    Release it by unlinking the returned `.lock`.
    """
    helper = folder / f".lock-{secrets.token_hex(4)}"
    fd = os.open(helper, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    lock = folder / ".lock"
    # Taken now by the clock retentiond reads: the kernel dates a new file by the real clock,
    # which a moved clock (faketime) does not move, and an old lock counts as stale.
    now = time.time()
    os.utime(helper, (now, now))
    try:
        os.link(helper, lock)
    finally:
        helper.unlink()
    return lock


def put(path: Path, content: bytes, when: datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    set_mtime(path, when)
    return path


def realistic_spool(root: Path, cutoff: datetime) -> Spool:
    """Context `default` with mailboxes 1001, 1002 and 2001, ages relative to `cutoff`.

    Expired (9): 1001/INBOX/0000 and 0003 (with a transcript; 0002 is a gap), 1001/Old/0000,
    1001/Old/0002 (no .txt, old files), 1001/Deleted/0000 and 0001, 1001/Work/0000,
    1002/INBOX/0000 and 0001. Kept (6): 1001/INBOX/0001 (young), 1001/INBOX/0004 (exactly at the
    cutoff), 1001/Old/0001 (.txt without origtime), 1001/Urgent/0000, 1002/Old/0000 and
    2001/INBOX/0000 (young). Greetings, tmp/ and lock leftovers are old and protected.
    `cutoff` must be whole seconds (origtime is).
    """
    if cutoff.microsecond:
        raise ValueError("origtime has whole seconds; use a cutoff without microseconds")
    spool = Spool(root)
    long_ago = cutoff - timedelta(days=120)
    old = cutoff - timedelta(days=30, hours=3, minutes=17)
    young = cutoff + timedelta(days=5, hours=2)
    # Old messages are at least one day apart so the batch spans are distinct.
    day = timedelta(days=1)

    def expired(mailbox: str, folder: str, number: int, when: datetime, **kw: Any) -> None:
        spool.expired.append(add_message(root, mailbox, folder, number, origtime=when, **kw))

    def kept(mailbox: str, folder: str, number: int, when: datetime, **kw: Any) -> None:
        spool.kept.append(add_message(root, mailbox, folder, number, origtime=when, **kw))

    expired("1001", "INBOX", 0, long_ago)
    kept("1001", "INBOX", 1, young, callerid=CALLERIDS[1])
    expired("1001", "INBOX", 3, old, transcript=True, callerid=CALLERIDS[2])
    kept("1001", "INBOX", 4, cutoff)
    expired("1001", "Old", 0, long_ago + day, formats=("WAV", "wav", "gsm"))
    malformed = message_txt(origtime=long_ago, mailbox="1001", callerid=CALLERIDS[0], sequence=9)
    malformed = "\n".join(
        line for line in malformed.splitlines() if not line.startswith("origtime")
    )
    kept("1001", "Old", 1, long_ago, txt=malformed + "\n")
    expired("1001", "Old", 2, long_ago + 2 * day, with_txt=False)
    kept("1001", "Urgent", 0, young, flag="Urgent")
    expired("1001", "Deleted", 0, long_ago + 3 * day)
    expired("1001", "Deleted", 1, old + day, formats=("wav",))
    expired("1001", "Work", 0, long_ago + 4 * day, callerid=CALLERIDS[1])
    expired("1002", "INBOX", 0, long_ago + 5 * day, callerid=CALLERIDS[2])
    expired("1002", "INBOX", 1, old + 2 * day)
    kept("1002", "Old", 0, young)
    kept("2001", "INBOX", 0, young, callerid=CALLERIDS[1])

    mailbox = root / "default" / "1001"
    for name in GREETINGS:
        extension = name.rsplit(".", 1)[1]
        spool.protected.append(put(mailbox / name, AUDIO.get(extension, AUDIO["wav"]), long_ago))
    spool.protected.append(put(root / "default/2001/unavail.wav", AUDIO["wav"], long_ago))
    # A recording in progress (mkstemp names) and a message-like name: tmp/ is never entered.
    spool.protected.append(put(mailbox / "tmp/qa8Tz1.txt", b"[message]\n", long_ago))
    spool.protected.append(put(mailbox / "tmp/qa8Tz1.wav", AUDIO["wav"], long_ago))
    spool.protected.append(put(mailbox / "tmp/msg0000.wav", AUDIO["wav"], long_ago))
    # Leftovers of the lock protocol: a crashed lockfile helper and flock files.
    spool.protected.append(put(mailbox / "INBOX/.lock-0a1b2c3d", b"", long_ago))
    spool.protected.append(put(mailbox / "Old/lock", b"", long_ago))
    spool.protected.append(put(root / "default/1002/INBOX/.lock-deadbeef", b"", long_ago))
    return spool

"""Residual copies: places outside the rules where deleted data lives on (SDM M60.P14, all copies).

Each detection only reads: a few `SHOW` statements, a table lookup, folder statistics, one config
file. Nothing found here is ever changed; it is reported so the DPO can give each copy its own
deletion period (ISO/IEC 27555 §7.4.5 backups, §9.3). A detection that cannot run says why
("not checked: …") instead of passing silently. Backup folders are described by counts and ages
only: their file names can carry numbers and dates of calls, so they are never listed.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from retentiond.config.model import Config, ConnectionConfig, SqlStoreConfig
from retentiond.config.pbxfiles import PbxSettingsError, asterisk_directories
from retentiond.dberrors import describe
from retentiond.errors import StoreError
from retentiond.evidence.report.catalogue import approximate_days
from retentiond.evidence.report.values import Finding
from retentiond.evidence.report.wording import whole
from retentiond.i18n import DEFAULT, N_, Language, Words, words
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import Dialect, dialect_of_url

ASTERISK_CONF = Path("/etc/asterisk/asterisk.conf")
SPOOL_DIR = Path("/var/spool/asterisk")  # Asterisk's compiled-in astspooldir
VOICEMAIL_CONF = Path("/etc/asterisk/voicemail.conf")
DAY = 86400.0
# The checks' names: identifiers (the CSV's item), shown with wording.label.
BINLOG = N_("MariaDB binary log")
WAL = N_("PostgreSQL WAL archive")
TRANSIENT_CDR = N_("transient_cdr table")
VOICEMAIL_EMAIL = N_("voicemail sent by e-mail")
FOLDER_CHECKS = (N_("FreePBX backups folder"), N_("3CX backups folder"))


def _backup_folders(asterisk_conf: Path) -> dict[str, Path]:
    """Where the PBXs keep their backups; FreePBX's in Asterisk's spool directory."""
    return {
        "FreePBX backups": spool_dir(asterisk_conf) / "backup",
        "3CX backups": Path("/var/lib/3cxpbx/Instance1/Data/Backups"),
    }


def spool_dir(asterisk_conf: Path = ASTERISK_CONF) -> Path:
    """`astspooldir` of asterisk.conf's [directories], as Asterisk reads it (main/options.c):
    a template (`[directories](!)`, as the sample ships) is ignored, the last value wins, and
    without one (or without the file) the compiled-in /var/spool/asterisk applies."""
    try:
        return Path(asterisk_directories(asterisk_conf)["astspooldir"])
    except PbxSettingsError:  # absent or unreadable: Asterisk starts with its defaults too
        return SPOOL_DIR


def detect(
    config: Config,
    *,
    backup_folders: Mapping[str, Path] | None = None,
    voicemail_conf: Path = VOICEMAIL_CONF,
    asterisk_conf: Path = ASTERISK_CONF,
    now: float | None = None,
    language: Language = DEFAULT,
) -> list[Finding]:
    """Every residual-copy detection for this host and the config's database connections.
    `backup_folders` default: FreePBX's in the spool directory `asterisk_conf` names, 3CX's.
    What each finding says (its place and detail) is in `language`; its check and state are
    identifiers (wording.label names them)."""
    said = words(language)
    findings: list[Finding] = []
    for name, settings in config.connections.items():
        findings += _database(config, name, settings, said)
    shortest = _shortest_keep(config)
    folders = _backup_folders(asterisk_conf) if backup_folders is None else backup_folders
    for label, folder in folders.items():
        moment = time.time() if now is None else now
        findings.append(_backups(label, folder, shortest, moment, said))
    findings.append(_voicemail_email(voicemail_conf, said))
    return findings


def _shortest_keep(config: Config) -> tuple[str, float] | None:
    rules = sorted(config.rules, key=lambda r: approximate_days(r.keep))
    if not rules:
        return None
    return f"{rules[0].name}: {rules[0].keep}", approximate_days(rules[0].keep)


# --- databases ------------------------------------------------------------------------------------


def _database(config: Config, name: str, settings: ConnectionConfig, said: Words) -> list[Finding]:
    # Once: a report says a database it cannot reach was not checked, it does not wait for it.
    database = Database(name, settings.model_copy(update={"retries": 0}), f"connection {name}")
    place = said.gettext("connection {name}").format(name=name)
    try:
        connection = database.open()
    except StoreError as error:
        reason = said.gettext(NOT_CHECKED).format(why=error)
        checks = _checks_for(dialect_of_url(settings.url))
        return [Finding(check, place, "not checked", reason) for check in checks]
    try:
        place = said.gettext("connection {name} ({where})").format(
            name=name, where=database.where()
        )
        findings = []
        archive = _ARCHIVE_CHECKS.get(database.dialect.archived_log or "")
        if archive is not None:
            findings.append(archive[1](connection, place, said))
        findings.append(_transient_cdr(config, name, connection, place, said))
        return findings
    finally:
        connection.close()
        database.close()


def _checks_for(dialect: Dialect | None) -> Sequence[str]:
    archive = _ARCHIVE_CHECKS.get(dialect.archived_log or "") if dialect is not None else None
    if archive is not None:
        return (archive[0], TRANSIENT_CDR)
    return (TRANSIENT_CDR,)


def _variable(connection: Connection, name: str) -> str | None:
    row = connection.execute(text("SHOW VARIABLES LIKE :name"), {"name": name}).first()
    return None if row is None else str(row[1])


def _binlog(connection: Connection, place: str, said: Words) -> Finding:
    check = BINLOG
    _ = said.gettext
    try:
        log_bin = _variable(connection, "log_bin")
        seconds = _variable(connection, "binlog_expire_logs_seconds")
        days = _variable(connection, "expire_logs_days")
    except DBAPIError as error:
        return _not_checked(check, place, error, said)
    if log_bin is None:
        why = _("the server has no log_bin")
        return Finding(check, place, "not checked", _(NOT_CHECKED).format(why=why))
    if log_bin.upper() != "ON":
        return Finding(
            check,
            place,
            "none",
            _(
                "binary log off (log_bin={log_bin}): deleted rows leave no copy in binary logs"
            ).format(log_bin=log_bin),
        )
    expiry = _expiry_seconds(seconds, days)
    settings = f"binlog_expire_logs_seconds={seconds}, expire_logs_days={days}"
    if not expiry:
        return Finding(
            check,
            place,
            "found",
            _(
                "binary log on (log_bin=ON) and never expires ({settings}): every deleted row "
                "stays in the binary logs until they are purged by hand (PURGE BINARY LOGS); "
                "set an expiry no longer than needed for replication and point-in-time recovery"
            ).format(settings=settings),
            attention=True,
        )
    return Finding(
        check,
        place,
        "found",
        _(
            "binary log on (log_bin=ON), expires after {days} days ({settings}): deleted rows "
            "remain in the binary logs up to that long after each deletion"
        ).format(days=_general(said, expiry / DAY), settings=settings),
    )


def _expiry_seconds(seconds: str | None, days: str | None) -> float:
    for value, factor in ((seconds, 1.0), (days, DAY)):
        try:
            amount = float(value) if value is not None else 0.0
        except ValueError:
            continue
        if amount > 0:
            return amount * factor
    return 0.0


def _wal_archive(connection: Connection, place: str, said: Words) -> Finding:
    check = WAL
    _ = said.gettext
    try:
        mode = str(connection.execute(text("SHOW archive_mode")).scalar())
    except DBAPIError as error:
        return _not_checked(check, place, error, said)
    command_state = _("not readable")
    try:
        command = str(connection.execute(text("SHOW archive_command")).scalar() or "")
        command_state = _("set") if command.strip() and command != "(disabled)" else _("not set")
    except DBAPIError:
        connection.rollback()  # a failed SHOW aborts the transaction; the mode is enough
    if mode.lower() == "off":
        return Finding(
            check,
            place,
            "none",
            _(
                "WAL archiving off (archive_mode={mode}): the server recycles its WAL segments; "
                "deleted rows leave no archived copy"
            ).format(mode=mode),
        )
    return Finding(
        check,
        place,
        "found",
        _(
            "WAL archiving on (archive_mode={mode}, archive_command {state}; the command is not "
            "shown, it may hold credentials): deleted rows stay in the archived WAL until the "
            "archive is pruned; give the archive its own deletion period"
        ).format(mode=mode, state=command_state),
        attention=True,
    )


# Where deleted rows live on, by the dialect's `archived_log`: the check's name, and the check.
_ARCHIVE_CHECKS: dict[str, tuple[str, Callable[[Connection, str, Words], Finding]]] = {
    "binlog": (BINLOG, _binlog),
    "wal": (WAL, _wal_archive),
}


def _transient_cdr(
    config: Config, name: str, connection: Connection, place: str, said: Words
) -> Finding:
    check = TRANSIENT_CDR
    _ = said.gettext
    try:
        exists = inspect(connection).has_table("transient_cdr")
    except SQLAlchemyError as error:
        return _not_checked(check, place, error, said)
    if not exists:
        return Finding(check, place, "none", _("no transient_cdr table"))
    rules = sorted(
        {
            rule.name
            for rule in config.rules
            for store in rule.stores
            if isinstance(store, SqlStoreConfig)
            and store.connection == name
            and store.table == "transient_cdr"
        }
    )
    if rules:
        covered = _("transient_cdr exists and is covered by rule {rules}")
        return Finding(check, place, "found", covered.format(rules=", ".join(rules)))
    return Finding(
        check,
        place,
        "found",
        _(
            "transient_cdr exists and no rule covers it: FreePBX keeps a copy of call records "
            "there; add it to the call-records rule (the freepbx preset does)"
        ),
        attention=True,
    )


NOT_CHECKED = N_("not checked: {why}")


def _not_checked(check: str, place: str, error: Exception, said: Words) -> Finding:
    """Codes and fixed words in the report: never the server's text (dberror)."""
    why = describe(error, f"{place}: {check}")
    return Finding(check, place, "not checked", said.gettext(NOT_CHECKED).format(why=why))


def _general(said: Words, value: float) -> str:
    """A number as `{:g}` writes it, with the language's decimal sign."""
    shown = f"{value:g}"
    return shown if said.language == "en" else shown.replace(".", ",")


# --- backup folders -------------------------------------------------------------------------------


@dataclass
class _FolderStats:
    files: int = 0
    oldest: float | None = None
    newest: float | None = None
    unreadable: int = 0


def _backups(
    label: str, folder: Path, shortest: tuple[str, float] | None, now: float, said: Words
) -> Finding:
    check = f"{label} folder"
    place = str(folder)
    _ = said.gettext
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return Finding(check, place, "none", _("not found"))
    except OSError as error:
        return Finding(check, place, "not checked", _(NOT_CHECKED).format(why=error.strerror))
    if not stat.S_ISDIR(info.st_mode):
        why = _("not a folder (or a symlink)")
        return Finding(check, place, "not checked", _(NOT_CHECKED).format(why=why))
    stats = _FolderStats()
    try:
        _walk(folder, stats, top=True)
    except PermissionError as error:
        return Finding(check, place, "not checked", _(NOT_CHECKED).format(why=error.strerror))
    if stats.files == 0:
        detail = _("the folder holds no files")
        return Finding(check, place, "none", _with_unreadable(detail, stats, said))
    assert stats.oldest is not None and stats.newest is not None
    oldest_days = (now - stats.oldest) / DAY
    newest_days = (now - stats.newest) / DAY
    detail = said.ngettext(
        "{files} files; newest {newest} days old, oldest {oldest} days old (file names not "
        "listed: they can carry call data)",
        "{files} files; newest {newest} days old, oldest {oldest} days old (file names not "
        "listed: they can carry call data)",
        stats.files,
    ).format(
        files=whole(said, stats.files),
        newest=f"{newest_days:.0f}",
        oldest=f"{oldest_days:.0f}",
    )
    attention = shortest is not None and oldest_days > shortest[1]
    if attention and shortest is not None:
        detail += _(
            "; the oldest backup is older than the shortest rule ({rule}): backups hold data "
            "past its period; give backups a deletion period and expire whole sets"
        ).format(rule=shortest[0])
    return Finding(check, place, "found", _with_unreadable(detail, stats, said), attention)


def _with_unreadable(detail: str, stats: _FolderStats, said: Words) -> str:
    if stats.unreadable:
        return said.gettext("{detail}; {count} subfolders could not be read (not counted)").format(
            detail=detail, count=whole(said, stats.unreadable)
        )
    return detail


def _walk(folder: Path, stats: _FolderStats, *, top: bool = False) -> None:
    """Count regular files and their mtimes; never follows symlinks, never keeps a name."""
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        if top:
            raise
        stats.unreadable += 1
        return
    except OSError:
        stats.unreadable += 1
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _walk(Path(entry.path), stats)
            elif entry.is_file(follow_symlinks=False):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                stats.files += 1
                stats.oldest = mtime if stats.oldest is None else min(stats.oldest, mtime)
                stats.newest = mtime if stats.newest is None else max(stats.newest, mtime)
        except OSError:
            stats.unreadable += 1


# --- voicemail by e-mail --------------------------------------------------------------------------


def _voicemail_email(path: Path, said: Words) -> Finding:
    check = VOICEMAIL_EMAIL
    place = str(path)
    _ = said.gettext
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return Finding(check, place, "none", _("not found (no Asterisk voicemail config here)"))
    except OSError as error:
        return Finding(check, place, "not checked", _(NOT_CHECKED).format(why=error.strerror))
    general: dict[str, str] = {}
    mailboxes: list[tuple[bool, dict[str, str]]] = []  # (has an e-mail address, options)
    section = ""
    includes = 0
    for raw in lines:
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("#include") or line.startswith("#tryinclude"):
            includes += 1
            continue
        if line.startswith("["):
            section = line.strip("[]").split("]", 1)[0].strip().lower()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.lstrip(">").strip()
        key = key.strip().lower()
        if section == "general":
            general[key] = value.lower()
        elif section not in ("zonemessages", ""):
            mailboxes.append(_mailbox(value))
    attach_default = general.get("attach", "no") in ("yes", "true", "1", "on")
    emailed = [
        options
        for has_email, options in mailboxes
        if has_email and _yes(options.get("attach"), attach_default)
    ]
    note = _("; {count} #include lines not followed").format(count=includes) if includes else ""
    if not emailed:
        detail = _(
            "no mailbox sends its messages by e-mail with the audio attached "
            "(attach={attach} in [general], {mailboxes} mailboxes){note}"
        ).format(
            attach=general.get("attach", _("not set")),
            mailboxes=whole(said, len(mailboxes)),
            note=note,
        )
        return Finding(check, place, "none", detail)
    deleting = sum(1 for o in emailed if _yes(o.get("delete"), _yes(general.get("delete"), False)))
    detail = _(
        "{emailed} of {mailboxes} mailboxes e-mail each message with the audio attached "
        "(attach=yes): those copies left the PBX and are beyond retentiond; the mail system's "
        "retention applies to them"
    ).format(emailed=whole(said, len(emailed)), mailboxes=whole(said, len(mailboxes)))
    if deleting:
        detail += _(
            "; {count} of them delete the message on the PBX once sent (delete=yes)"
        ).format(count=whole(said, deleting))
    return Finding(check, place, "found", detail + note, attention=True)


def _mailbox(value: str) -> tuple[bool, dict[str, str]]:
    """`pin,full name,email,pager,opt=val|opt=val`: whether it has an e-mail, and its options.
    Only the two flags that matter are kept; the name and address are dropped at once."""
    parts = value.split(",", 4)
    has_email = len(parts) > 2 and "@" in parts[2]
    options: dict[str, str] = {}
    if len(parts) > 4:
        for option in parts[4].replace(",", "|").split("|"):
            key, _, setting = option.partition("=")
            if key.strip().lower() in ("attach", "delete"):
                options[key.strip().lower()] = setting.strip().lower()
    return has_email, options


def _yes(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value in ("yes", "true", "1", "on")

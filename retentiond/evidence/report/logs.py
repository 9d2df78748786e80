"""The deletion logs a report is read from: each file's entries and check, the system it
belongs to, and what `retentiond audit verify` says about it (LogInfo).

A log from another PBX is read the same way; its runs name their host, and that host is the
system the figures are grouped by. Logs that share a host (two test PBXs on one machine) are told
apart by their file: the system is then "host (log path)". Rotated files of one log
(`audit.jsonl.1`, `audit.jsonl`) are one system.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from retentiond.errors import AuditError
from retentiond.evidence import log as audit
from retentiond.evidence.report.entries import as_int, as_text, entry_time
from retentiond.evidence.report.values import Checkpoint, LogFinding, LogInfo, LogRepair
from retentiond.evidence.report.wording import ENGLISH
from retentiond.i18n import Words


@dataclass
class LogFile:
    """One deletion log as the report reads it: its intact entries, its check, its hosts."""

    path: Path
    base: str
    entries: list[audit.Entry]
    check: audit.LogCheck
    hosts: list[str]
    system: str = ""

    @property
    def verification(self) -> audit.Verification:
        return self.check.chain


# What an interrupted run or a power loss leaves for the next run to finish: with `strict`,
# check_log names it as a problem of these kinds; the report shows it as a warning.
_UNFINISHED = frozenset({"unsigned_tail", "torn_tail"})


def read_log(path: Path, keys: Sequence[audit.VerifyKey] = ()) -> LogFile:
    """Every intact entry. A broken log still yields what precedes the break; the report shows
    where it breaks (from the check) instead of quietly leaving the rest out."""
    # The check `retentiond audit verify` makes (without a key the signatures are the DPO's to
    # check; the fleet report has each host's); strict, so that what is unfinished comes with
    # its kind, file and line.
    check = audit.check_log(path, keys, strict=True)
    verification = check.chain
    entries: list[audit.Entry] = []
    try:
        entries.extend(audit.read_entries(path))
    except AuditError:
        if verification.ok:  # the file changed between the two reads
            raise
    hosts: list[str] = []
    for entry in entries:
        host = entry.fields.get("host")
        if isinstance(host, str) and host and host not in hosts:
            hosts.append(host)
    base = re.sub(r"\.\d+$", "", str(path.absolute()))
    return LogFile(path, base, entries, check, hosts)


def name_systems(
    logs: list[LogFile], config_log: Path, own_system: str | None, every: str | None = None
) -> None:
    """host, or organisation.system for the config's own log; "host (log path)" where two logs
    that are not rotations of one another share a name. `every` names them all (the fleet
    report: the system's folder)."""
    own_base = re.sub(r"\.\d+$", "", str(config_log.absolute()))
    for log in logs:
        if every:
            log.system = every
        elif own_system and log.base == own_base:
            log.system = own_system
        elif log.hosts:
            log.system = log.hosts[-1]
        else:
            log.system = Path(log.base).name
    bases_by_name: dict[str, set[str]] = defaultdict(set)
    for log in logs:
        bases_by_name[log.system].add(log.base)
    for log in logs:
        if len(bases_by_name[log.system]) > 1:
            log.system = f"{log.system} ({log.base})"


def in_file(result: audit.Verification, said: Words = ENGLISH) -> str:
    """' of audit.jsonl.2' where the break is in a rotated file (audit logs that rotate)."""
    broken_file = getattr(result, "broken_file", None)
    return said.gettext(" of {file}").format(file=broken_file) if broken_file else ""


def first_ts(log: LogFile) -> str:
    return log.entries[0].ts if log.entries else ""


def _findings(check: audit.LogCheck) -> tuple[list[LogFinding], list[LogFinding]]:
    """(problems, warnings) of the check, each with the file and line it names."""
    problems: list[LogFinding] = []
    warnings: list[LogFinding] = []
    for problem in check.problems:
        (warnings if problem.kind in _UNFINISHED else problems).append(problem)
    return problems, warnings


def _repairs(entries: Iterable[audit.Entry]) -> list[LogRepair]:
    return [
        LogRepair(
            at=entry_time(entry),
            seq=entry.seq,
            reason=as_text(entry.fields.get("reason")),
            removed_bytes=as_int(entry.fields.get("removed_bytes")),
            removed_sha256=as_text(entry.fields.get("removed_sha256")),
            moved_to=as_text(entry.fields.get("moved_to")),
        )
        for entry in entries
        if entry.type == audit.LOG_REPAIRED
    ]


def log_info(log: LogFile) -> LogInfo:
    result = log.verification
    problems, warnings = _findings(log.check)
    checkpoint = None
    for entry in reversed(log.entries):
        if entry.type == "checkpoint":
            fields = entry.fields
            checkpoint = Checkpoint(
                seq=entry.seq,
                at=entry_time(entry),
                signed_seq=as_int(fields.get("signed_seq")) if "signed_seq" in fields else None,
                signed_hash=as_text(fields.get("signed_hash")) or None,
                key_fingerprint=as_text(fields.get("key_fingerprint")) or None,
                signature=as_text(fields.get("signature")) or None,
            )
            break
    return LogInfo(
        path=str(log.path),
        system=log.system,
        hosts=log.hosts,
        entries=result.entries,
        intact=not problems,
        broken_line=result.broken_at,
        broken_reason=result.reason,
        head_seq=result.head[0],
        head_hash=result.head[1],
        first_entry=entry_time(log.entries[0]) if log.entries else None,
        last_entry=entry_time(log.entries[-1]) if log.entries else None,
        checkpoint=checkpoint,
        begins_after=getattr(result, "begins_after", None),
        verify_commands=_verify_commands(log.path, result, checkpoint),
        problems=problems,
        warnings=warnings,
        unsigned_tail=log.check.unsigned_tail if log.check.checkpoints else 0,
        torn_tail=log.check.torn_tail,
        repairs=_repairs(log.entries),
        level="red" if problems else "amber" if warnings else "green",
    )


def _verify_commands(
    path: Path, result: audit.Verification, checkpoint: Checkpoint | None
) -> list[str]:
    """How the DPO checks the log: the chain; that this report's head is still in it; and,
    where runs are signed, the signatures with the public key."""
    commands = [f"retentiond audit verify {path}"]
    if result.ok and result.head[0] > 0:
        seq, head = result.head
        key = " --public-key PUBLIC-KEY.pub" if checkpoint is not None else ""
        commands.append(f"retentiond audit verify {path}{key} --head {seq}:{head}")
    return commands

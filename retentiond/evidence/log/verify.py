"""Verifying the deletion log: the chain alone (`verify`), and the full check (`check_log`):
the chain, every checkpoint's place and signature, that no run lost its checkpoint, and the
expected heads copied off the host.

An incomplete last line (a power loss, see `reading`) is reported apart from damage: a warning,
or with `strict` a problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retentiond.evidence.log.entries import (
    CHECKPOINT,
    CHECKPOINT_FIELDS,
    GENESIS,
    RUN_ENDS,
    Broken,
    Entry,
    is_int,
)
from retentiond.evidence.log.keys import VerifyKey
from retentiond.evidence.log.reading import TornTail, WalkState, walk


@dataclass(frozen=True)
class Verification:
    """The result of checking a whole log: intact, or where and why the chain first breaks.

    `broken_at` is the line in `broken_file` (a base name: the log or one of its rotated files).
    `begins_after` names the file the oldest one present continues from, when that file is gone
    (rotated files removed after their retention period): the entries in it cannot be checked.
    """

    ok: bool
    entries: int
    head: tuple[int, str]
    broken_at: int | None
    broken_seq: int | None
    reason: str | None
    files: tuple[str, ...] = ()
    broken_file: str | None = None
    begins_after: str | None = None
    torn_tail: TornTail | None = None  # an incomplete last line after the intact entries


def verify(path: Path) -> Verification:
    """Check the whole chain, through every rotated file, in one streaming pass; report the
    first broken line, if any. Signatures are `check_log`'s job."""
    state = WalkState()
    count, head = 0, (0, GENESIS)
    try:
        for _, _, entry in walk(path, state):
            count, head = count + 1, (entry.seq, entry.hash)
    except Broken as broken:
        return Verification(
            False,
            count,
            head,
            broken.line,
            broken.seq,
            broken.reason,
            tuple(state.files),
            broken.file,
            state.begins_after,
        )
    return Verification(
        True,
        count,
        head,
        None,
        None,
        None,
        tuple(state.files),
        None,
        state.begins_after,
        state.torn,
    )


@dataclass(frozen=True)
class Problem:
    """One reason the log is not intact. `kind`: chain, checkpoint, order, signature, key,
    missing_checkpoint, no_checkpoints, head; with `strict`, also unsigned_tail and torn_tail
    (what an interrupted run left for the next one to finish, otherwise warnings)."""

    kind: str
    message: str
    seq: int | None = None
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is not None and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return self.message


@dataclass(frozen=True)
class LogCheck:
    """What `check_log` found. `ok` means: chain intact, every checkpoint in place and (when
    keys were given) validly signed by one of them, every expected head present; with `strict`
    also nothing left unsigned after the last checkpoint and no incomplete last line."""

    chain: Verification
    checkpoints: int
    valid_signatures: int  # checkpoints whose signature one of the given keys confirmed
    signatures_checked: bool  # keys were given
    last_checkpoint: Entry | None
    unsigned_tail: int  # entries after the last checkpoint (a run in progress or interrupted)
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...]
    torn_tail: TornTail | None = None  # an incomplete last line (chain.torn_tail)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Checkpoints:
    """Checks the checkpoints while the entries stream past, in log order."""

    def __init__(self, keys: Sequence[VerifyKey], heads: Sequence[tuple[int, str]]) -> None:
        self.keys = {key.fingerprint: key for key in keys}
        self.heads: dict[int, set[str]] = {}
        for seq, hash in heads:
            self.heads.setdefault(seq, set()).add(hash)
        self.seen_heads: set[int] = set()
        self.problems: list[Problem] = []
        self.count = 0
        self.valid = 0
        self.last: Entry | None = None
        self.pending: tuple[str, int, Entry] | None = None  # a run end awaiting its checkpoint
        self.tail = 0
        self.first_unsigned: tuple[str, int, Entry] | None = None
        self.tail_runs = 0  # entries of runs among the tail
        self.ended_unsigned = False  # the tail holds a run end that could not be signed
        self.run_entries = 0

    def problem(self, kind: str, message: str, where: tuple[str, int, Entry] | None) -> None:
        if where is None:
            self.problems.append(Problem(kind, message))
        else:
            file, line, entry = where
            self.problems.append(Problem(kind, message, entry.seq, file, line))

    def entry(self, file: str, line: int, entry: Entry) -> None:
        where = (file, line, entry)
        expected = self.heads.get(entry.seq)
        if expected is not None:
            self.seen_heads.add(entry.seq)
            for hash in sorted(expected - {entry.hash}):
                self.problem(
                    "head",
                    f"entry {entry.seq} has hash {entry.hash}, not the expected head {hash}: "
                    "the log was rewritten after that head was copied",
                    where,
                )
        if entry.type == CHECKPOINT:
            self.checkpoint(where)
            return
        self.tail += 1
        if self.first_unsigned is None:
            self.first_unsigned = where
        if "run_id" not in entry.fields:
            return  # not part of a run: a config reload, a repair, the start of a rotated file
        self.run_entries += 1
        self.tail_runs += 1
        if self.pending is not None:
            self.missing(self.pending)
            self.pending = None
        if entry.type in RUN_ENDS:
            if entry.fields.get("unsigned") is True:
                # A run failed because its key could not be used, so no checkpoint could
                # follow it; the next checkpoint signs it along with everything before.
                self.ended_unsigned = True
            else:
                self.pending = where

    def missing(self, pending: tuple[str, int, Entry]) -> None:
        if self.last is None:
            return  # before the first checkpoint: signing was not set up yet
        entry = pending[2]
        rule = entry.fields.get("rule")
        self.problem(
            "missing_checkpoint",
            f"missing checkpoint after entry {entry.seq} ({entry.type}"
            + (f" of rule {rule}" if isinstance(rule, str) else "")
            + "): every run ends with a signed checkpoint, so it was removed, or it could not "
            "be written (see the daemon log)",
            pending,
        )

    def checkpoint(self, where: tuple[str, int, Entry]) -> None:
        entry = where[2]
        self.count += 1
        previous, self.last = self.last, entry
        self.pending, self.tail, self.first_unsigned, self.tail_runs = None, 0, None, 0
        self.ended_unsigned = False
        signed_seq, signed_hash, key_fingerprint, signature = (
            entry.fields.get(name) for name in CHECKPOINT_FIELDS
        )
        if not (
            is_int(signed_seq)
            and isinstance(signed_hash, str)
            and isinstance(key_fingerprint, str)
            and isinstance(signature, str)
        ):
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} lacks signed_seq, signed_hash, key_fingerprint or "
                "signature",
                where,
            )
            return
        assert isinstance(signed_seq, int) and isinstance(signed_hash, str)  # for mypy
        previous_signed = previous.fields.get("signed_seq") if previous is not None else None
        if isinstance(previous_signed, int) and signed_seq <= previous_signed:
            self.problem(
                "order",
                f"checkpoint {entry.seq} is out of order: it signs entry {signed_seq}, but "
                f"checkpoint {previous.seq if previous else '?'} before it already signed "
                f"entry {previous_signed}",
                where,
            )
        elif signed_seq != entry.seq - 1:
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} signs entry {signed_seq}, not the entry just before "
                f"it ({entry.seq - 1}): entries were inserted or removed before it, or the "
                "checkpoint was moved (and the chain recomputed)",
                where,
            )
        elif signed_hash != entry.prev:
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} signs hash {signed_hash} for entry {signed_seq}, but "
                f"that entry's hash is {entry.prev}: entries before it were changed (and the "
                "chain recomputed)",
                where,
            )
        if not self.keys:
            return
        key = self.keys.get(key_fingerprint)
        if key is None:
            given = ", ".join(sorted(self.keys))
            self.problem(
                "key",
                f"checkpoint {entry.seq} was signed by another key ({key_fingerprint}), not by "
                f"the given public key ({given})",
                where,
            )
        elif not key.verify(signed_seq, signed_hash, signature):
            self.problem(
                "signature",
                f"checkpoint {entry.seq}: bad signature: the checkpoint was changed or forged",
                where,
            )
        else:
            self.valid += 1

    def unsigned(self) -> str:
        """What the entries after the last checkpoint are, and who signs them."""
        one = self.tail == 1
        entries, verb = f"{self.tail} entr{'y' if one else 'ies'}", "is" if one else "are"
        text = f"{entries} after the last signed checkpoint {verb} hash-chained but not yet signed"
        if self.pending is not None or self.ended_unsigned:
            return (
                f"{text}: the run that wrote them ended without its checkpoint (it was "
                "interrupted, or could not use the signing key); the next run signs them"
            )
        if self.tail_runs:
            return (
                f"{text}: a run is in progress (its checkpoint will sign them) or was "
                "interrupted (the next run signs them)"
            )
        return f"{text}: written between runs; the next run signs them"

    def finish(self, chain: Verification, first_seq: int | None, strict: bool) -> list[str]:
        """The checks that need the whole log; returns the warnings."""
        warnings: list[str] = []
        if chain.begins_after is not None:
            warnings.append(
                f"the log begins at entry {first_seq}, going on from {chain.begins_after}, "
                "which is not here (removed after its retention period?); entries before "
                "it cannot be checked"
            )
        if not chain.ok:
            return warnings  # the chain problem is reported; the rest would only guess
        last_seq = chain.head[0]
        for seq in sorted(set(self.heads) - self.seen_heads):
            if seq > last_seq:
                self.problem(
                    "head",
                    f"the log was cut: it ends at entry {last_seq}, but the expected head is "
                    f"entry {seq}",
                    None,
                )
            else:
                self.problem(
                    "head",
                    f"the expected head entry {seq} is not in the files here (the log begins "
                    f"at entry {first_seq})",
                    None,
                )
        if self.count and self.tail:
            # A kill between a run's last entry and its checkpoint leaves exactly this, and the
            # next run signs it first; a checkpoint removed from the end looks the same, which
            # only a head copied off the host (--head) can tell.
            if strict:
                self.problem("unsigned_tail", self.unsigned(), self.first_unsigned)
            else:
                warnings.append(self.unsigned())
        torn = chain.torn_tail
        if torn is not None:
            if strict:
                self.problems.append(
                    Problem("torn_tail", torn.describe(), None, torn.file, torn.line)
                )
            else:
                warnings.append(torn.describe())
        if self.count == 0 and self.run_entries:
            if self.keys:
                self.problem(
                    "no_checkpoints",
                    "no checkpoints: the log was never signed or the checkpoints were removed",
                    None,
                )
            else:
                warnings.append("no checkpoints: the log is not signed (audit.signing_key)")
        elif self.count and not self.keys:
            warnings.append(
                "signatures not checked: give the public key (--public-key) to check them"
            )
        return warnings


def check_log(
    path: Path,
    keys: Sequence[VerifyKey] = (),
    heads: Sequence[tuple[int, str]] = (),
    *,
    strict: bool = False,
) -> LogCheck:
    """Check the chain through every file, every checkpoint's place and, with `keys`, its
    signature; that each run (after signing began) ends with a checkpoint, or is the last and
    still unsigned; and that each expected head (seq, hash), copied off the host earlier, is
    still in the log.

    What an interrupted run leaves for the next one (entries after the last checkpoint, an
    incomplete last line) is a warning, or with `strict` a problem."""
    state = WalkState()
    checker = _Checkpoints(keys, heads)
    count, head, first_seq = 0, (0, GENESIS), None
    chain_problem: Problem | None = None
    broken: Broken | None = None
    try:
        for file, line, entry in walk(path, state):
            if first_seq is None:
                first_seq = entry.seq
            checker.entry(file, line, entry)
            count, head = count + 1, (entry.seq, entry.hash)
    except Broken as error:
        broken = error
        where = "" if error.seq is None else f" (entry {error.seq})"
        chain_problem = Problem(
            "chain", f"chain broken{where}: {error.reason}", error.seq, error.file, error.line
        )
    chain = Verification(
        broken is None,
        count,
        head,
        broken.line if broken else None,
        broken.seq if broken else None,
        broken.reason if broken else None,
        tuple(state.files),
        broken.file if broken else None,
        state.begins_after,
        state.torn,
    )
    warnings = checker.finish(chain, first_seq, strict)
    problems = list(checker.problems)
    if chain_problem is not None:
        problems.append(chain_problem)
    return LogCheck(
        chain,
        checker.count,
        checker.valid,
        bool(keys),
        checker.last,
        checker.tail,
        tuple(problems),
        tuple(warnings),
        state.torn,
    )

"""The fleet report: one document over the PBXs a service provider looks after, each its own
system with its own config, deletion log and public key, collected into one folder.

    FLEET/pbx-mueller-gmbh/retentiond.yaml      the host's config, as it runs there
    FLEET/pbx-mueller-gmbh/audit.jsonl          its deletion log (and its rotated files, .1 ...)
    FLEET/pbx-mueller-gmbh/retentiond.pub       the public key of its signing key

Each system's log is checked against its own public key: the chain, every checkpoint's
signature, and that the runs were signed at all (an unsigned log fails, as `audit verify
--public-key` says). Each system gets its DPO report's first page; the fleet's first page lists
every system's verdict. A system whose folder cannot be reported on (no config, a config that
cannot be read here, no log, no key) is listed as failed, with what to change: never left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from retentiond.config.loader import load_config
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.report import build
from retentiond.evidence.report.summary import Summary, summary
from retentiond.evidence.report.values import Period, Report
from retentiond.i18n import DEFAULT, N_, Language, Words, words

CONFIG_NAME = "retentiond.yaml"
KEY_PATTERN = "*.pub"
LEVELS = ("green", "amber", "red")
SHORT = {
    "green": N_("met"),
    "amber": N_("met, with a reservation"),
    "red": N_("deadline may be exceeded"),
}


@dataclass(frozen=True)
class FleetSystem:
    """One PBX of the fleet: its report's first page, or why it has none."""

    name: str
    level: str  # the worst of its rule verdicts and its log's check; red when it has no report
    report: Report | None = None
    summary: Summary | None = None
    problem: str | None = None  # why there is no report, in the fleet report's language

    @property
    def reason(self) -> str | None:
        """Why it failed, for the command's error output: its problem, or its log's first."""
        if self.problem is not None:
            return self.problem
        assert self.report is not None
        for log in self.report.logs:
            if log.problems:
                return f"its deletion log does not verify against its public key: {log.problems[0]}"
        return None

    @property
    def log_verified(self) -> bool:
        """Its log was read, checked against its public key and found intact and signed."""
        return self.report is not None and all(log.intact for log in self.report.logs)


@dataclass(frozen=True)
class Fleet:
    systems: list[FleetSystem]
    first_day: date
    last_day: date
    generated_at: datetime
    language: Language

    @property
    def failed(self) -> list[FleetSystem]:
        """Systems whose log does not verify or that could not be reported on."""
        return [s for s in self.systems if not s.log_verified]

    def count(self, level: str) -> int:
        return sum(1 for s in self.systems if s.level == level)

    def board(self, columns: int) -> list[list[FleetSystem | None]]:
        """The first page's overview: every system, the worst first (then by name), filled
        down each of `columns` columns; None pads the last one."""
        ordered = sorted(self.systems, key=lambda s: (-LEVELS.index(s.level), s.name))
        rows = -(-len(ordered) // columns)
        return [
            [ordered[c * rows + r] if c * rows + r < len(ordered) else None for c in range(columns)]
            for r in range(rows)
        ]


def short_verdict(said: Words, system: FleetSystem) -> str:
    """A system's verdict in a few words, for the first page's overview."""
    if system.problem is not None:
        return said.gettext(N_("no report"))
    if not system.log_verified:
        return said.gettext(N_("log does not verify"))
    return said.gettext(SHORT[system.level])


def build_fleet(
    folder: Path,
    first_day: date,
    last_day: date,
    generated_at: datetime,
    language: Language = DEFAULT,
) -> Fleet:
    """A report of every system folder in `folder` (sorted by name). RetentiondError when the
    folder holds no system at all."""
    try:
        folders = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError as error:
        raise RetentiondError(
            f"cannot read the fleet folder {folder}: {error.strerror or error}"
        ) from None
    if not folders:
        raise RetentiondError(
            f"{folder} holds no system: give a folder with one folder per PBX, each holding "
            f"{CONFIG_NAME}, its deletion log and its public key (*.pub)"
        )
    systems = [_system(path, first_day, last_day, generated_at, language) for path in folders]
    return Fleet(systems, first_day, last_day, generated_at, language)


def _system(
    folder: Path, first_day: date, last_day: date, generated_at: datetime, language: Language
) -> FleetSystem:
    said = words(language)
    name = folder.name
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        return _failed(name, said.gettext("no {file} collected").format(file=CONFIG_NAME))
    try:
        loaded = load_config(config_file)
    except RetentiondError as error:
        # Our own wording (the config's file, line and what to change), never a server's text.
        return _failed(
            name,
            said.gettext(
                "its config cannot be read here: {reason}. A preset is expanded from the "
                "PBX's own files: collect the config in force that `retentiond init "
                "--from-config` writes on the PBX"
            ).format(reason=error),
        )
    log_file = folder / loaded.config.audit.path.name
    if not log_file.is_file():
        return _failed(
            name, said.gettext("no deletion log {file} collected").format(file=log_file.name)
        )
    key_files = sorted(folder.glob(KEY_PATTERN))
    if not key_files:
        return _failed(
            name,
            said.gettext("no public key (*.pub) collected: the log's signatures cannot be checked"),
        )
    try:
        keys = [audit.VerifyKey.from_file(path) for path in key_files]
    except RetentiondError as error:
        return _failed(
            name, said.gettext("its public key cannot be read: {reason}").format(reason=error)
        )
    period = Period(first_day, last_day, loaded.config.zone())
    try:
        report = build.build_report(
            loaded,
            [log_file],
            period,
            generated_at=generated_at,
            language=language,
            keys=keys,
            system=name,
        )
    except RetentiondError as error:  # a file that is no deletion log, unreadable
        return _failed(
            name, said.gettext("its deletion log cannot be read: {reason}").format(reason=error)
        )
    levels = [row.level for row in report.compliance] + [log.level for log in report.logs]
    level = max(levels, key=LEVELS.index) if levels else "amber"
    if not report.compliance:
        level = max(level, "amber", key=LEVELS.index)
    return FleetSystem(name, level, report, summary(report))


def _failed(name: str, problem: str) -> FleetSystem:
    return FleetSystem(name, "red", problem=problem)

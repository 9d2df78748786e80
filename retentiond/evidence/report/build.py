"""The DPO report for a period, built from the config and the deletion logs, and the rule
catalogue alone (`report --rules`). The figures come from the replay of the logs (`replay`), the
rules from the config; `render` turns either into its forms."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from retentiond import __version__
from retentiond.config.loader import LoadedConfig
from retentiond.config.model import Config
from retentiond.evidence import log as audit
from retentiond.evidence.log.opening import log_path
from retentiond.evidence.report import tables, verdicts
from retentiond.evidence.report.catalogue import hold_rows, organisation, rule_rows
from retentiond.evidence.report.logs import first_ts, in_file, log_info, name_systems, read_log
from retentiond.evidence.report.replay import Replay
from retentiond.evidence.report.values import (
    Catalogue,
    Finding,
    HoldReport,
    HoldRow,
    Method,
    Period,
    Report,
)
from retentiond.evidence.report.wording import ENGLISH, period_text
from retentiond.i18n import DEFAULT, Language, Words, words
from retentiond.stores.kinds import KINDS


def build_report(
    loaded: LoadedConfig,
    log_paths: Sequence[Path],
    period: Period,
    *,
    residual: Sequence[Finding] = (),
    residual_host: str = "",
    generated_at: datetime | None = None,
    language: Language = DEFAULT,
    keys: Sequence[audit.VerifyKey] = (),
    system: str | None = None,
) -> Report:
    """All figures for the period from the given logs (default: the config's audit.path).

    `keys` check the logs' signatures too (the fleet report, with each host's public key);
    `system` names every log's system (instead of its host or organisation.system)."""
    config = loaded.config
    said = words(language)
    _ = said.gettext
    generated = (generated_at or datetime.now(UTC)).astimezone(UTC)
    paths = list(log_paths) or [log_path(config)]
    own_system = config.organisation.system if config.organisation else None
    logs = [read_log(path, keys) for path in paths]
    name_systems(logs, log_path(config), own_system, system)
    systems = list(dict.fromkeys(log.system for log in logs))
    replay = Replay(config, period, generated, said)
    # Rotated files of one system in the order they were written.
    for log in sorted(logs, key=lambda lg: (lg.system, first_ts(lg))):
        replay.read(log.system, log.entries)
    replay.finish()
    log_infos = [log_info(log) for log in logs]
    notes = [
        _(
            "The audit log {path} is broken at line {line}{file} ({reason}): figures after "
            "that line are missing."
        ).format(
            path=log.path,
            line=log.verification.broken_at,
            file=in_file(log.verification, said),
            reason=log.verification.reason,
        )
        for log in logs
        if not log.verification.ok
    ]
    notes += [
        _("The audit log {path} does not verify: {problem}.").format(
            path=info.path, problem=info.problems[0]
        )
        for info in log_infos
        if info.problems and info.broken_line is None
    ]
    in_force = [
        replace(hold, matches_nothing=replay.matching_nothing(hold.id, _hold_rules(hold, config)))
        for hold in hold_rows(config.holds, generated, period.zone)
    ]
    notes += [
        _(
            "Hold {hold} matches nothing: at the last run of each of its rules no object of any "
            "age was in its scope, so it protects nothing. Check its numbers (international "
            "form, in quotes), extensions, from/to and rules."
        ).format(hold=hold.id)
        for hold in in_force
        if hold.matches_nothing
    ]
    notes += [
        _(
            "Hold {hold} was due for review on {day}: it keeps holding until it is reviewed "
            "(extend review_by, or end it with until:)."
        ).format(hold=hold.id, day=said.day(hold.review_by))
        for hold in in_force
        if hold.review_overdue
    ]
    return Report(
        organisation=organisation(config, said),
        first_day=period.first_day,
        last_day=period.last_day,
        zone=str(period.zone),
        generated_at=generated,
        version=__version__,
        config_path=str(loaded.path),
        config_sha256=loaded.sha256,
        systems=systems,
        rules=rule_rows(config, said),
        compliance=verdicts.compliance(replay, systems),
        weeks=period.weeks(),
        deletions_by_week=tables.by_week(replay),
        deletions_by_store=tables.by_store(replay),
        totals=tables.totals(replay),
        runs=tables.run_counts(replay),
        incidents=sorted(replay.incidents, key=lambda i: (i.at, i.system, i.rule)),
        holds=HoldReport(in_force, tables.hold_history(replay), tables.held(replay)),
        config_hashes=tables.config_hashes(replay),
        config_reloads=replay.reloads,
        logs=log_infos,
        residual_host=residual_host,
        residual=list(residual),
        methods=methods(config, replay.kinds, said),
        grace=period_text(said, config.safety.deadline_grace),
        notes=notes,
        anonymization=verdicts.anonymization(replay),
        erasures=tables.erasures_in_period(replay),
        subject_searches=sorted(replay.searches, key=lambda s: (s.at, s.system)),
        language=language,
    )


def _hold_rules(hold: HoldRow, config: Config) -> list[str]:
    return hold.rules if hold.rules is not None else [rule.name for rule in config.rules]


def methods(config: Config, seen: Iterable[str], said: Words = ENGLISH) -> list[Method]:
    """How each store kind of the config, or seen in the logs, deletes (stores/kinds.py)."""
    kinds = {store.type for rule in config.rules for store in rule.stores} | set(seen)
    return [
        Method(kind, said.gettext(row.title), said.gettext(row.deletes))
        for kind, row in KINDS.items()
        if kind in kinds
    ]


def catalogue(
    loaded: LoadedConfig, generated_at: datetime | None = None, language: Language = DEFAULT
) -> Catalogue:
    config = loaded.config
    said = words(language)
    return Catalogue(
        organisation(config, said),
        (generated_at or datetime.now(UTC)).astimezone(UTC),
        __version__,
        str(loaded.path),
        loaded.sha256,
        period_text(said, config.safety.deadline_grace),
        rule_rows(config, said),
        language,
    )

"""The report's tables of what was done, from the replay of the logs: deletions per week, per
store and per rule, runs by status, config hashes, hold history and counts, erasures."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from retentiond.evidence.report.replay import Replay
from retentiond.evidence.report.values import (
    ConfigSeen,
    Erasure,
    HeldCount,
    HoldEvent,
    RuleTotal,
    RunCount,
    StoreDeletion,
    WeekDeletion,
)


def by_week(replay: Replay) -> list[WeekDeletion]:
    mondays = {w.label: w.monday for w in replay.period.weeks()}
    rows = [
        WeekDeletion(
            week,
            mondays.get(week, date.min),
            system,
            rule,
            unit,
            int(v[0] or 0),
            v[1],
            replay.week_anonymized.get((week, system, rule, unit), 0),
        )
        for (week, system, rule, unit), v in replay.week.items()
    ]
    return sorted(rows, key=lambda r: (r.week, r.system, r.rule, r.unit))


def by_store(replay: Replay) -> list[StoreDeletion]:
    rows = []
    for (system, rule, store, unit), f in replay.store.items():
        days = sorted(f["days"])
        rows.append(
            StoreDeletion(
                system,
                rule,
                store,
                unit,
                f["deleted"],
                f["bytes"],
                f["batches"],
                days[0] if days else None,
                days[-1] if days else None,
                dict(sorted(f["skipped"].items())),
                f["anonymized"],
            )
        )
    return sorted(rows, key=lambda r: (r.system, r.rule, r.store))


def totals(replay: Replay) -> list[RuleTotal]:
    sums: dict[tuple[str, str, str], list[int | None]] = defaultdict(lambda: [0, None, 0])
    for row in by_store(replay):
        total = sums[(row.system, row.rule, row.unit)]
        total[0] = (total[0] or 0) + row.deleted
        total[2] = (total[2] or 0) + row.anonymized
        if row.bytes is not None:
            total[1] = (total[1] or 0) + row.bytes
    return [
        RuleTotal(system, rule, unit, int(v[0] or 0), v[1], int(v[2] or 0))
        for (system, rule, unit), v in sorted(sums.items())
    ]


def hold_history(replay: Replay) -> list[HoldEvent]:
    return sorted(replay.hold_events, key=lambda e: (e.at, e.system, e.hold))


def held(replay: Replay) -> list[HeldCount]:
    rows = [
        HeldCount(hold, system, store, count, at)
        for (system, hold, store), (at, count) in replay.held_latest.items()
    ]
    return sorted(rows, key=lambda r: (r.hold, r.system, r.store))


def erasures_in_period(replay: Replay) -> list[Erasure]:
    rows = []
    for (system, _), e in replay.erasures.items():
        moment = e.started or e.finished
        if moment is None or not replay.period.contains(moment):
            continue
        stores = e.stores
        finished = e.finished is not None
        status, reason = e.status, e.reason
        if not finished:
            status = "no end recorded"
            reason = replay.words.gettext(
                "the erasure started but recorded no end (crash or power loss); "
                "run it again with the same ticket"
            )
        rows.append(
            Erasure(
                system=system,
                ticket=e.ticket,
                started=e.started,
                finished=e.finished,
                status=status,
                reason=reason,
                found=sum(s.found for s in stores),
                deleted=e.final_deleted if finished else e.batch_deleted,
                held=e.final_held if finished else sum(s.held for s in stores),
                stores=stores,
                outcome=e.outcome if finished else None,
            )
        )
    return sorted(rows, key=lambda r: (r.started or r.finished or replay.period.start, r.system))


def run_counts(replay: Replay) -> list[RunCount]:
    return [
        RunCount(system, rule, status, count)
        for (system, rule, status), count in sorted(replay.status.items())
    ]


def config_hashes(replay: Replay) -> list[ConfigSeen]:
    rows = [
        ConfigSeen(system, sha, first, last, runs)
        for (system, sha), (first, last, runs) in replay.hashes.items()
    ]
    return sorted(rows, key=lambda r: (r.system, r.first_seen))

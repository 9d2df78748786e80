"""Issue 6 as properties: over generated call tables and spools with random holds and cutoffs, no
held or unexpired object is ever deleted or changed, and every expired unheld one is.

The real stores are driven through the engine's loop (`for batch in store.batches(cutoff, holds):
store.apply(batch, cutoff)`) on real data: SQLite call tables (FreePBX's cdr without a primary
key, purged along its calldate index; a keyed table without an index on its time, walked by key),
FreePBX's cdr on MariaDB, a FreePBX recordings tree and an Asterisk voicemail spool. Each outcome
is compared with an oracle computed here from what was written, independently of the stores: a
hold covers the Berlin days `from`..`to` of the objects naming one of its numbers (in any form
listed in FORMS) or extensions, and is in force for its rules until the end of its `until` day.

Wall-clock times in Europe/Berlin may be ambiguous (27 October, 02:00-02:59 twice) or not exist
(31 March, 02:00-02:59). The oracle keeps what may be held or may be newer than the cutoff
(a value that cannot exist only when it is newer in both readings) and requires deletion only of
what is older in every reading and held by no reading. Near a DST change the SQL store may keep
a little more (it moves its bound back by the repeated hour, widens hold windows by the shift):
there, rows within the shift of the cutoff or of a hold's edge may go either way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbxdata import POSTGRES_CDR, PbxDatabase, cdr_rows
from spool import add_message
from sqlalchemy import text

from retentiond.config.model import (
    ConnectionConfig,
    FilesStoreConfig,
    HoldConfig,
    SqlStoreConfig,
    VoicemailStoreConfig,
)
from retentiond.policy.anonymize import Transform, parse_transform
from retentiond.policy.rules import Holds, holds_for
from retentiond.stores.base import Store
from retentiond.stores.files.store import FilesStore
from retentiond.stores.sql.store import SqlStore
from retentiond.stores.voicemail.store import VoicemailStore

BERLIN = ZoneInfo("Europe/Berlin")
RULE = "calls"

# A year of calls around both DST changes of 2024 in Berlin.
FIRST_WALL = datetime(2024, 1, 1)
LAST_WALL = datetime(2025, 1, 31)
SPRING = date(2024, 3, 31)  # 02:00-02:59 does not exist
AUTUMN = date(2024, 10, 27)  # 02:00-02:59 happens twice
TRANSITIONS = (datetime(2024, 3, 31, 1, tzinfo=UTC), datetime(2024, 10, 27, 1, tzinfo=UTC))
SHIFT = timedelta(hours=1)  # what a DST change moves the wall clock by in Berlin

# Whose calls a hold may be about (international form, as a hold names them) with every form a
# PBX stores their number in, the extensions a hold may name (stored as written), and strangers,
# one of whom only looks like a subject. Written out, so the oracle does not share the code.
FORMS = {
    "+4930123456": ("+4930123456", "004930123456", "4930123456", "030123456"),
    "+4989555123": ("+4989555123", "004989555123", "4989555123", "089555123"),
    "+4917612345678": ("+4917612345678", "004917612345678", "4917612345678", "017612345678"),
}
PEOPLE = tuple(FORMS)
EXTENSIONS = ("201", "1001", "2001")
STRANGERS = ("+4940999888", "0301234567", "202", "1002", "")
STORED = (*(form for forms in FORMS.values() for form in forms), *EXTENSIONS, *STRANGERS)
MAILBOXES = ("1001", "1002", "2001")
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)

# Reproducible in CI: the same examples every run, no example database, no output.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the oracle ----------------------------------------------------------------------------------


def readings(wall: datetime) -> tuple[datetime, datetime]:
    """The earliest and the latest instant a Berlin wall-clock time can denote."""
    first = wall.replace(tzinfo=BERLIN, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=BERLIN, fold=1).astimezone(UTC)
    return min(first, second), max(first, second)


def exists(wall: datetime) -> bool:
    """False in the spring gap: no clock in Berlin ever showed this time."""
    there = wall.replace(tzinfo=BERLIN).astimezone(UTC).astimezone(BERLIN)
    return there.replace(tzinfo=None) == wall


def near_transition(instant: datetime, reach: timedelta = timedelta(hours=3)) -> bool:
    return any(abs(instant - moment) <= reach for moment in TRANSITIONS)


def start_of(day: date) -> datetime:
    return datetime.combine(day, time()).replace(tzinfo=BERLIN).astimezone(UTC)


def end_of(day: date) -> datetime:
    return start_of(day + timedelta(days=1)) - timedelta(microseconds=1)


@dataclass(frozen=True)
class Scenario:
    """A run: its cutoff, when it runs (which holds are in force), and the holds configured."""

    cutoff: datetime
    now: datetime
    holds: tuple[HoldConfig, ...]

    def in_force(self) -> Holds:
        """What the engine hands a store."""
        return holds_for(self.holds, RULE, self.now, BERLIN)

    def applying(self) -> list[HoldConfig]:
        """The holds that keep anything of this rule now: for this rule, not past `until`."""
        today = self.now.astimezone(BERLIN).date()
        return [
            hold
            for hold in self.holds
            if (hold.rules is None or RULE in hold.rules)
            and (hold.until is None or today <= hold.until)
        ]

    def held(self, days: Sequence[date], names: Callable[[HoldConfig], bool]) -> bool:
        """Whether a hold in force covers one of `days` and names the object."""
        return any(
            names(hold) and any(covers_day(hold, day) for day in days) for hold in self.applying()
        )


def covers_day(hold: HoldConfig, day: date) -> bool:
    return (hold.from_ is None or hold.from_ <= day) and (hold.to is None or day <= hold.to)


def naming(values: Sequence[object], can_tell: bool = True) -> Callable[[HoldConfig], bool]:
    """Whether a hold is about the object with these subject values; a hold without numbers and
    extensions is about everyone's, and so is every hold where the store cannot tell whose."""

    def names(hold: HoldConfig) -> bool:
        if not (hold.numbers or hold.extensions) or not can_tell:
            return True
        return any(names_value(hold, value) for value in values)

    return names


def names_value(hold: HoldConfig, value: object) -> bool:
    """A stored value is one of the hold's extensions or one of its numbers in any form."""
    forms = {form for number in hold.numbers for form in FORMS[number]}
    return value in forms or value in hold.extensions


@dataclass(frozen=True)
class Verdict:
    """`stay`: must be there untouched; `go`: must be deleted (or anonymized); neither: either."""

    stay: bool
    go: bool

    def __post_init__(self) -> None:
        assert not (self.stay and self.go), "the oracle contradicts itself"


def wall_verdict(
    scenario: Scenario, wall: datetime, names: Callable[[HoldConfig], bool]
) -> Verdict:
    """An SQL row of Berlin wall-clock time `wall`."""
    cutoff = scenario.cutoff
    earliest, latest = readings(wall)
    held = scenario.held([wall.date()], names)
    newer = (latest if exists(wall) else earliest) >= cutoff
    older = latest < cutoff
    if near_transition(cutoff) and latest >= cutoff - SHIFT:
        older = False  # the bound moved back by the repeated hour
    days = [wall.date()]
    if near_transition(latest):
        days += [(wall - SHIFT).date(), (wall + SHIFT).date()]  # a widened hold edge
    return Verdict(stay=held or newer, go=older and not scenario.held(days, names))


def instant_verdict(
    scenario: Scenario, earliest: datetime, latest: datetime, names: Callable[[HoldConfig], bool]
) -> Verdict:
    """An object whose time is known to lie in [earliest, latest] (files, voicemail)."""
    days = sorted({earliest.astimezone(BERLIN).date(), latest.astimezone(BERLIN).date()})
    held = scenario.held(days, names)
    return Verdict(stay=held or latest >= scenario.cutoff, go=latest < scenario.cutoff and not held)


# -- generated scenarios -------------------------------------------------------------------------


def around(center: datetime, reach: timedelta) -> st.SearchStrategy[datetime]:
    seconds = int(reach.total_seconds())
    return st.integers(-seconds, seconds).map(lambda s: center + timedelta(seconds=s))


ANY_WALL = around(FIRST_WALL + (LAST_WALL - FIRST_WALL) / 2, (LAST_WALL - FIRST_WALL) / 2)
DST_WALL = st.sampled_from([SPRING, AUTUMN]).flatmap(
    lambda day: around(datetime.combine(day, time(2, 30)), timedelta(hours=3))
)
CUTOFFS = st.one_of(
    st.tuples(ANY_WALL, st.booleans()).map(
        lambda wall: wall[0].replace(tzinfo=BERLIN, fold=int(wall[1])).astimezone(UTC)
    ),
    st.sampled_from(TRANSITIONS).flatmap(lambda moment: around(moment, timedelta(hours=3))),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    cutoff = draw(CUTOFFS)
    now = cutoff + timedelta(days=draw(st.integers(0, 400)))
    local = cutoff.astimezone(BERLIN).date()
    # Days worth meeting: the DST changes, the day before spring's, the cutoff's.
    days = st.one_of(
        st.sampled_from([SPRING, SPRING - timedelta(days=1), AUTUMN, local, local - timedelta(1)]),
        ANY_WALL.map(datetime.date),
    )
    holds = []
    for number in range(draw(st.integers(0, 3))):
        first = draw(st.none() | days)
        last = draw(st.none() | days)
        if first is not None and last is not None and last < first:
            first, last = last, first
        until = draw(st.none() | st.integers(-5, 5).map(lambda k: now.date() + timedelta(days=k)))
        fields: dict[str, Any] = {
            "id": f"HOLD-{number}",
            "reason": "litigation",
            "approved_by": "DPO",
            "review_by": date(2026, 1, 1),
            "until": until,
            "rules": draw(st.sampled_from([None, [RULE], ["other"]])),
            "from": first,
            "to": last,
        }
        about = draw(st.sampled_from(["everyone", "numbers", "extensions", "both"]))
        if about in ("numbers", "both"):
            fields["numbers"] = draw(st.lists(st.sampled_from(PEOPLE), min_size=1, max_size=2))
        if about in ("extensions", "both"):
            fields["extensions"] = [draw(st.sampled_from(EXTENSIONS))]
        holds.append(HoldConfig.model_validate(fields))
    return Scenario(cutoff, now, tuple(holds))


def walls_for(scenario: Scenario) -> st.SearchStrategy[datetime]:
    """Call times anywhere, on the DST days, around the cutoff and around the holds' edges."""
    cutoff_wall = scenario.cutoff.astimezone(BERLIN).replace(tzinfo=None)
    edges = [
        datetime.combine(day + timedelta(days=shift), time())
        for hold in scenario.holds
        for day, shift in ((hold.from_, 0), (hold.to, 1))
        if day is not None
    ]
    choices = [
        ANY_WALL,
        DST_WALL,
        around(cutoff_wall, timedelta(hours=3)),
        around(cutoff_wall, timedelta(hours=36)),
    ]
    if edges:
        choices.append(st.sampled_from(edges).flatmap(lambda e: around(e, timedelta(hours=2))))
    return st.one_of(choices)


@dataclass(frozen=True)
class Call:
    wall: datetime  # Berlin wall-clock time, as the PBX stores it
    src: str
    dst: str


def calls_for(scenario: Scenario) -> st.SearchStrategy[list[Call]]:
    stored = st.sampled_from(STORED)
    return st.lists(st.builds(Call, walls_for(scenario), stored, stored), max_size=30)


# -- SQL -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A call table: how it is created and filled, and its columns."""

    name: str
    table: str
    time_column: str
    id_column: str
    subject_columns: tuple[str, ...]
    strategy: str

    def create(self, database: PbxDatabase, calls: Sequence[Call]) -> None:
        as_text = database.dialect == "sqlite"
        if self.name == "cdr":  # FreePBX's cdr: no primary key, an index on calldate
            if as_text:
                database.execute(*POSTGRES_CDR)  # SQLite keeps rowid; times are stored as text
            else:
                database.create("cdr")
            rows = cdr_rows([call.wall for call in calls])
            for row, call in zip(rows, calls, strict=True):
                stamp = call.wall.strftime("%Y-%m-%d %H:%M:%S") if as_text else call.wall
                row.update(calldate=stamp, src=call.src, dst=call.dst, cnum=call.src, did="")
            database.insert("cdr", rows)
            return
        # A keyed table without an index on its time: walked by key. NULL parties name nobody.
        database.execute(
            "CREATE TABLE calls (id INTEGER PRIMARY KEY, started TEXT NOT NULL, "
            "src VARCHAR(40) NULL, dst VARCHAR(40) NULL, duration INTEGER NOT NULL)"
        )
        database.insert(
            "calls",
            [
                {
                    "id": number,
                    "started": call.wall.strftime("%Y-%m-%d %H:%M:%S"),
                    "src": call.src or None,
                    "dst": call.dst,
                    "duration": number * 37 % 900,
                }
                for number, call in enumerate(calls, start=1)
            ],
        )

    def transforms(self, coarsen: bool) -> dict[str, Any]:
        settings: dict[str, Any] = {"src": "truncate_digits", "dst": "truncate_digits"}
        if self.name == "cdr":
            settings |= {"cnum": "truncate_digits", "clid": "blank"}
        else:
            settings["duration"] = {"bucket": [0, 60, 300]}
        if coarsen:
            settings[self.time_column] = {"coarsen_time": "hour"}
        return settings

    def wall(self, row: Mapping[str, Any]) -> datetime:
        value = row[self.time_column]
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)


CDR = Layout("cdr", "cdr", "calldate", "sequence", ("src", "dst", "cnum", "did"), "time_index")
KEYED = Layout("keyed", "calls", "started", "id", ("src", "dst"), "key_walk")


def open_sql_store(
    url: str, layout: Layout, batch_size: int, can_tell: bool, anonymize: Any = None
) -> SqlStore:
    settings: dict[str, Any] = {
        "type": "sql",
        "connection": "cdrdb",
        "table": layout.table,
        "time_column": layout.time_column,
        "batch_size": batch_size,
    }
    if can_tell:
        settings["subject_columns"] = list(layout.subject_columns)
    if anonymize:
        settings["anonymize"] = anonymize
    config = SqlStoreConfig.model_validate(settings)
    store = SqlStore(config, ConnectionConfig.model_validate({"url": url}), BERLIN)
    store.open()
    return store


@contextmanager
def sqlite_database() -> Iterator[PbxDatabase]:
    """A new SQLite file per example (fixtures are made once per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="rtd-prop-") as folder:
        path = Path(folder) / "master.db"
        path.touch()
        database = PbxDatabase.connect(f"sqlite:///{path}")
        try:
            yield database
        finally:
            database.close()


def table_rows(database: PbxDatabase, layout: Layout) -> dict[Any, dict[str, Any]]:
    with database.engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM {layout.table}")).mappings()
        return {row[layout.id_column]: dict(row) for row in result}


def verdicts(
    scenario: Scenario, layout: Layout, rows: Mapping[Any, Mapping[str, Any]], can_tell: bool
) -> dict[Any, Verdict]:
    return {
        key: wall_verdict(
            scenario,
            layout.wall(row),
            naming([row[column] for column in layout.subject_columns], can_tell),
        )
        for key, row in rows.items()
    }


def enforce(store: Store, scenario: Scenario) -> int:
    """The engine's loop, once."""
    holds, cutoff = scenario.in_force(), scenario.cutoff
    return sum(store.apply(batch, cutoff).deleted for batch in store.batches(cutoff, holds))


def anonymize(store: Store, scenario: Scenario) -> int:
    holds, cutoff = scenario.in_force(), scenario.cutoff
    batches = store.anonymize_batches(cutoff, holds)
    return sum(store.apply(batch, cutoff).anonymized for batch in batches)


def check_purge(
    database: PbxDatabase,
    layout: Layout,
    scenario: Scenario,
    calls: Sequence[Call],
    batch_size: int,
    can_tell: bool,
) -> None:
    layout.create(database, calls)
    before = table_rows(database, layout)
    expected = verdicts(scenario, layout, before, can_tell)
    store = open_sql_store(database.url, layout, batch_size, can_tell)
    try:
        assert store.strategy == layout.strategy
        survey = store.survey(scenario.cutoff, scenario.in_force())
        deleted = enforce(store, scenario)
        after = table_rows(database, layout)
        left = store.survey(scenario.cutoff, scenario.in_force())
    finally:
        store.close()

    for key, verdict in expected.items():
        if verdict.stay:
            assert after.get(key) == before[key], "a held or unexpired row was deleted or changed"
        if verdict.go:
            assert key not in after, "an expired row no hold covers survived"
        if key in after:
            assert after[key] == before[key], "a row that stayed was changed"
    assert deleted == len(before) - len(after) == survey.expired
    assert left.expired == 0


def check_anonymize(
    database: PbxDatabase,
    layout: Layout,
    scenario: Scenario,
    calls: Sequence[Call],
    batch_size: int,
    can_tell: bool,
    coarsen: bool,
) -> None:
    layout.create(database, calls)
    before = table_rows(database, layout)
    expected = verdicts(scenario, layout, before, can_tell)
    settings = layout.transforms(coarsen)
    transforms: dict[str, Transform] = {c: parse_transform(t) for c, t in settings.items()}
    store = open_sql_store(database.url, layout, batch_size, can_tell, anonymize=settings)
    try:
        anonymize(store, scenario)
        after = table_rows(database, layout)
        again = anonymize(store, scenario)
        after_again = table_rows(database, layout)
    finally:
        store.close()

    assert after.keys() == before.keys(), "anonymizing deleted or added rows"
    for key, verdict in expected.items():
        original = before[key]
        rewritten = original | {c: t.apply(original[c]) for c, t in transforms.items()}
        if verdict.stay:
            assert after[key] == original, "a held or unexpired row was anonymized"
        elif verdict.go:
            assert after[key] == rewritten, "an expired row no hold covers was not anonymized"
        else:
            assert after[key] in (original, rewritten)
    assert again == 0
    assert after_again == after, "a second run changed something"


LAYOUTS = st.sampled_from([CDR, KEYED])
BATCH_SIZES = st.integers(1, 8)


@settings(PROPERTY, max_examples=150)
@given(st.data(), scenarios(), LAYOUTS, BATCH_SIZES, st.booleans())
def test_sqlite_purge_deletes_exactly_the_expired_unheld_rows(
    data: st.DataObject, scenario: Scenario, layout: Layout, batch_size: int, can_tell: bool
) -> None:
    calls = data.draw(calls_for(scenario))
    with sqlite_database() as database:
        check_purge(database, layout, scenario, calls, batch_size, can_tell)


@settings(PROPERTY, max_examples=100)
@given(st.data(), scenarios(), LAYOUTS, BATCH_SIZES, st.booleans(), st.booleans())
def test_sqlite_anonymize_rewrites_exactly_the_expired_unheld_rows_once(
    data: st.DataObject,
    scenario: Scenario,
    layout: Layout,
    batch_size: int,
    can_tell: bool,
    coarsen: bool,
) -> None:
    calls = data.draw(calls_for(scenario))
    with sqlite_database() as database:
        check_anonymize(database, layout, scenario, calls, batch_size, can_tell, coarsen)


@contextmanager
def mariadb_database(url: str) -> Iterator[PbxDatabase]:
    """The test's MariaDB database, emptied for each example."""
    database = PbxDatabase.connect(url)
    try:
        database.execute("DROP TABLE IF EXISTS cdr")
        yield database
    finally:
        database.close()


@pytest.mark.mariadb
@settings(PROPERTY, max_examples=20)
@given(st.data(), scenarios(), BATCH_SIZES, st.booleans(), st.booleans())
def test_mariadb_keyless_cdr_purge_and_anonymize_spare_exactly_the_held_and_unexpired(
    mariadb_url: str,
    data: st.DataObject,
    scenario: Scenario,
    batch_size: int,
    can_tell: bool,
    coarsen: bool,
) -> None:
    """No key at all: batches delete with ORDER BY calldate LIMIT n, rewrites match by value."""
    calls = data.draw(calls_for(scenario))
    with mariadb_database(mariadb_url) as database:
        check_purge(database, CDR, scenario, calls, batch_size, can_tell)
    with mariadb_database(mariadb_url) as database:
        check_anonymize(database, CDR, scenario, calls, batch_size, can_tell, coarsen)


# -- files: FreePBX recordings -------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """FreePBX's `<in|out>-<dst>-<src>-<date>-<time>-<uniqueid>`: an extension and an outside
    party, whose number comes first on an outgoing call and last on an incoming one."""

    wall: datetime  # when the call started, Berlin wall clock (folder and name)
    inbound: bool
    extension: str
    outside: str
    converted: bool  # an .mp3 made of the .wav sits beside it

    @property
    def parties(self) -> tuple[str, str]:
        """dst and src."""
        if self.inbound:
            return self.extension, self.outside
        return self.outside, self.extension

    def stem(self, number: int) -> str:
        stamp = self.wall.strftime("%Y%m%d-%H%M%S")
        uniqueid = f"{int(readings(self.wall)[1].timestamp())}.{number}"
        dst, src = self.parties
        kind = "in" if self.inbound else "out"
        return f"{self.wall:%Y/%m/%d}/{kind}-{dst}-{src}-{stamp}-{uniqueid}"


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@settings(PROPERTY, max_examples=400)
@given(
    st.data(),
    scenarios(),
    st.sampled_from(["path_date", "filename_date"]),
    BATCH_SIZES,
    st.booleans(),
)
def test_recordings_tree_purge_deletes_exactly_the_expired_unheld_recordings(
    data: st.DataObject, scenario: Scenario, age_from: str, batch_size: int, subject_in_name: bool
) -> None:
    one_recording = st.builds(
        Recording,
        walls_for(scenario),
        st.booleans(),
        st.sampled_from((*EXTENSIONS, "202", "1002")),
        st.sampled_from([form for form in STORED if form and form not in EXTENSIONS]),
        st.booleans(),
    )
    recordings = data.draw(st.lists(one_recording, max_size=25))
    with tempfile.TemporaryDirectory(prefix="rtd-prop-") as folder:
        root = Path(folder) / "monitor"
        root.mkdir()
        expected: dict[str, Verdict] = {}
        for index, recording in enumerate(recordings):
            stem = recording.stem(index)
            if age_from == "path_date":
                earliest, latest = start_of(recording.wall.date()), end_of(recording.wall.date())
            else:
                earliest, latest = readings(recording.wall)
            names = naming(recording.parties, subject_in_name)
            verdict = instant_verdict(scenario, earliest, latest, names)
            for extension in (".wav", ".mp3") if recording.converted else (".wav",):
                path = root / (stem + extension)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(AUDIO + stem.encode())
                expected[stem + extension] = verdict
        before = tree_files(root)
        config = FilesStoreConfig.model_validate(
            {
                "type": "files",
                "root": root,
                "match": ["**/*.wav", "**/*.mp3"],
                "age_from": age_from,
                "group_siblings": True,
                "subject_in_name": subject_in_name,
                "batch_size": batch_size,
            }
        )
        store = FilesStore(config, BERLIN)
        store.open()
        try:
            deleted = enforce(store, scenario)
        finally:
            store.close()
        after = tree_files(root)

    for name, verdict in expected.items():
        if verdict.stay:
            assert after.get(name) == before[name], "a held or unexpired recording was deleted"
        if verdict.go:
            assert name not in after, "an expired recording no hold covers survived"
    assert deleted == len(before) - len(after)


# -- the voicemail spool -------------------------------------------------------------------------


@dataclass(frozen=True)
class Voicemail:
    left: datetime  # origtime
    mailbox: str
    folder: str
    caller: str
    named: bool  # callerid `"Name" <number>` rather than the bare number


def origtimes_for(scenario: Scenario) -> st.SearchStrategy[datetime]:
    cutoff = scenario.cutoff.replace(microsecond=0)
    return st.one_of(
        walls_for(scenario).map(lambda wall: readings(wall)[0]),
        st.sampled_from([cutoff - timedelta(seconds=1), cutoff, cutoff + timedelta(seconds=1)]),
    )


@settings(PROPERTY, max_examples=250)
@given(st.data(), scenarios(), BATCH_SIZES)
def test_voicemail_purge_deletes_exactly_the_expired_unheld_messages(
    data: st.DataObject, scenario: Scenario, batch_size: int
) -> None:
    messages = data.draw(
        st.lists(
            st.builds(
                Voicemail,
                origtimes_for(scenario),
                st.sampled_from(MAILBOXES),
                st.sampled_from(["INBOX", "Old"]),
                st.sampled_from(STORED[:-1]),
                st.booleans(),
            ),
            max_size=25,
        )
    )
    with tempfile.TemporaryDirectory(prefix="rtd-prop-") as folder:
        root = Path(folder) / "voicemail"
        root.mkdir()
        expected: dict[tuple[str, ...], Verdict] = {}
        numbering: dict[tuple[str, str], int] = {}
        for message in messages:
            number = numbering.get((message.mailbox, message.folder), 0)
            numbering[(message.mailbox, message.folder)] = number + 1
            callerid = f'"Caller" <{message.caller}>' if message.named else message.caller
            made = add_message(
                root,
                message.mailbox,
                message.folder,
                number,
                origtime=message.left,
                callerid=callerid,
            )
            paths = tuple(str(path.relative_to(root)) for path in made.paths)

            def names(hold: HoldConfig, message: Voicemail = message) -> bool:
                """Their mailbox, or their number as the caller id."""
                return (
                    not (hold.numbers or hold.extensions)
                    or message.mailbox in hold.extensions
                    or names_value(hold, message.caller)
                )

            moment = message.left.replace(microsecond=0)
            expected[paths] = instant_verdict(scenario, moment, moment, names)
        before = tree_files(root)
        config = VoicemailStoreConfig.model_validate(
            {
                "type": "asterisk_voicemail",
                "root": root,
                "lock_wait": 0.2,
                "batch_size": batch_size,
            }
        )
        store = VoicemailStore(config, BERLIN)
        store.open()
        try:
            deleted = enforce(store, scenario)
        finally:
            store.close()
        after = tree_files(root)

    for paths, verdict in expected.items():
        if verdict.stay:
            assert all(after.get(p) == before[p] for p in paths), "a kept message was touched"
        if verdict.go:
            assert not any(p in after for p in paths), "an expired message no hold covers survived"
        assert all(p in after for p in paths) or not any(p in after for p in paths)
    assert deleted == sum(1 for paths in expected if not any(p in after for p in paths))

"""The csv store on real cdr_csv files: what it removes, what it keeps byte for byte, and that no
line Asterisk appends during a rewrite is ever lost."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import structlog

from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import BatchResult
from retentiond.stores.csv.store import CsvStore

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2026, 2, 14, 12, 0, tzinfo=UTC)
YEAR_START = datetime(2025, 5, 20, 8, 0)  # naive: cdr_csv writes wall-clock times
YOUNG = datetime(2026, 5, 20, 10, 0)

# The fixture's personal data: none of it may leave the store.
CALLER_NAME = "Erika Mustermann"
CALLER_NUMBER = "+4930123456"
DIALLED = "030987654"
ACCOUNTS = ("1001", "acme", "")  # "" writes to Master.csv only
PERSONAL = (CALLER_NAME, "Mustermann", CALLER_NUMBER, DIALLED, "acme", "Weber")

StoreFactory = Callable[..., CsvStore]


def cdr_line(
    start: datetime,
    *,
    account: str = "1001",
    uniqueid: str = "1748762102.17",
    caller: bytes = CALLER_NAME.encode(),
    answered: bool = True,
) -> bytes:
    """One record the way cdr_csv's build_csv_record writes it: strings quoted, ints bare."""

    def quoted(value: bytes | str) -> bytes:
        raw = value.encode() if isinstance(value, str) else value
        return b'"' + raw.replace(b'"', b'""') + b'"'

    def stamp(moment: datetime | None) -> bytes:
        return quoted(moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "")

    answer = start + timedelta(seconds=7) if answered else None
    end = start + timedelta(seconds=169)
    fields = [
        quoted(account),
        quoted(CALLER_NUMBER),
        quoted(DIALLED),
        quoted("from-internal"),
        quoted(b'"' + caller + b'" <' + CALLER_NUMBER.encode() + b">"),
        quoted("PJSIP/1001-00000a1f"),
        quoted("PJSIP/trunk-00000a20"),
        quoted("Dial"),
        quoted(f"PJSIP/{DIALLED}@trunk,60,Tt"),
        stamp(start),
        stamp(answer),
        stamp(end),
        b"169",
        b"162" if answered else b"0",
        quoted("ANSWERED" if answered else "NO ANSWER"),
        quoted("DOCUMENTATION"),
        quoted(uniqueid),
        quoted("Weber, Kanzlei"),
    ]
    return b",".join(fields) + b"\n"


@dataclass
class CdrFolder:
    """A cdr-csv folder and the lines written to each of its files, in order."""

    root: Path
    lines: dict[str, list[tuple[datetime, bytes]]]

    def young(self, name: str, cutoff: datetime = CUTOFF) -> bytes:
        """What a file must hold after enforcement with the UTC zone: its young lines, in order."""
        wall_cutoff = cutoff.replace(tzinfo=None)
        return b"".join(line for start, line in self.lines[name] if start >= wall_cutoff)

    def expired(self, name: str) -> list[bytes]:
        return [line for start, line in self.lines[name] if start < CUTOFF.replace(tzinfo=None)]


def write_cdr_folder(root: Path) -> CdrFolder:
    """A year of calls, every 13 hours, in Master.csv and the per-account files."""
    root.mkdir()
    files: dict[str, list[tuple[datetime, bytes]]] = {"Master.csv": []}
    start = YEAR_START
    number = 0
    while start < YOUNG:
        account = ACCOUNTS[number % len(ACCOUNTS)]
        line = cdr_line(
            start, account=account, uniqueid=f"17{number:08d}.{number}", answered=number % 4 != 0
        )
        files["Master.csv"].append((start, line))
        if account:
            files.setdefault(f"{account}.csv", []).append((start, line))
        start += timedelta(hours=13)
        number += 1
    for name, lines in files.items():
        (root / name).write_bytes(b"".join(line for _, line in lines))
    return CdrFolder(root, files)


@pytest.fixture
def cdr(tmp_path: Path) -> CdrFolder:
    return write_cdr_folder(tmp_path / "cdr-csv")


@pytest.fixture
def open_store(open_csv_store: StoreFactory) -> StoreFactory:
    return open_csv_store


def enforce(store: CsvStore, cutoff: datetime = CUTOFF) -> list[BatchResult]:
    return [store.apply(batch, cutoff) for batch in store.batches(cutoff)]


def folder_names(root: Path) -> set[str]:
    return {path.name for path in root.iterdir()}


# -- what is removed and what is kept ------------------------------------------------------------


def test_expired_lines_are_removed_from_every_file_and_young_lines_kept_in_order(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    store = open_store(cdr.root)
    all_lines = [line for lines in cdr.lines.values() for line in lines]
    expired = sum(len(cdr.expired(name)) for name in cdr.lines)

    survey = store.survey(CUTOFF)
    assert (survey.unit, survey.total, survey.expired) == ("lines", len(all_lines), expired)
    assert survey.oldest == YEAR_START.replace(tzinfo=UTC)
    assert survey.expired_bytes == sum(
        len(line) for name in cdr.lines for line in cdr.expired(name)
    )
    assert survey.skipped == {}

    results = enforce(store)

    assert sum(result.deleted for result in results) == expired
    assert sum(result.bytes or 0 for result in results) == survey.expired_bytes
    assert all(not result.skipped for result in results)
    for name in cdr.lines:
        assert (cdr.root / name).read_bytes() == cdr.young(name), name
    after = store.survey(CUTOFF)
    assert (after.total, after.expired) == (len(all_lines) - expired, 0)
    assert after.oldest is not None and after.oldest >= CUTOFF


def test_one_batch_per_file_whatever_the_batch_size(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    store = open_store(cdr.root, batch_size=5)

    batches = list(store.batches(CUTOFF))

    assert [batch.planned for batch in batches] == [
        len(cdr.expired(name)) for name in sorted(cdr.lines)
    ]
    assert [batch.number for batch in batches] == [1, 2, 3]
    assert batches[0].span == (YEAR_START.date(), date(2026, 2, 14))


def test_a_line_at_the_cutoff_is_kept(tmp_path: Path, open_store: StoreFactory) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    at_cutoff = cdr_line(datetime(2026, 2, 14, 12, 0, 0))
    second_before = cdr_line(datetime(2026, 2, 14, 11, 59, 59))
    (root / "Master.csv").write_bytes(second_before + at_cutoff)
    store = open_store(root)

    [result] = enforce(store)

    assert result.deleted == 1
    assert result.span == (date(2026, 2, 14), date(2026, 2, 14))
    assert (root / "Master.csv").read_bytes() == at_cutoff


@pytest.mark.parametrize(("zone", "kept"), [(BERLIN, False), (UTC_ZONE, True)])
def test_the_zone_decides_whether_a_line_near_the_cutoff_has_expired(
    tmp_path: Path, open_store: StoreFactory, zone: ZoneInfo, kept: bool
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    # 12:30 in Berlin (winter, UTC+1) is 11:30 UTC, half an hour before the cutoff.
    near = cdr_line(datetime(2026, 2, 14, 12, 30))
    young = cdr_line(YOUNG)
    (root / "Master.csv").write_bytes(near + young)
    store = open_store(root, zone=zone)

    assert store.survey(CUTOFF).expired == (0 if kept else 1)
    enforce(store)

    assert (root / "Master.csv").read_bytes() == (near + young if kept else young)


def test_a_repeated_autumn_hour_counts_as_its_later_pass(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    # Berlin, 26 Oct 2025: 02:00-03:00 happens twice (00:00-01:00 UTC, then 01:00-02:00 UTC).
    repeated = cdr_line(datetime(2025, 10, 26, 2, 45))  # 00:45 or 01:45 UTC
    (root / "Master.csv").write_bytes(repeated)
    store = open_store(root, zone=BERLIN)

    assert store.survey(datetime(2025, 10, 26, 1, 0, tzinfo=UTC)).expired == 0
    assert store.survey(datetime(2025, 10, 26, 1, 46, tzinfo=UTC)).expired == 1


def test_lines_whose_time_cannot_be_read_are_kept_byte_for_byte_and_counted(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    old = datetime(2025, 6, 2, 9, 15, 2)
    broken_quoting = cdr_line(old).replace(b'"from-internal",', b'"from-internal,', 1)
    short_line = b'"1001","+4930123456","030987654"\n'
    garbage = b"\x00\x07#!garbage;;;\x1b[31m\n"
    not_utf8 = b"\xff\xfe\x80\x81 \xc3\x28\n"
    bad_date = cdr_line(old).replace(b"2025-06-02 09:15:02", b"2025-13-02 09:15:02", 1)
    empty = b"\n"
    # Latin-1 caller names are valid records: expired ones go, young ones stay byte for byte.
    latin1_old = cdr_line(old, caller="M\xfcller".encode("latin-1"))
    latin1_young = cdr_line(YOUNG, caller="M\xfcller".encode("latin-1"))
    unreadable = [broken_quoting, short_line, garbage, not_utf8, bad_date, empty]
    content = [cdr_line(old), *unreadable[:3], latin1_old, *unreadable[3:], latin1_young]
    (root / "Master.csv").write_bytes(b"".join(content))
    store = open_store(root)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (len(content), 2)
    assert survey.skipped == {"unparseable": len(unreadable)}
    [result] = enforce(store)

    assert result.deleted == 2
    assert (root / "Master.csv").read_bytes() == b"".join([*unreadable, latin1_young])
    assert store.survey(CUTOFF).skipped == {"unparseable": len(unreadable)}


def test_a_last_line_still_being_written_is_left_alone(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    old = cdr_line(datetime(2025, 6, 2, 9, 15, 2))
    young = cdr_line(YOUNG)
    partial = cdr_line(datetime(2025, 6, 3, 10, 0))[:-40]  # an old time, but no newline yet
    (root / "Master.csv").write_bytes(old + young + partial)
    store = open_store(root)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired, survey.skipped) == (2, 1, {})
    [result] = enforce(store)

    assert result.deleted == 1
    assert (root / "Master.csv").read_bytes() == young + partial


def test_a_rewrite_replaces_the_file_atomically_keeping_owner_and_mode(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    master = cdr.root / "Master.csv"
    os.chown(master, 1234, 5678)
    master.chmod(0o640)
    before = master.stat()
    store = open_store(cdr.root)

    enforce(store)

    after = master.stat()
    assert after.st_ino != before.st_ino
    assert (after.st_uid, after.st_gid) == (1234, 5678)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert folder_names(cdr.root) == set(cdr.lines)  # no temporary copy left behind


# -- lines Asterisk appends meanwhile ------------------------------------------------------------


def test_lines_appended_between_planning_and_the_rewrite_survive(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    store = open_store(cdr.root)
    [batch, *_] = store.batches(CUTOFF)
    appended = [cdr_line(YOUNG + timedelta(minutes=n), uniqueid=f"new.{n}") for n in range(3)]
    for line in appended:
        with (cdr.root / "1001.csv").open("ab") as csv_file:
            csv_file.write(line)

    result = store.apply(batch, CUTOFF)

    assert result.deleted == batch.planned
    assert (cdr.root / "1001.csv").read_bytes() == cdr.young("1001.csv") + b"".join(appended)


def test_a_line_written_to_the_old_file_after_the_rename_is_carried_over(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    """A writer that opened the file just before the rename writes into the old inode."""
    master = cdr.root / "Master.csv"
    store = open_store(cdr.root)
    old_inode = master.stat().st_ino
    [batch] = [b for b in store.batches(CUTOFF) if b.payload.inode == old_inode]
    late = cdr_line(YOUNG, uniqueid="late.1")
    on_time = cdr_line(YOUNG, uniqueid="on-time.1")
    outcome: list[BatchResult] = []

    with master.open("ab") as held_open:  # opened before the rename, like fopen("a")
        worker = threading.Thread(target=lambda: outcome.append(store.apply(batch, CUTOFF)))
        worker.start()
        deadline = time.monotonic() + 10
        while master.stat().st_ino == old_inode and time.monotonic() < deadline:
            time.sleep(0.001)
        assert master.stat().st_ino != old_inode, "the rewrite never renamed"
        with master.open("ab") as new_writer:  # a record written after the rename
            new_writer.write(on_time)
        time.sleep(0.05)
        assert worker.is_alive(), "the rewrite did not wait for the writer of the old file"
        held_open.write(late)
    worker.join(10)

    assert outcome and outcome[0].deleted == batch.planned
    assert master.read_bytes() == cdr.young("Master.csv") + on_time + late


WRITER = textwrap.dedent(
    """
    import signal, sys, time
    path, template = sys.argv[1], sys.argv[2]
    stop = False
    def finish(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, finish)
    written = 0
    while not stop:
        sequence = written + 1
        with open(path, "a") as cdr_file:  # cdr_csv: fopen("a"), one line, fclose
            if sequence % 4 == 0:
                time.sleep(0.001)  # now and then descheduled between open and write
            cdr_file.write(template.replace("SEQ", str(sequence)))
        written = sequence
        if written == 1:
            print("writing", flush=True)
    print(written, flush=True)
    """
)


@pytest.fixture(scope="module")
def big_master() -> list[tuple[datetime, bytes]]:
    """40k records over a year: a rewrite that takes a while."""
    starts = [datetime(2025, 5, 1) + timedelta(minutes=13 * n) for n in range(40_000)]
    return [(start, cdr_line(start, uniqueid=f"big.{n}")) for n, start in enumerate(starts)]


def test_a_concurrent_asterisk_writer_loses_no_line(
    tmp_path: Path, open_store: StoreFactory, big_master: list[tuple[datetime, bytes]]
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    master = root / "Master.csv"
    content = b"".join(line for _, line in big_master)
    young = [line for start, line in big_master if start >= CUTOFF.replace(tzinfo=None)]
    template = cdr_line(YOUNG, uniqueid="writer.SEQ").decode()
    store = open_store(root)
    carried = 0

    for _round in range(3):  # each rename is a new chance for the race
        master.write_bytes(content)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(master), template],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "writing\n"
            [batch] = store.batches(CUTOFF)
            result = store.apply(batch, CUTOFF)
            time.sleep(0.02)
        finally:
            writer.send_signal(signal.SIGTERM)
            output, _ = writer.communicate(timeout=10)
        written = int(output)

        final = master.read_bytes().splitlines(keepends=True)
        assert final[: len(young)] == young
        expected = Counter(template.replace("SEQ", str(n)).encode() for n in range(1, written + 1))
        assert Counter(final[len(young) :]) == expected
        assert result.deleted == len(big_master) - len(young)
        carried += result.counts.get("appended_lines_carried_over", 0)
        assert folder_names(root) == {"Master.csv"}
    assert carried, "the writer never wrote while a rewrite ran: the test proved nothing"


# -- what is left alone --------------------------------------------------------------------------


def test_a_file_replaced_after_planning_is_skipped_as_changed(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    store = open_store(cdr.root)
    [first, *_] = store.batches(CUTOFF)  # 1001.csv, in name order
    replacement = cdr.root / "rotated.tmp"
    replacement.write_bytes(b"".join(cdr.expired("1001.csv")))
    replacement.replace(cdr.root / "1001.csv")  # logrotate-style: a new file under the name

    result = store.apply(first, CUTOFF)

    assert result == BatchResult(deleted=0, bytes=0, skipped={"changed": 1})
    assert (cdr.root / "1001.csv").read_bytes() == b"".join(cdr.expired("1001.csv"))


def test_symlinks_and_other_non_files_are_left_alone_and_counted(
    cdr: CdrFolder, tmp_path: Path, open_store: StoreFactory
) -> None:
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(b"".join(cdr.expired("Master.csv")))
    (cdr.root / "linked.csv").symlink_to(outside)
    os.mkfifo(cdr.root / "pipe.csv")
    store = open_store(cdr.root)

    survey = store.survey(CUTOFF)
    enforce(store)

    assert survey.skipped == {"not_regular_file": 1, "symlink": 1}
    assert outside.read_bytes() == b"".join(cdr.expired("Master.csv"))
    assert (cdr.root / "linked.csv").is_symlink()


def test_a_hard_linked_file_is_not_rewritten(
    cdr: CdrFolder, tmp_path: Path, open_store: StoreFactory
) -> None:
    """A rewrite would leave the expired lines under the other name."""
    os.link(cdr.root / "acme.csv", tmp_path / "copy-of-acme.csv")
    store = open_store(cdr.root)

    results = enforce(store)

    assert sum((Counter(result.skipped) for result in results), Counter()) == {"hard_linked": 1}
    assert (tmp_path / "copy-of-acme.csv").samefile(cdr.root / "acme.csv")
    assert store.survey(CUTOFF).expired == len(cdr.expired("acme.csv"))  # reported as remaining


def test_a_copy_left_by_an_interrupted_rewrite_is_counted_then_removed(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    leftover = cdr.root / ".Master.csv.retentiond-0a1b2c3d"
    leftover.write_bytes(cdr.young("Master.csv"))
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    store = open_store(cdr.root)

    assert store.survey(CUTOFF).skipped == {"leftover_temp": 1}
    enforce(store)

    assert folder_names(cdr.root) == set(cdr.lines)


# -- failures ------------------------------------------------------------------------------------


def test_a_failure_before_the_rename_leaves_the_original_untouched(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    store = open_store(cdr.root)
    [batch, *_] = store.batches(CUTOFF)
    before = (cdr.root / "1001.csv").stat()
    if subprocess.run(["chattr", "+i", str(cdr.root)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a filesystem with flags)")
    try:
        with pytest.raises(StoreError, match="the file is unchanged") as raised:
            store.apply(batch, CUTOFF)
    finally:
        subprocess.run(["chattr", "-i", str(cdr.root)], check=True)

    after = (cdr.root / "1001.csv").stat()
    assert after.st_ino == before.st_ino
    assert (cdr.root / "1001.csv").read_bytes() == b"".join(
        line for _, line in cdr.lines["1001.csv"]
    )
    assert folder_names(cdr.root) == set(cdr.lines)
    assert not any(fragment in str(raised.value) for fragment in (*PERSONAL, "1001.csv"))


FILE_SIZE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from retentiond.config.model import CsvStoreConfig
    from retentiond.errors import StoreError
    from retentiond.stores.csv.store import CsvStore

    cutoff = datetime.fromisoformat(sys.argv[2])
    store = CsvStore(CsvStoreConfig(type="csv", root=sys.argv[1]), ZoneInfo("UTC"))
    store.open()
    batches = list(store.batches(cutoff))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        store.apply(batches[-1], cutoff)
    except StoreError as error:
        print(error)
        sys.exit(0)
    sys.exit(1)
    """
)


def test_a_write_failing_midway_removes_the_copy_and_keeps_the_original(cdr: CdrFolder) -> None:
    master = cdr.root / "Master.csv"
    original = master.read_bytes()
    inode = master.stat().st_ino

    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED, str(cdr.root), CUTOFF.isoformat()],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert "the file is unchanged" in done.stdout
    assert (master.read_bytes(), master.stat().st_ino) == (original, inode)
    assert folder_names(cdr.root) == set(cdr.lines)


def test_a_missing_root_is_absent_and_a_wrong_root_an_error(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    with pytest.raises(StoreAbsent, match="does not exist"):
        open_store(tmp_path / "cdr-csv")
    (tmp_path / "real").mkdir()
    (tmp_path / "cdr-csv").symlink_to(tmp_path / "real")
    with pytest.raises(StoreError, match="symlink"):
        open_store(tmp_path / "cdr-csv")
    (tmp_path / "Master.csv").write_bytes(b"")
    with pytest.raises(StoreError, match="not a folder"):
        open_store(tmp_path / "Master.csv")
    with pytest.raises(ValueError, match="subfolder"):  # a config error (test_config_late_errors)
        open_store(tmp_path / "real", match=["*/*.csv"])


# -- personal data -------------------------------------------------------------------------------


def test_no_personal_data_in_results_reprs_or_logs(
    cdr: CdrFolder, open_store: StoreFactory
) -> None:
    with structlog.testing.capture_logs() as logs:
        store = open_store(cdr.root, zone=BERLIN)
        seen = [store.survey(CUTOFF), *store.describe()]
        for batch in store.batches(CUTOFF):
            seen += [batch, store.apply(batch, CUTOFF)]
        seen.append(store.survey(CUTOFF))

    text = "\n".join([*map(str, seen), *map(repr, seen), *map(str, logs)])
    assert logs, "the rewrite logs its counts"
    for fragment in PERSONAL:
        assert fragment not in text
    assert "1001.csv" not in text


def test_describe_says_how_files_are_rewritten(cdr: CdrFolder, open_store: StoreFactory) -> None:
    lines = open_store(cdr.root, zone=BERLIN).describe()

    text = "\n".join(lines)
    assert str(cdr.root) in text
    assert "*.csv" in text
    assert "field 9" in text and "%Y-%m-%d %H:%M:%S" in text and "Europe/Berlin" in text
    assert "atomically" in text and "carried over" in text

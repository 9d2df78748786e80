"""The Löschprotokoll: what is appended survives, and any change to it is found and located."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.errors import AuditError
from retentiond.evidence import log as audit
from retentiond.evidence.log import GENESIS, AuditLog, Entry, canonical, read_entries, verify

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


# --- helpers ----------------------------------------------------------------------------------


def write_batches(path: Path, count: int) -> list[Entry]:
    """A log as the engine writes it: one intent entry per batch, with a count."""
    with AuditLog(path) as log:
        return [
            log.append("batch.intent", rule="call-records", store="cdr", count=100 + i)
            for i in range(1, count + 1)
        ]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(new))


def spec_line(obj: dict[str, Any]) -> bytes:
    """An entry written straight from the format description, independently of the writer."""
    body = {key: value for key, value in obj.items() if key != "hash"}
    body["hash"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def spec_chain(payloads: list[dict[str, Any]]) -> list[bytes]:
    out, prev = [], GENESIS
    for seq, payload in enumerate(payloads, start=1):
        obj = {"seq": seq, "ts": "2026-01-01T00:00:00.000000Z", "type": "t", **payload}
        line = spec_line({**obj, "prev": prev})
        out.append(line)
        prev = json.loads(line)["hash"]
    return out


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem, to fill up or remount read-only. Needs CAP_SYS_ADMIN."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    if run("umount", str(mount)).returncode != 0:
        run("umount", "-l", str(mount))


# --- writing and reading back -------------------------------------------------------------------


def test_appended_entries_read_back_unchanged_and_verify(log_path: Path) -> None:
    cutoff = datetime(2026, 3, 31, 22, 0, tzinfo=timezone(timedelta(hours=2)))
    with AuditLog(log_path) as log:
        assert log.head == (0, GENESIS)
        written = [
            log.append("run.started", rule="call-records", cutoff=cutoff, keep="3 months"),
            log.append(
                "batch.intent",
                rule="call-records",
                store="cdr",
                count=500,
                range={"from": 1, "to": 500},
                fraction=0.125,
                held=None,
                dry_run=False,
            ),
            log.append("batch.result", store="cdr", deleted=500, review_by=date(2027, 1, 31)),
            log.append("run.finished", rule="Löschregel Anrufe", stores=("cdr", "cel"), ok=True),
        ]
        assert log.head == (4, written[-1].hash)

    assert [e.seq for e in written] == [1, 2, 3, 4]
    assert written[0].prev == GENESIS
    assert [e.prev for e in written[1:]] == [e.hash for e in written[:-1]]
    assert all(TS.match(e.ts) for e in written)
    assert written[0].fields["cutoff"] == "2026-03-31T20:00:00.000000Z"
    assert written[2].fields["review_by"] == "2027-01-31"
    assert written[3].fields["stores"] == ["cdr", "cel"]
    assert "Löschregel".encode() in log_path.read_bytes()  # UTF-8, not \u escapes

    assert list(read_entries(log_path)) == written
    result = verify(log_path)
    assert result.ok
    assert (result.entries, result.head) == (4, (4, written[-1].hash))
    assert (result.broken_at, result.broken_seq, result.reason) == (None, None, None)


def test_written_lines_follow_the_documented_format(log_path: Path) -> None:
    write_batches(log_path, 2)
    first, second = (json.loads(line) for line in lines(log_path))
    assert list(first) == ["seq", "ts", "type", "rule", "store", "count", "prev", "hash"]
    assert first["prev"] == GENESIS and second["prev"] == first["hash"]
    for obj in (first, second):
        assert spec_line(obj) == json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def test_a_log_written_from_the_spec_verifies_and_continues(log_path: Path) -> None:
    write_lines(log_path, spec_chain([{"n": i} for i in range(3)]))
    assert verify(log_path).ok
    with AuditLog(log_path) as log:
        assert log.head[0] == 3
        assert log.append("t", n=3).seq == 4
    assert verify(log_path).entries == 4


def test_new_log_is_created_group_readable_only(log_path: Path) -> None:
    with AuditLog(log_path):
        pass
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o640
    assert verify(log_path) == verify(log_path)  # an empty log is intact
    assert verify(log_path).ok and verify(log_path).entries == 0


def test_reopening_continues_the_chain(log_path: Path) -> None:
    first = write_batches(log_path, 3)
    with AuditLog(log_path) as log:
        assert log.head == (3, first[-1].hash)
        entry = log.append("run.finished", ok=True)
    assert (entry.seq, entry.prev) == (4, first[-1].hash)
    result = verify(log_path)
    assert result.ok and result.head == (4, entry.hash)


def test_reopening_finds_the_head_behind_a_line_longer_than_the_read_chunk(log_path: Path) -> None:
    write_lines(log_path, spec_chain([{"n": 1}, {"note": "x" * 200_000}]))
    with AuditLog(log_path) as log:
        assert log.head == (2, json.loads(lines(log_path)[-1])["hash"])
        log.append("t")
    assert verify(log_path).ok


def test_bad_field_values_are_bugs_and_do_not_touch_the_log(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        log.append("run.started")
        for bad in (
            {"file": Path("/var/spool/asterisk/monitor/x.wav")},
            {"when": datetime(2026, 1, 1)},  # naive
            {"ids": {1, 2}},
            {"ratio": float("nan")},
            {"nested": {"deep": [Path("x")]}},
            {"seq": 7},
            {"prev": GENESIS},
        ):
            with pytest.raises(TypeError):
                log.append("batch.intent", **bad)
        assert log.append("run.finished").seq == 2
    assert verify(log_path).entries == 2


# --- tampering is found and located -------------------------------------------------------------


def test_changed_count_is_found_at_its_line(log_path: Path) -> None:
    write_batches(log_path, 5)
    content = lines(log_path)
    assert b'"count":103' in content[2]
    content[2] = content[2].replace(b'"count":103', b'"count":108')
    write_lines(log_path, content)

    result = verify(log_path)
    assert not result.ok
    assert (result.broken_at, result.broken_seq) == (3, 3)
    assert result.reason == "hash mismatch: the entry was changed"
    assert result.entries == 2 and result.head[0] == 2


def test_changed_count_with_recomputed_hash_is_found_at_the_next_line(log_path: Path) -> None:
    write_batches(log_path, 5)
    content = lines(log_path)
    obj = json.loads(content[2])
    obj["count"] = 108
    content[2] = spec_line(obj)
    write_lines(log_path, content)

    result = verify(log_path)
    assert (result.ok, result.broken_at, result.broken_seq) == (False, 4, 4)
    assert result.reason is not None
    assert result.reason.startswith("prev does not match the hash of entry 3")
    assert result.entries == 3


def test_re_encoded_line_with_the_same_value_is_found(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        log.append("t", rule="Löschung")
    text = log_path.read_text(encoding="utf-8").replace("ö", "\\u00f6")
    log_path.write_text(text, encoding="utf-8")
    result = verify(log_path)
    assert (result.broken_at, result.reason) == (
        1,
        "not in the form retentiond writes: the line was edited",
    )


def test_deleted_line_is_found(log_path: Path) -> None:
    entries = write_batches(log_path, 5)
    content = lines(log_path)
    del content[2]
    write_lines(log_path, content)

    result = verify(log_path)
    assert (result.broken_at, result.broken_seq) == (3, 4)
    assert result.reason == "sequence jumps from 2 to 4"
    assert result.head == (2, entries[1].hash)


def test_deleted_first_line_is_found(log_path: Path) -> None:
    write_batches(log_path, 3)
    write_lines(log_path, lines(log_path)[1:])
    result = verify(log_path)
    assert (result.broken_at, result.broken_seq, result.entries) == (1, 2, 0)
    assert result.reason == "the first entry has seq 2, not 1: entries were removed"


def test_swapped_lines_are_found(log_path: Path) -> None:
    write_batches(log_path, 5)
    content = lines(log_path)
    content[2], content[3] = content[3], content[2]
    write_lines(log_path, content)

    result = verify(log_path)
    assert (result.broken_at, result.broken_seq) == (3, 4)
    assert result.reason == "sequence jumps from 2 to 4"


def test_a_torn_last_line_is_reported_apart_from_damage(log_path: Path) -> None:
    written = write_batches(log_path, 5)
    complete = b"".join(lines(log_path)[:4])
    torn = lines(log_path)[4][:-40]
    log_path.write_bytes(complete + torn)

    result = verify(log_path)
    assert (result.ok, result.broken_at, result.entries) == (True, None, 4)
    assert result.head == (4, written[3].hash)
    assert result.torn_tail == audit.TornTail(
        "audit.jsonl", 5, len(torn), hashlib.sha256(torn).hexdigest(), 4
    )


def test_garbage_line_is_found(log_path: Path) -> None:
    write_batches(log_path, 3)
    content = lines(log_path)
    content.insert(1, b"not json\n")
    write_lines(log_path, content)
    result = verify(log_path)
    assert (result.broken_at, result.broken_seq, result.reason) == (2, None, "not valid JSON")


def test_read_entries_yields_the_intact_part_then_refuses(log_path: Path) -> None:
    write_batches(log_path, 4)
    content = lines(log_path)
    del content[2]
    write_lines(log_path, content)
    seen: list[int] = []
    with pytest.raises(AuditError, match="line 3"):
        seen.extend(entry.seq for entry in read_entries(log_path))
    assert seen == [1, 2]


def test_missing_log_cannot_be_verified_or_read(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify(tmp_path / "nope.jsonl")
    with pytest.raises(AuditError, match="does not exist"):
        list(read_entries(tmp_path / "nope.jsonl"))


# --- opening: damage, locking ---------------------------------------------------------------------


def test_a_log_ending_mid_line_is_repaired_before_it_is_appended_to(log_path: Path) -> None:
    written = write_batches(log_path, 3)
    complete = b"".join(lines(log_path)[:-1])
    log_path.write_bytes(log_path.read_bytes()[:-10])
    with AuditLog(log_path) as log:
        (repaired,) = log.repairs
        assert (repaired.seq, repaired.prev) == (3, written[1].hash)  # goes on from entry 2
        assert log.append("batch.intent", count=1).seq == 4
    assert log_path.read_bytes().startswith(complete)
    assert [e.type for e in read_entries(log_path)][2:] == ["log_repaired", "batch.intent"]
    result = verify(log_path)
    assert result.ok and result.torn_tail is None and result.entries == 4


def test_log_with_a_damaged_last_entry_is_not_appended_to(log_path: Path) -> None:
    write_batches(log_path, 3)
    content = lines(log_path)
    content[-1] = content[-1].replace(b'"count":103', b'"count":999')
    write_lines(log_path, content)
    with pytest.raises(AuditError, match=r"last entry .* is damaged"):
        AuditLog(log_path).open()


def test_second_writer_is_refused_while_the_first_holds_the_log(log_path: Path) -> None:
    with AuditLog(log_path) as first:
        with pytest.raises(AuditError, match="another retentiond process is writing"):
            AuditLog(log_path).open()
        first.append("run.started")
    with AuditLog(log_path) as second:  # free again once the first closed
        assert second.append("run.started").seq == 2


def test_writer_in_another_process_blocks_this_one(log_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from retentiond.evidence.log import AuditLog\n"
            "with AuditLog(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); sys.stdin.readline()",
            str(log_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(AuditError, match="another retentiond process"):
            AuditLog(log_path).open()
    finally:
        holder.communicate("\n", timeout=10)
    with AuditLog(log_path) as log:
        log.append("run.started")


# --- unwritable logs fail with AuditError, never OSError ---------------------------------------


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"audit folder .*missing does not exist; create it"):
        AuditLog(tmp_path / "missing" / "audit.jsonl").open()


def test_immutable_log_file_is_reported(
    log_path: Path, immutable_file: Callable[[Path], None]
) -> None:
    write_batches(log_path, 2)
    immutable_file(log_path)
    with pytest.raises(AuditError, match=r"cannot open the audit log .* for writing"):
        AuditLog(log_path).open()
    assert verify(log_path).ok  # the DPO can still verify a sealed copy


def test_immutable_folder_is_reported(
    tmp_path: Path, immutable_file: Callable[[Path], None]
) -> None:
    folder = tmp_path / "sealed"
    folder.mkdir()
    immutable_file(folder)
    with pytest.raises(AuditError, match="cannot open the audit log"):
        AuditLog(folder / "audit.jsonl").open()


def test_append_only_attribute_is_supported(log_path: Path) -> None:
    """`chattr +a` (recommended for the log) allows O_APPEND writes only."""
    write_batches(log_path, 1)
    if not shutil.which("chattr") or run("chattr", "+a", str(log_path)).returncode != 0:
        pytest.skip("cannot set the append-only attribute here")
    try:
        with AuditLog(log_path) as log:
            log.append("run.finished")
    finally:
        run("chattr", "-a", str(log_path))
    assert verify(log_path).entries == 2


def test_read_only_filesystem_is_reported(small_tmpfs: Path) -> None:
    log_path = small_tmpfs / "audit.jsonl"
    write_batches(log_path, 1)
    result = run("mount", "-o", "remount,ro", str(small_tmpfs))
    if result.returncode != 0:
        pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")
    with pytest.raises(AuditError, match="Read-only file system"):
        AuditLog(log_path).open()
    with pytest.raises(AuditError, match="Read-only file system"):
        AuditLog(small_tmpfs / "new.jsonl").open()
    assert verify(log_path).ok


def test_full_filesystem_fails_the_append_and_blocks_the_rest(small_tmpfs: Path) -> None:
    log_path = small_tmpfs / "audit.jsonl"
    with AuditLog(log_path) as log:
        first = log.append("run.started")
        filler_path = small_tmpfs / "filler"
        with filler_path.open("wb", buffering=0) as filler, pytest.raises(OSError, match="space"):
            while True:
                filler.write(b"\0" * 4096)
        with pytest.raises(AuditError, match="nothing was deleted after this point"):
            log.append("batch.intent", note="x" * 8000)
        filler_path.unlink()
        with pytest.raises(AuditError, match="failed earlier"):
            log.append("batch.intent", count=1)

    result = verify(log_path)  # the half-written line was cut off again
    assert result.ok and result.head == (1, first.hash)
    with AuditLog(log_path) as log:
        assert log.append("run.started").seq == 2


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
field_names = st.text(min_size=1, max_size=8).filter(
    lambda name: name not in {"seq", "ts", "type", "prev", "hash"}
)
# Any type but the two the log itself gives a meaning (checked by their own tests).
entry_types = st.text(min_size=1, max_size=10).filter(
    lambda kind: kind not in {audit.CHECKPOINT, audit.CONTINUED}
)
entry_specs = st.lists(
    st.tuples(entry_types, st.dictionaries(field_names, json_values, max_size=4)),
    min_size=1,
    max_size=5,
)


def append_all(path: Path, specs: list[tuple[str, dict[str, Any]]]) -> list[Entry]:
    with AuditLog(path) as log:
        return [log.append(kind, **fields) for kind, fields in specs]


@settings(max_examples=60, deadline=None)
@given(specs=entry_specs)
def test_any_json_values_round_trip_and_verify(specs: list[tuple[str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        written = append_all(path, specs)
        assert [(e.type, e.fields) for e in written] == specs
        assert list(read_entries(path)) == written
        result = verify(path)
        assert result.ok and result.entries == len(specs)
        assert result.head == (len(specs), written[-1].hash)


@settings(max_examples=150, deadline=None)
@given(specs=entry_specs, data=st.data())
def test_any_changed_byte_is_found_at_its_line(
    specs: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        append_all(path, specs)
        content = lines(path)
        index = data.draw(st.integers(0, len(content) - 1), label="line index")
        line = bytearray(content[index])
        position = data.draw(st.integers(0, len(line) - 2), label="byte")  # not the newline
        line[position] = data.draw(st.integers(0, 255).filter(lambda b: b != line[position]))
        content[index] = bytes(line)
        write_lines(path, content)

        result = verify(path)
        assert not result.ok
        assert result.broken_at == index + 1
        assert result.entries == index


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.randoms())
def test_canonical_json_ignores_key_order(obj: dict[str, Any], random: Any) -> None:
    items = list(obj.items())
    random.shuffle(items)
    assert canonical(dict(items)) == canonical(obj)


def test_canonical_json_is_compact_sorted_utf8() -> None:
    obj = {"b": 1, "a": {"y": [1, 2.5], "x": "ö"}}
    assert canonical(obj) == '{"a":{"x":"ö","y":[1,2.5]},"b":1}'.encode()
    assert canonical({"a": {"x": "ö", "y": [1, 2.5]}, "b": 1}) == canonical(obj)


def test_timestamps_are_utc() -> None:
    with tempfile.TemporaryDirectory() as folder:
        before = datetime.now(UTC)
        with AuditLog(Path(folder) / "a.jsonl") as log:
            entry = log.append("t")
        written = datetime.strptime(entry.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before <= written <= datetime.now(UTC)


# --- the extended API: files, clock, last entry, reserved types -------------------------------


def test_verification_names_the_file_of_a_broken_line(log_path: Path) -> None:
    write_batches(log_path, 3)
    intact = verify(log_path)
    assert (intact.files, intact.broken_file, intact.begins_after) == (("audit.jsonl",), None, None)
    content = lines(log_path)
    del content[1]
    write_lines(log_path, content)
    broken = verify(log_path)
    assert (broken.broken_file, broken.broken_at, broken.broken_seq) == ("audit.jsonl", 2, 3)
    assert audit.log_files(log_path) == [log_path]


def test_the_clock_stamps_the_entries_and_the_last_entry_is_known(log_path: Path) -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=1)))
    with AuditLog(log_path, clock=lambda: moment) as log:
        assert log.last_entry is None
        entry = log.append("run_started", run_id="r")
        assert entry.ts == "2024-02-29T22:59:59.123456Z"
        assert log.last_entry == entry
    with AuditLog(log_path) as log:
        assert log.last_entry == entry  # read back from the file on open


def test_rotation_entries_are_written_by_rotation_only(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        log.append("run_started")
        with pytest.raises(TypeError, match="only rotation writes them"):
            log.append(audit.CONTINUED, previous_file="audit.jsonl.1")
        with pytest.raises(TypeError, match="exactly the fields"):
            log.append(audit.CHECKPOINT, signed_seq=1, signed_hash=GENESIS)
        assert log.rotate_if_due() is None  # rotation is off unless asked for
    assert verify(log_path).entries == 1
    with pytest.raises(ValueError, match="positive"):
        AuditLog(log_path, rotate_bytes=0)

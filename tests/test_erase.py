"""`retentiond erase` and `find` as an administrator runs them, on the demo PBX: a person's calls,
recordings and voicemail, in every store, holds winning, the log holding the ticket and counts."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from privacy import leaked
from test_cli import retentiond

from retentiond import demo
from retentiond.evidence import log as audit


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx", days=120)


def calls(
    config_file: Path, sql: str = "SELECT src, dst, calldate, recordingfile FROM cdr"
) -> list[tuple[str, ...]]:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        found = db.execute(sql).fetchall()
    db.close()
    return found


def frequent_caller(config_file: Path) -> str:
    """A person who called often: a recorded call's number, given to two more calls and to the
    caller id of a voicemail message, as a real caller's would be."""
    recorded = next(c for c in calls(config_file) if c[3] and c[0].startswith("+"))
    number = recorded[0]
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        db.execute(
            "UPDATE cdr SET src = ?, clid = ? WHERE AcctId IN "
            "(SELECT AcctId FROM cdr WHERE src LIKE '+%' AND src != ? LIMIT 2)",
            (number, f'"Caller" <{number}>', number),
        )
    db.close()
    message = sorted((config_file.parent / "pbx" / "voicemail").rglob("msg*.txt"))[0]
    text = message.read_text()
    old = text.split("callerid=")[1].split("\n")[0]
    message.write_text(text.replace(f"callerid={old}", f'callerid="Caller" <{number}>'))
    return number


def voicemail_from(config_file: Path, number: str) -> list[Path]:
    spool = config_file.parent / "pbx" / "voicemail"
    return [p for p in spool.rglob("msg*.txt") if f"<{number}>" in p.read_text()]


def test_erase_removes_one_persons_data_everywhere_and_logs_only_the_ticket(pbx: Path) -> None:
    number = frequent_caller(pbx)
    theirs = [c for c in calls(pbx) if number in c[:2]]
    files = [c[3] for c in theirs if c[3]]
    messages = voicemail_from(pbx, number)
    others = len(calls(pbx)) - len(theirs)
    assert theirs and files and messages

    dry = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{len(theirs)} rows" in dry.stdout and "dry run: nothing changed" in dry.stdout
    assert len(calls(pbx)) == others + len(theirs)
    assert not config_audit(pbx).exists()  # a dry run writes nothing, not even to the log

    refused = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-1")
    assert refused.returncode == 2 and "--yes" in refused.stderr  # not a terminal: no silent yes

    done = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-1", "--yes")
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls(pbx) if number in c[:2]]
    assert len(calls(pbx)) == others
    monitor = pbx.parent / "pbx" / "monitor"
    assert not [p for p in monitor.rglob("*") if p.name in files]
    assert not voicemail_from(pbx, number)
    entries = list(audit.read_entries(config_audit(pbx)))
    started, finished = entries[0], entries[-1]
    assert started.type == "erasure_started" and finished.type == "erasure_finished"
    assert finished.fields["ticket"] == "DSR-1"
    assert finished.fields["deleted"] == len(theirs) + len(files) + len(messages)
    assert audit.verify(config_audit(pbx)).ok
    secrets = {number, number[3:], *files, *(c[2] for c in theirs)}
    log_text = config_audit(pbx).read_text()
    assert not leaked(secrets - {c[2] for c in theirs}, jsonl=[log_text])


def test_a_hold_wins_over_erasure(pbx: Path) -> None:
    number = frequent_caller(pbx)
    theirs = [c for c in calls(pbx) if number in c[:2]]
    recorded = [c for c in theirs if c[3]]
    messages = voicemail_from(pbx, number)
    holds = pbx.parent / "holds.d"
    holds.mkdir()
    (holds / "claim.yaml").write_text(
        "id: CLAIM-7\nreason: Pending claim\napproved_by: DPO\nreview_by: 2099-01-01\n"
        f"numbers: ['{number}']\n"
    )
    done = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-2", "--yes")
    assert done.returncode == 0, done.stderr
    held = len(theirs) + len(recorded) + len(messages)
    assert f"to erase: 0; held (kept): {held}" in done.stdout
    assert "nothing to erase" in done.stdout
    assert [c for c in calls(pbx) if number in c[:2]] == theirs  # all kept
    assert len(voicemail_from(pbx, number)) == len(messages)


def test_find_lists_a_persons_records_on_the_terminal_only(pbx: Path) -> None:
    number = frequent_caller(pbx)
    theirs = [c for c in calls(pbx) if number in c[:2]]
    written = "0049 " + number[3:5] + " " + number[5:]  # as the person writes it
    found = retentiond("-c", pbx, "find", "--number", written, "--ticket", "AR-9")
    assert found.returncode == 0, found.stderr
    assert f"call-records: sql cdrdb/cdr: {len(theirs)} rows" in found.stdout
    assert found.stdout.count(number) >= len(theirs)
    entries = list(audit.read_entries(config_audit(pbx)))
    assert [e.type for e in entries] == ["subject_search"]
    assert not leaked({number, number[3:]}, jsonl=[config_audit(pbx).read_text()])
    assert calls(pbx) and len([c for c in calls(pbx) if number in c[:2]]) == len(theirs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--number", "98765"], "international form"),
        (["--number", "+1 555"], "wrong length"),
        ([], "at least one --number or --extension"),
    ],
)
def test_bad_subjects_are_refused_without_echoing_the_number(
    pbx: Path, args: list[str], message: str
) -> None:
    result = retentiond("-c", pbx, "erase", *args, "--ticket", "T-1", "--yes")
    assert result.returncode == 2 and message in result.stderr
    for arg in args[1:]:
        assert arg not in result.stderr


def test_a_ticket_carrying_the_number_is_refused(pbx: Path) -> None:
    result = retentiond(
        "-c", pbx, "erase", "--number", "+4930123456", "--ticket", "call-4930123456", "--yes"
    )
    assert result.returncode == 2 and "contains the subject's number" in result.stderr


@pytest.mark.parametrize(
    "ticket",
    [
        "DSR-301234567890",  # the national significant number of +49301234567890
        "DSR-030-1234567890",  # the national form, with a separator
        "AR-0049301234567890",
    ],
)
def test_a_ticket_carrying_the_number_in_any_stored_form_is_refused_and_not_logged(
    pbx: Path, ticket: str
) -> None:
    for command in (["erase", "--yes"], ["find"]):
        result = retentiond("-c", pbx, *command, "--number", "+49301234567890", "--ticket", ticket)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "contains the subject's number" in result.stderr
        assert ticket not in result.stdout + result.stderr
    assert not config_audit(pbx).exists()


def test_a_ticket_is_not_refused_for_an_extension_made_of_letters(pbx: Path) -> None:
    # `sales` has no digits: the old check found its empty digit string in every ticket
    found = retentiond("-c", pbx, "find", "--extension", "sales", "--ticket", "AR-2026-7")
    assert found.returncode == 0, found.stderr
    (search,) = [e for e in audit.read_entries(config_audit(pbx)) if e.type == "subject_search"]
    assert search.fields["ticket"] == "AR-2026-7"
    named = retentiond("-c", pbx, "find", "--extension", "sales", "--ticket", "AR-SALES-7")
    assert named.returncode == 2 and "contains the subject's number or extension" in named.stderr


def test_find_without_a_ticket_records_nothing(pbx: Path) -> None:
    number = frequent_caller(pbx)
    result = retentiond("-c", pbx, "find", "--number", number)
    assert result.returncode == 0 and number in result.stdout
    assert not config_audit(pbx).exists()


def config_audit(config_file: Path) -> Path:
    return config_file.parent / "audit.jsonl"


# --- a signed log: requests are signed like runs ------------------------------------------------


def signing_key(config_file: Path) -> Path:
    """A key pair from `retentiond audit keygen`, the private key set as audit.signing_key;
    returns the public key, as the DPO holds it."""
    keys = config_file.parent / "keys"
    made = retentiond("audit", "keygen", "--out-dir", keys)
    assert made.returncode == 0, made.stderr
    text = config_file.read_text()
    config_file.write_text(
        text.replace("audit:\n", f"audit:\n  signing_key: {keys}/retentiond.key\n", 1)
    )
    return keys / "retentiond.pub"


def verify_strict(config_file: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return retentiond(
        "audit", "verify", config_audit(config_file), "--public-key", public, "--strict"
    )


def killed_before_its_checkpoint(config_file: Path) -> None:
    """A signed `run --once`, then the log a SIGKILL leaves between the run's last entry and its
    checkpoint (every entry is synced as it is written: the log without its last line)."""
    assert retentiond("-c", config_file, "run", "--once").returncode == 0
    log = config_audit(config_file)
    lines = log.read_bytes().splitlines(keepends=True)
    assert [e.type for e in audit.read_entries(log)][-2:] == ["run_finished", "checkpoint"]
    log.write_bytes(b"".join(lines[:-1]))


def test_erase_signs_what_a_killed_run_left_and_then_its_own_entries(pbx: Path) -> None:
    public = signing_key(pbx)
    killed_before_its_checkpoint(pbx)
    before = list(audit.read_entries(config_audit(pbx)))
    unfinished = verify_strict(pbx, public)
    assert unfinished.returncode == 1 and "UNFINISHED (--strict)" in unfinished.stdout
    number = frequent_caller(pbx)
    assert [c for c in calls(pbx) if number in c[:2]]

    done = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-3", "--yes")
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls(pbx) if number in c[:2]]
    log = list(audit.read_entries(config_audit(pbx)))
    assert log[: len(before)] == before
    catch_up, started = log[len(before)], log[len(before) + 1]
    assert catch_up.type == "checkpoint" and catch_up.fields["signed_seq"] == before[-1].seq
    assert started.type == "erasure_started" and started.fields["ticket"] == "DSR-3"
    finished, checkpoint = log[-2:]
    assert finished.type == "erasure_finished"
    assert checkpoint.type == "checkpoint" and checkpoint.fields["signed_seq"] == finished.seq
    checked = verify_strict(pbx, public)  # not a missing checkpoint after the killed run
    assert checked.returncode == 0, checked.stdout
    assert "intact" in checked.stdout and "warning" not in checked.stdout


def test_a_search_with_a_ticket_signs_the_log_it_writes_to(pbx: Path) -> None:
    public = signing_key(pbx)
    assert retentiond("-c", pbx, "run", "--once").returncode == 0
    key = pbx.parent / "keys" / "retentiond.key"
    key.chmod(0o644)  # a run that could not use its key: failed, its end unsigned
    failed = retentiond("-c", pbx, "run", "--once", "--rule", "voicemail")
    key.chmod(0o600)
    assert failed.returncode != 0
    before = list(audit.read_entries(config_audit(pbx)))
    assert before[-1].type == "run_failed"
    assert verify_strict(pbx, public).returncode == 1
    number = frequent_caller(pbx)

    found = retentiond("-c", pbx, "find", "--number", number, "--ticket", "AR-10")
    assert found.returncode == 0, found.stderr
    log = list(audit.read_entries(config_audit(pbx)))
    assert [e.type for e in log[len(before) :]] == ["checkpoint", "subject_search", "checkpoint"]
    assert log[len(before)].fields["signed_seq"] == before[-1].seq
    checked = verify_strict(pbx, public)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("problem", ["readable by others", "missing"])
def test_an_unusable_key_refuses_erase_and_search_and_changes_nothing(
    pbx: Path, problem: str
) -> None:
    signing_key(pbx)
    killed_before_its_checkpoint(pbx)
    number = frequent_caller(pbx)
    log = config_audit(pbx)
    log_before, calls_before = log.read_bytes(), calls(pbx)
    messages_before = voicemail_from(pbx, number)
    monitor = pbx.parent / "pbx" / "monitor"
    recordings_before = sorted(monitor.rglob("*"))
    key = pbx.parent / "keys" / "retentiond.key"
    if problem == "missing":
        key.unlink()
    else:
        key.chmod(0o644)

    refused = retentiond("-c", pbx, "erase", "--number", number, "--ticket", "DSR-4", "--yes")
    assert refused.returncode == 2, refused.stdout  # a config mistake: nothing was done
    reason = "does not exist" if problem == "missing" else "mode 0644"
    assert reason in refused.stderr and str(key) in refused.stderr
    assert "nothing was recorded or erased" in refused.stderr
    assert "Traceback" not in refused.stderr and number not in refused.stderr
    search = retentiond("-c", pbx, "find", "--number", number, "--ticket", "AR-11")
    assert search.returncode == 2 and "nothing was recorded" in search.stderr
    assert log.read_bytes() == log_before  # no entry, not even a checkpoint
    assert calls(pbx) == calls_before
    assert voicemail_from(pbx, number) == messages_before
    assert sorted(monitor.rglob("*")) == recordings_before


def test_erasing_an_extension_takes_only_recordings_that_name_it_as_a_party(pbx: Path) -> None:
    """FreePBX names recordings `<type>-<dst>-<src>-YYYYMMDD-HHMMSS-<uniqueid>`: an extension
    that is some other call's start time (17:50:44) or uniqueid names only the recordings with
    it in the dst or src field."""
    day = sorted((pbx.parent / "pbx" / "monitor").glob("*/*/*"))[0]
    stamp = "".join(day.parts[-3:])
    extension = "175044"
    # FreePBX 16 sub-record-check: ${ARG2}-${ARG3}-${FROMEXTEN}-${TIMESTR}-${UNIQUEID}.wav
    theirs = [
        day / f"exten-{extension}-1001-{stamp}-093000-1736069400.17.wav",
        day / f"out-+4930999888-{extension}-{stamp}-101500-1736072100.21.wav",
        day / f"in-{extension}-+4930999888-{stamp}-111500-1736075700.25-in.wav",
    ]
    strangers = [
        day / f"out-+4930999888-1001-{stamp}-{extension}-1736095844.31.wav",  # started 17:50:44
        day / f"exten-1002-1001-{stamp}-180000-{extension}.7.wav",  # a uniqueid part
        day / f"q-{extension}0-1001-{stamp}-181500-1736097300.40.wav",
    ]
    for path in theirs + strangers:
        path.write_bytes(demo.WAV_HEADER)

    done = retentiond("-c", pbx, "erase", "--extension", extension, "--ticket", "DSR-5", "--yes")

    assert done.returncode == 0, done.stderr
    assert [path.exists() for path in theirs] == [False] * len(theirs)
    assert [path.exists() for path in strangers] == [True] * len(strangers)
    finished = list(audit.read_entries(config_audit(pbx)))[-1]
    assert finished.fields["deleted"] == len(theirs)


@pytest.mark.parametrize("word", ["out", "in", "IN", "q", "ondemand", "exten", "unknown"])
def test_an_extension_that_is_a_word_of_recording_names_is_refused(pbx: Path, word: str) -> None:
    monitor = pbx.parent / "pbx" / "monitor"
    before = sorted(monitor.rglob("*.wav"))
    result = retentiond("-c", pbx, "erase", "--extension", word, "--ticket", "DSR-6", "--yes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot be an extension" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(monitor.rglob("*.wav")) == before
    assert not config_audit(pbx).exists()


@pytest.mark.parametrize("extension", ["", "10-01", "10_01", "1001 ", "+4930123456", "1" * 21])
def test_what_cannot_be_an_extension_is_refused(pbx: Path, extension: str) -> None:
    result = retentiond("-c", pbx, "find", "--extension", extension)
    if extension.strip() == "1001":
        assert result.returncode == 0, result.stderr  # blanks around it are no part of it
        return
    assert result.returncode == 2, result.stdout + result.stderr
    assert "an extension is 1 to 20 letters, digits, * or #" in result.stderr

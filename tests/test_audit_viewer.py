"""The verifier page (`retentiond audit viewer`) in a real browser: it must reach the same verdict
as `retentiond audit verify --public-key` on every kind of tampering the Python tests make.

Headless Chromium through chromedriver (Debian's `chromium` and `chromium-driver`); without them
the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_checkpoints import make_files, objects, rehash, write_objects, write_run

from retentiond.cli.audit import audit_group, check_json
from retentiond.evidence.log import (
    CHECKPOINT,
    GENESIS,
    AuditLog,
    Signer,
    VerifyKey,
    canonical,
    check_log,
    generate_key_pair,
)
from retentiond.evidence.viewer import viewer_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [
        name
        for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
        if not found
    ]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (the dev extra)")
        webdriver = None
    if missing:
        message = (
            f"the verifier page needs {', '.join(missing)} "
            "(apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert webdriver is not None and CHROMIUM and CHROMEDRIVER
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("right", "other"):
        private, public, _ = generate_key_pair(folder / name)
        pairs[name] = (private, public)
    return pairs


def page_for(folder: Path, *public: Path) -> Path:
    page = folder / "verify.html"
    page.write_text(viewer_page([VerifyKey.from_file(p) for p in public]), encoding="utf-8")
    return page


def in_browser(driver: Any, page: Path, files: list[Path], timeout: float = 30) -> dict[str, Any]:
    """The page's result for `files`, as `audit verify --json` gives it, and its verdict line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.as_uri())
    driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    verdict = driver.find_element(By.ID, "verdict")
    WebDriverWait(driver, timeout).until(
        lambda _: verdict.get_attribute("class") not in ("waiting", "working")
    )
    shown = driver.find_element(By.ID, "result").get_attribute("textContent")
    assert shown, verdict.text
    result: dict[str, Any] = json.loads(shown)
    result["verdict"] = verdict.text
    return result


def in_python(log: Path, *public: Path) -> dict[str, Any]:
    keys = [VerifyKey.from_file(p) for p in public]
    result = check_json(log, check_log(log, keys), keys)
    del result["log"]
    return result


def verdict_line(log: Path, *public: Path) -> str:
    args = ["verify", str(log)] + [arg for p in public for arg in ("--public-key", str(p))]
    output = CliRunner().invoke(audit_group, args).output.splitlines()[0]
    return output.removeprefix(f"{log}: ")


def assert_same(driver: Any, log: Path, files: list[Path], *public: Path) -> dict[str, Any]:
    page = page_for(log.parent.parent, *public)
    shown = in_browser(driver, page, files)
    expected = in_python(log, *public)
    verdict = shown.pop("verdict")
    assert verdict == verdict_line(log, *public)
    assert shown == expected
    return shown | {"verdict": verdict}


# --- the tampered logs ---------------------------------------------------------------------------


def signed_files(folder: Path, signer: Signer, rotated: int) -> Path:
    folder.mkdir()
    log = folder / "audit.jsonl"
    if rotated:
        make_files(log, signer, rotated)
    else:
        with AuditLog(log) as writer:
            for _ in range(3):
                write_run(writer, signer)
    return log


def edit_count(log: Path) -> None:
    objs = objects(log)
    next(o for o in objs if o["type"] == "batch_done")["deleted"] += 1
    write_objects(log, objs)


def edit_byte(log: Path) -> None:
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))


def re_encode(log: Path) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    assert b'"store":' in lines[2]
    lines[2] = lines[2].replace(b'"store":', b'"st\\u006fre":', 1)
    log.write_bytes(b"".join(lines))


def remove_entry(log: Path) -> None:
    objs = objects(log)
    del objs[2]
    write_objects(log, objs)


def remove_entry_rehashed(log: Path) -> None:
    objs = objects(log)
    del objs[2]
    write_objects(log, rehash(objs))


def edit_rehashed(log: Path) -> None:
    objs = objects(log)
    next(o for o in objs if o["type"] == "batch_done")["deleted"] += 1
    write_objects(log, rehash(objs))


def edit_rehashed_checkpoints_agreeing(log: Path) -> None:
    objs = objects(log)
    next(o for o in objs if o["type"] == "batch_done")["deleted"] += 1
    objs = rehash(objs)
    for index in range(len(objs)):
        if objs[index]["type"] == CHECKPOINT:
            objs[index]["signed_hash"] = objs[index - 1]["hash"]
            objs = rehash(objs)
    write_objects(log, objs)


def remove_checkpoint_rehashed(log: Path) -> None:
    objs = objects(log)
    second = [i for i, o in enumerate(objs) if o["type"] == CHECKPOINT][1]
    write_objects(log, rehash(objs[:second] + objs[second + 1 :]))


def remove_all_checkpoints(log: Path) -> None:
    write_objects(log, rehash([o for o in objects(log) if o["type"] != CHECKPOINT]))


def remove_last_checkpoint(log: Path) -> None:
    write_objects(log, objects(log)[:-1])


def cut_mid_line(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 40])


def cut_newline(log: Path) -> None:
    log.write_bytes(log.read_bytes()[:-1])


def cut_lines(log: Path) -> None:
    write_objects(log, objects(log)[:5])


def replay_checkpoint(log: Path) -> None:
    objs = objects(log)
    checkpoints = [o for o in objs if o["type"] == CHECKPOINT]
    objs.append(dict(checkpoints[0]))
    write_objects(log, rehash(objs))


def forge_signature(log: Path) -> None:
    objs = objects(log)
    last = objs[-1]
    last["signature"] = (
        last["signature"][:10]
        + ("A" if last["signature"][10] != "A" else "B")
        + last["signature"][11:]
    )
    write_objects(log, rehash(objs))


def zeros_at_the_end(log: Path) -> None:
    """What a filesystem may leave where a power loss cut a write: zeros, not yet data."""
    log.write_bytes(log.read_bytes() + b"\x00" * 100)


def torn_then_written(log: Path) -> None:
    """A torn line that is not the last: damage, not an interrupted write."""
    lines = log.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5][:30] + b"\n"
    log.write_bytes(b"".join(lines))


def respelled(old: bytes, new: bytes, line: int = 2) -> Callable[[Path], None]:
    """A line changed in its spelling only (or a key doubled): the hash may even still match."""

    def change(log: Path) -> None:
        lines = log.read_bytes().splitlines(keepends=True)
        assert old in lines[line]
        lines[line] = lines[line].replace(old, new, 1)
        log.write_bytes(b"".join(lines))

    return change


def hash_moved_first(log: Path) -> None:
    objs = objects(log)
    objs[3] = {"hash": objs[3]["hash"]} | {k: v for k, v in objs[3].items() if k != "hash"}
    write_objects(log, objs)


def empty_log(log: Path) -> None:
    log.write_bytes(b"")


def garbage_line(log: Path) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines[4] = b"\xff\xfe not json\n"
    log.write_bytes(b"".join(lines))


TAMPERING: dict[str, Callable[[Path], None]] = {
    "intact": lambda log: None,
    "edited count": edit_count,
    "edited byte": edit_byte,
    "re-encoded line": re_encode,
    "removed entry": remove_entry,
    "removed entry, chain recomputed": remove_entry_rehashed,
    "edited, chain recomputed": edit_rehashed,
    "edited, chain and checkpoints recomputed": edit_rehashed_checkpoints_agreeing,
    "removed checkpoint, chain recomputed": remove_checkpoint_rehashed,
    "all checkpoints removed": remove_all_checkpoints,
    "removed last checkpoint": remove_last_checkpoint,
    "torn last line": cut_mid_line,
    "lost last newline": cut_newline,
    "truncated": cut_lines,
    "replayed checkpoint": replay_checkpoint,
    "forged signature": forge_signature,
    "zeros at the end": zeros_at_the_end,
    "torn line inside": torn_then_written,
    "emptied": empty_log,
    "key doubled": respelled(b'"store":"cdrdb/cdr"', b'"store":"cdrdb/cdr","store":"cdrdb/cdr"'),
    "space added": respelled(b'"batch":1,', b'"batch": 1,'),
    "byte order mark": respelled(b'{"seq"', b'\xef\xbb\xbf{"seq"', line=0),
    "number re-spelled": respelled(b'"batch":1,', b'"batch":1e0,'),
    "hash moved first": hash_moved_first,
    "garbage line": garbage_line,
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_the_page_gives_the_verdict_of_audit_verify(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, tampering: str
) -> None:
    log = signed_files(tmp_path / "log", Signer.from_file(key_pairs["right"][0]), rotated=0)
    TAMPERING[tampering](log)
    public = key_pairs["right"][1]
    shown = assert_same(browser, log, [log], public)
    assert shown["ok"] is (
        tampering
        in ("intact", "removed last checkpoint", "torn last line", "zeros at the end", "emptied")
    )


def test_the_wrong_key_is_named_as_in_audit_verify(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    log = signed_files(tmp_path / "log", Signer.from_file(key_pairs["right"][0]), rotated=0)
    shown = assert_same(browser, log, [log], key_pairs["other"][1])
    assert [p["kind"] for p in shown["problems"]] == ["key"] * 3
    assert shown["verdict"].startswith("BROKEN: audit.jsonl:")
    # without any key the chain is checked, and the page says the signatures were not
    unsigned = assert_same(browser, log, [log])
    assert unsigned["ok"] and unsigned["signatures_checked"] is False


ROTATION: dict[str, Callable[[Path], list[str]]] = {}


def _rotation(name: str) -> Callable[[Callable[[Path], list[str]]], Callable[[Path], list[str]]]:
    def register(change: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        ROTATION[name] = change
        return change

    return register


@_rotation("all files, picked in any order")
def _all(log: Path) -> list[str]:
    return ["audit.jsonl.2", "audit.jsonl", "audit.jsonl.3", "audit.jsonl.1"]


@_rotation("a middle file missing")
def _middle(log: Path) -> list[str]:
    log.with_name("audit.jsonl.2").unlink()
    return ["audit.jsonl", "audit.jsonl.3", "audit.jsonl.1"]


@_rotation("the oldest files removed after their retention")
def _oldest(log: Path) -> list[str]:
    log.with_name("audit.jsonl.1").unlink()
    return ["audit.jsonl.3", "audit.jsonl", "audit.jsonl.2"]


@_rotation("two files swapped")
def _swapped(log: Path) -> list[str]:
    one, two = log.with_name("audit.jsonl.1"), log.with_name("audit.jsonl.2")
    swap = log.with_name("swap")
    one.rename(swap)
    two.rename(one)
    swap.rename(two)
    return ["audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3", "audit.jsonl"]


@_rotation("entries cut from a rotated file")
def _cut(log: Path) -> list[str]:
    one = log.with_name("audit.jsonl.1")
    write_objects(one, objects(one)[:-1])
    return ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]


@_rotation("the current file emptied")
def _emptied(log: Path) -> list[str]:
    log.write_bytes(b"")
    return ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]


@_rotation("a rotated file cut mid-line")
def _rotated_torn(log: Path) -> list[str]:
    one = log.with_name("audit.jsonl.1")
    one.write_bytes(one.read_bytes()[:-25])
    return ["audit.jsonl.1", "audit.jsonl", "audit.jsonl.2", "audit.jsonl.3"]


@_rotation("the current file only an incomplete line")
def _current_torn(log: Path) -> list[str]:
    log.write_bytes(log.read_bytes()[:40])
    return ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]


@_rotation("the current file torn at its end")
def _current_torn_end(log: Path) -> list[str]:
    log.write_bytes(log.read_bytes()[:-25])
    return ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]


@pytest.mark.parametrize("change", list(ROTATION))
def test_rotated_files_are_ordered_and_checked_as_audit_verify_does(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, change: str
) -> None:
    log = signed_files(tmp_path / "log", Signer.from_file(key_pairs["right"][0]), rotated=3)
    picked = [log.with_name(name) for name in ROTATION[change](log)]
    shown = assert_same(browser, log, picked, key_pairs["right"][1])
    assert shown["ok"] is (
        change
        in (
            "all files, picked in any order",
            "the oldest files removed after their retention",
            "the current file torn at its end",
        )
    )


def spec_chain(payloads: list[dict[str, Any]]) -> bytes:
    out, prev = [], GENESIS
    for seq, payload in enumerate(payloads, start=1):
        obj = {"seq": seq, "ts": "2026-11-26T12:00:00.000000Z", **payload, "prev": prev}
        obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
        out.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        prev = obj["hash"]
    return b"".join(out)


def test_floats_big_numbers_and_any_text_hash_as_in_python(browser: Any, tmp_path: Path) -> None:
    """The canonical JSON is Python's: floats by their shortest repr, integers of any size,
    sorted keys by code point, only the escapes json.dumps writes."""
    awkward = [
        0.1,
        1e16,
        1.5e-7,
        123456789.125,
        -0.0,
        1e-4,
        1e-5,
        2.5e300,
        10**30,
        -(2**70),
        3.0,
    ]
    texts = ["Grüße", "\u2028", "tab\there", 'quote"back\\slash', "\x00\x1f", "😀", "\ue000"]
    payloads: list[dict[str, Any]] = [
        {"type": "note", "value": value, "list": [value, {"b": 1, "a": value}]} for value in awkward
    ]
    payloads += [{"type": "note", text: text, "z": {text: [text]}} for text in texts]
    folder = tmp_path / "log"
    folder.mkdir()
    log = folder / "audit.jsonl"
    log.write_bytes(spec_chain(payloads))
    shown = assert_same(browser, log, [log])
    assert shown["ok"] and shown["entries"] == len(payloads)
    # one float spelled otherwise (same value) is an edited line, as in Python
    log.write_bytes(log.read_bytes().replace(b'"value":3.0,', b'"value":3.00,', 1))
    shown = assert_same(browser, log, [log])
    assert not shown["ok"]


def signed_log(path: Path, entries: int, signer: Signer) -> Path:
    """A log of runs of 39 entries, each signed by a checkpoint (one signature per 40)."""
    rng = random.Random(18)
    lines, prev = [], GENESIS
    for seq in range(1, entries + 1):
        run = f"r{(seq - 1) // 40}"
        if seq % 40 == 0:
            fields: dict[str, Any] = signer.sign(seq - 1, prev)
            kind = CHECKPOINT
        elif seq % 40 == 39:
            kind = "run_finished"
            fields = {"run_id": run, "rule": "call-records", "status": "done", "deleted": 9}
        else:
            kind = "batch_done"
            fields = {
                "run_id": run,
                "store": "cdrdb/cdr",
                "batch": seq % 40,
                "deleted": rng.randrange(500),
                "first_day": "2026-01-01",
                "last_day": "2026-01-09",
            }
        ts = f"2026-{1 + seq % 12:02d}-{1 + seq % 28:02d}T03:15:00.000000Z"
        obj = {"seq": seq, "ts": ts, "type": kind, **fields, "prev": prev}
        obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
        lines.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        prev = obj["hash"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def test_a_log_of_200000_entries_is_checked_and_the_time_grows_linearly(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """200,000 entries and 5,000 signatures, the verdict of `audit verify`. The page's time
    (from the files picked to the verdict shown) is compared with its time for 20,000 entries
    in the same browser, not with a wall clock: on a shared machine a fixed bound fails with
    the load, a ratio does not, and a check that grew with the square of the entries (a
    quadratic search, a string rebuilt per line) shows as about 100x. On a quiet machine the
    page takes a few seconds for the 200,000 (README, "audit viewer")."""
    from selenium.webdriver.common.by import By

    signer = Signer.from_file(key_pairs["right"][0])
    page = page_for(tmp_path, key_pairs["right"][1])
    seconds = {}
    for entries in (20_000, 200_000):
        log = signed_log(tmp_path / str(entries) / "audit.jsonl", entries, signer)
        shown = in_browser(browser, page, [log], timeout=120)
        assert shown["verdict"] == verdict_line(log, key_pairs["right"][1])
        assert shown["ok"] and shown["entries"] == entries
        assert shown["valid_signatures"] == entries // 40
        verdict = browser.find_element(By.ID, "verdict")
        seconds[entries] = int(verdict.get_attribute("data-ms")) / 1000

    # ten times the entries: ten times the time, and some for the larger file's reading
    assert seconds[200_000] < 20 * max(seconds[20_000], 0.05), seconds


def test_the_command_embeds_the_given_keys_and_nothing_reaches_out(
    key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    out = tmp_path / "verify.html"
    result = CliRunner().invoke(
        audit_group,
        [
            "viewer",
            "-o",
            str(out),
            "--public-key",
            str(key_pairs["right"][1]),
            "--public-key",
            str(key_pairs["other"][1]),
        ],
    )
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    for _, public in key_pairs.values():
        assert VerifyKey.from_file(public).fingerprint in html
    assert "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'" in html
    for reaching_out in (
        "fetch(",
        "XMLHttpRequest",
        "src=",
        "href=",
        "http://",
        "https://",
        "WebSocket",
    ):
        assert reaching_out not in html


def test_the_config_key_is_embedded_and_the_page_shows_the_runs_of_the_log(
    browser: Any, tmp_path: Path
) -> None:
    """The demo PBX, signed: `audit viewer` takes the public half of audit.signing_key, and the
    page's figures are those of the log's entries."""
    from selenium.webdriver.common.by import By
    from test_checkpoints import NOW, keygen, run_rules, signed

    from retentiond import demo
    from retentiond.cli.main import cli

    private, public, fingerprint = keygen(tmp_path / "keys")
    config_file = demo.build(tmp_path / "pbx", now=NOW, days=200)
    config = signed(config_file, private)
    assert [o.status for o in run_rules(config)] == ["done"] * 3
    log = config.config.audit.path
    page = tmp_path / "verify.html"
    result = CliRunner().invoke(cli, ["-c", str(config_file), "audit", "viewer", "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert fingerprint in page.read_text(encoding="utf-8")

    shown = in_browser(browser, page, [log])
    assert shown.pop("verdict") == verdict_line(log, public)
    assert shown == in_python(log, public) and shown["valid_signatures"] == 3

    finished = [o for o in objects(log) if o["type"] == "run_finished"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-rule]")
    assert {row.get_attribute("data-rule"): row.text.split()[1:3] for row in rows} == {
        o["rule"]: ["1", f"{o['deleted']:,}"] for o in finished
    }
    weekly = browser.find_elements(By.CSS_SELECTOR, "#weeks tr")
    deleted = sum(o["deleted"] for o in objects(log) if o["type"] == "batch_done")
    assert sum(int(row.text.split()[1].replace(",", "")) for row in weekly) == deleted > 0
    holds = {o["hold"] for o in objects(log) if o["type"].startswith("hold_")}
    cells = browser.find_elements(By.CSS_SELECTOR, "#holds td:first-child")
    assert {cell.text for cell in cells} == holds
    assert browser.find_element(By.ID, "no-failures").text == "No failed or refused runs."


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value retentiond could write: floats from random bits, integers past 2**53,
    text from the whole of Unicode (no lone surrogates), nested lists and objects."""
    choice = rng.randrange(7 if depth < 3 else 5)
    if choice == 0:
        while True:
            value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(value):
                return value
    if choice == 1:
        return rng.choice([rng.randrange(-(2**80), 2**80), rng.randrange(-1000, 1000)])
    if choice == 2:
        return random_text(rng)
    if choice == 3:
        return rng.choice([True, False, None, 0.5, 1e22, 1e-7, 100.0])
    if choice == 4:
        return round(rng.uniform(-1e6, 1e6), rng.randrange(8))
    if choice == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random) -> str:
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(rng.randrange(6)):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def test_random_values_hash_as_in_python(browser: Any, tmp_path: Path) -> None:
    rng = random.Random(2026)
    payloads = [
        {"type": "note", **{f"k{i}{random_text(rng)}": random_value(rng) for i in range(4)}}
        for _ in range(400)
    ]
    folder = tmp_path / "log"
    folder.mkdir()
    log = folder / "audit.jsonl"
    log.write_bytes(spec_chain(payloads))
    shown = assert_same(browser, log, [log])
    assert shown["ok"] and shown["entries"] == 400
    # and a changed byte in each of ten places is named as Python names it
    data = log.read_bytes()
    for _ in range(10):
        changed = bytearray(data)
        changed[rng.randrange(len(changed))] ^= 1 << rng.randrange(8)
        log.write_bytes(bytes(changed))
        assert not assert_same(browser, log, [log])["ok"] or bytes(changed) == data

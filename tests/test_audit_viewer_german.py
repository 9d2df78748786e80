"""The verifier page in German: the same verdicts as `retentiond audit verify`, in the words of
the viewer catalogue; figures with German numbers and dates; no English left in what it shows.

The German verdict expected for a log is made from `audit verify`'s English line through the
catalogue itself (each msgid read as a pattern, its msgstr filled with what the pattern caught),
so the tests check the page against the translations, not against a second copy of them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from click.testing import CliRunner
from test_audit_viewer import (
    ROTATION,
    TAMPERING,
    browser,
    in_browser,
    in_python,
    key_pairs,
    signed_files,
    verdict_line,
)
from test_checkpoints import objects

from retentiond.cli.audit import audit_group
from retentiond.evidence.log import GENESIS, Signer, VerifyKey, canonical
from retentiond.evidence.viewer import AREA, viewer_page
from retentiond.i18n import Language, translations_of

__all__ = ["browser", "key_pairs"]  # the fixtures, shared with the English tests

CATALOGUE = Path(__file__).parent.parent / "retentiond/locale/de/LC_MESSAGES/viewer.po"
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# What a placeholder of the viewer's English holds, by its name (any text when not named here).
NUMBERS = "seq line before last first signed previous previous_signed limit count entries files"
FILLS = dict.fromkeys([*NUMBERS.split(), "checkpoints", "valid"], r"[0-9]+") | {
    "hash": "[0-9a-f]{64}",
    "expected": "[0-9a-f]{64}",
    "signed_hash": "[0-9a-f]{64}",
    "day": "[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "year": "[0-9]{4}",
    "week": "[0-9]{2}",
    "change": "[a-z]+",
}


@cache
def pairs() -> list[tuple[str, str]]:
    """(English, German) of every viewer string, each plural form on its own."""
    with CATALOGUE.open("rb") as stream:
        catalog = read_po(stream, locale="de")
    found = []
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, str):
            found.append((message.id, str(message.string)))
        else:
            found += list(zip(message.id, message.string, strict=True))
    return found


@cache
def patterns() -> list[tuple[re.Pattern[str], str]]:
    """Each English string as a pattern catching its placeholders; the most literal first."""
    compiled = []
    for english, german in pairs():
        seen: set[str] = set()
        regex = ""
        for index, part in enumerate(PLACEHOLDER.split(english)):
            if index % 2 == 0:
                regex += re.escape(part)
            elif part in seen:
                regex += f"(?P={part})"
            else:
                seen.add(part)
                regex += f"(?P<{part}>{FILLS.get(part, '.+?')})"
        literal = len(PLACEHOLDER.sub("", english))
        compiled.append((literal, re.compile(regex, re.DOTALL), german))
    compiled.sort(key=lambda item: -item[0])
    return [(regex, german) for _, regex, german in compiled]


def german(english: str) -> str | None:
    """`english` (a line of the page or of `audit verify`) in German by the catalogue: None when
    no string of the catalogue is it. What fills a placeholder is translated in turn if it is a
    string of the catalogue, else it is data (a file name, a hash) and stays."""
    for regex, translated in patterns():
        match = regex.fullmatch(english)
        if match is None:
            continue
        values = {name: german(value) or value for name, value in match.groupdict().items()}
        return PLACEHOLDER.sub(lambda found, values=values: values[found.group(1)], translated)
    return None


def page_in(folder: Path, language: Language, *public: Path) -> Path:
    page = folder / f"verify-{language}.html"
    keys = [VerifyKey.from_file(p) for p in public]
    page.write_text(viewer_page(keys, language), encoding="utf-8")
    return page


def checked_in(driver: Any, page: Path, files: list[Path], log: Path, *public: Path) -> str:
    """The page's verdict for `files`; its result must be that of `audit verify --json`."""
    shown = in_browser(driver, page, files)
    verdict: str = shown.pop("verdict")
    assert shown == in_python(log, *public)  # the result (JSON) stays audit verify's English
    return verdict


# --- no English left ---------------------------------------------------------------------------

WORD_EDGES = ".,:;!?()[]{}\"'`…–"


def words_of(text: str) -> set[str]:
    """The words of `text`: split at white space, punctuation at their ends dropped, case kept
    (German nouns are capitalized: "Log" is German, "log" English). Identifiers stay whole."""
    found = set()
    for token in text.split():
        word = token.strip(WORD_EDGES)
        if any(c.isalpha() for c in word):
            found.add(word)
    return found


def catalogue_words(texts: Iterable[str]) -> set[str]:
    return words_of(" ".join(PLACEHOLDER.sub(" ", re.sub(r"</?code>", " ", t)) for t in texts))


@cache
def english_only() -> frozenset[str]:
    """Words of the viewer's English that its German never uses."""
    english = catalogue_words(e for e, _ in pairs())
    return frozenset(english - catalogue_words(g for _, g in pairs()))


HEX = re.compile(r"\b[0-9a-f]{16,}\b")


def untranslated(text: str, data: Iterable[str]) -> set[str]:
    """The viewer's English words in `text` (what a page shows), once the data is taken out:
    hashes and fingerprints, and the names given (files, rules, holds, reasons)."""
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(value, " ")
    return words_of(HEX.sub(" ", text)) & english_only()


def visible(driver: Any) -> str:
    text: str = driver.execute_script("return document.body.innerText")
    return text


# --- the tampered logs, in German --------------------------------------------------------------


def assert_german_verdict(driver: Any, log: Path, files: list[Path], public: Path) -> None:
    english = verdict_line(log, public)
    expected = german(english)
    assert expected is not None and expected != english, english
    page = page_in(log.parent.parent, "de", public)
    verdict = checked_in(driver, page, files, log, public)
    assert verdict == expected
    assert not untranslated(visible(driver), [f.name for f in files]), visible(driver)


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_the_german_page_gives_audit_verify_s_verdict_in_german(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, tampering: str
) -> None:
    log = signed_files(tmp_path / "log", Signer.from_file(key_pairs["right"][0]), rotated=0)
    TAMPERING[tampering](log)
    assert_german_verdict(browser, log, [log], key_pairs["right"][1])


@pytest.mark.parametrize("change", list(ROTATION))
def test_the_german_page_names_what_happened_to_rotated_files_in_german(
    browser: Any, key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, change: str
) -> None:
    log = signed_files(tmp_path / "log", Signer.from_file(key_pairs["right"][0]), rotated=3)
    picked = [log.with_name(name) for name in ROTATION[change](log)]
    assert_german_verdict(browser, log, picked, key_pairs["right"][1])


def test_the_catalogue_turns_audit_verify_s_lines_into_german() -> None:
    """The translation the tests expect is made by the catalogue: nested strings too."""
    line = "BROKEN: audit.jsonl:3: chain broken (entry 3): hash mismatch: the entry was changed"
    assert german(line) == (
        "BESCHÄDIGT: audit.jsonl:3: Hash-Kette unterbrochen (Eintrag 3): "
        "Hash stimmt nicht: Der Eintrag wurde geändert"
    )
    assert german("not a line of the viewer") is None


# --- the figures, in German numbers and dates --------------------------------------------------


def chain(entries: list[tuple[str, str, dict[str, Any]]]) -> bytes:
    out, prev = [], GENESIS
    for seq, (ts, kind, fields) in enumerate(entries, start=1):
        obj = {"seq": seq, "ts": ts, "type": kind, **fields, "prev": prev}
        obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
        out.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        prev = obj["hash"]
    return b"".join(out)


RULES = ("call-records", "voicemail", "call-recordings")
HOLDS = ("case-4711", "audit-2026")
REASONS = ("db_unreachable", "max_delete_fraction")
FIGURES: list[tuple[str, str, dict[str, Any]]] = [
    ("2026-03-04T06:06:07.000000Z", "batch_done", {"run_id": "r1", "batch": 1, "deleted": 12345}),
    (
        "2026-03-04T06:07:00.000000Z",
        "run_finished",
        {"run_id": "r1", "rule": "call-records", "status": "done", "deleted": 12345},
    ),
    (
        "2026-03-05T09:00:00.000000Z",
        "hold_added",
        {"hold": "case-4711", "rules": ["voicemail"], "until": "2026-06-30"},
    ),
    (
        "2026-03-06T09:00:00.000000Z",
        "hold_added",
        {"hold": "audit-2026", "rules": ["call-records"], "review_by": "2026-05-31"},
    ),
    (
        "2026-03-11T03:15:00.000000Z",
        "run_failed",
        {"run_id": "r2", "rule": "voicemail", "error_code": "db_unreachable"},
    ),
    (
        "2026-03-12T03:15:00.000000Z",
        "run_refused",
        {"run_id": "r3", "rule": "call-recordings", "reason": "max_delete_fraction"},
    ),
    ("2026-03-12T03:16:00.000000Z", "batch_done", {"run_id": "r4", "batch": 1, "deleted": 2500}),
    (
        "2026-03-12T03:17:00.000000Z",
        "run_finished",
        {"run_id": "r4", "rule": "call-records", "status": "done", "deleted": 2500},
    ),
    ("2026-03-13T10:00:00.000000Z", "hold_ended", {"hold": "case-4711", "rules": ["voicemail"]}),
]


def rows(driver: Any, table: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tr")
        if row.find_elements(By.CSS_SELECTOR, "td")
    ]


@pytest.fixture
def figures_log(tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    folder.mkdir()
    log = folder / "audit.jsonl"
    log.write_bytes(chain(FIGURES))
    return log


def test_the_german_page_writes_figures_and_dates_the_german_way(
    browser: Any, figures_log: Path
) -> None:
    from selenium.webdriver.common.by import By

    page = page_in(figures_log.parent.parent, "de")
    verdict = checked_in(browser, page, [figures_log], figures_log)
    assert verdict == german(verdict_line(figures_log))
    assert verdict.startswith("unversehrt, 9 Einträge, Kettenende #9 ")
    assert browser.execute_script("return document.documentElement.lang") == "de"
    assert browser.title == "retentiond: Löschprotokoll prüfen"

    assert rows(browser, "runs") == [
        ["call-recordings", "1", "0", ""],
        ["call-records", "2", "14.845", ""],
        ["voicemail", "1", "0", ""],
    ]
    track = browser.find_element(By.CSS_SELECTOR, "#runs th.track").text
    assert track == "04.03.2026 … 13.03.2026"
    assert rows(browser, "weeks") == [["KW 10/2026", "12.345", ""], ["KW 11/2026", "2.500", ""]]
    assert rows(browser, "holds") == [
        ["audit-2026", "verhängt am 06.03.2026", "call-records", "offen", "31.05.2026"],
        ["case-4711", "aufgehoben am 13.03.2026", "voicemail", "–", ""],
    ]
    assert rows(browser, "failures") == [
        ["11.03.2026 03:15:00", "voicemail", "fehlgeschlagen", "db_unreachable"],
        ["12.03.2026 03:15:00", "call-recordings", "abgelehnt", "max_delete_fraction"],
    ]
    warning = browser.find_element(By.CSS_SELECTOR, "#details .warning").text
    assert (
        warning == "Warnung: keine Prüfpunkte: Das Protokoll ist nicht signiert (audit.signing_key)"
    )
    data = ["audit.jsonl", *RULES, *HOLDS, *REASONS]
    assert not untranslated(visible(browser), data), visible(browser)


def test_the_english_page_keeps_iso_dates_and_english_numbers_and_the_check_flags_it(
    browser: Any, figures_log: Path
) -> None:
    """The same log on the English page: what the German test reads is the language's doing,
    and the check for English words finds the English page's."""
    page = page_in(figures_log.parent.parent, "en")
    assert checked_in(browser, page, [figures_log], figures_log) == verdict_line(figures_log)
    assert browser.execute_script("return document.documentElement.lang") == "en"
    assert rows(browser, "weeks") == [["2026-W10", "12,345", ""], ["2026-W11", "2,500", ""]]
    assert rows(browser, "failures")[0][:3] == ["2026-03-11 03:15:00", "voicemail", "failed"]
    assert rows(browser, "holds")[0][1] == "added 2026-03-06"
    found = untranslated(visible(browser), ["audit.jsonl", *RULES, *HOLDS, *REASONS])
    assert {"Runs", "rule", "Holds", "intact", "entries", "warning"} <= found


def test_untranslated_words_are_found_in_a_german_page_too() -> None:
    """One English sentence in German text is found; the data named is not."""
    text = "Läufe je Regel\ncall-records 2 14.845\nthe log was cut\n3fa2" + "0" * 60
    assert untranslated(text, ["call-records"]) == {"the", "log", "was", "cut"}


def test_the_embedded_words_are_the_viewer_catalogue_s(tmp_path: Path) -> None:
    page = viewer_page([], "de")
    embedded = re.search(r'<script type="application/json" id="words">(.*?)</script>', page, re.S)
    assert embedded is not None
    words = json.loads(embedded.group(1).replace("<\\/", "</"))
    assert words["language"] == "de" and words["locale"] == "de-DE"
    assert words["messages"] == translations_of("de", AREA)
    assert words["messages"]["BROKEN: {problem}"] == "BESCHÄDIGT: {problem}"
    plural = "{count} entry after the last signed checkpoint is hash-chained but not yet signed"
    assert [form.split()[1] for form in words["messages"][plural]] == ["Eintrag", "Einträge"]
    assert '<html lang="de">' in page and "<title>retentiond: Löschprotokoll prüfen</title>" in page
    english = re.search(r'id="words">(.*?)</script>', viewer_page([], "en"), re.S)
    assert english is not None
    assert json.loads(english.group(1)) == {"language": "en", "locale": "en", "messages": {}}


# --- the command ---------------------------------------------------------------------------------


def written_language(page: Path) -> str:
    match = re.search(r'<html lang="([a-z]+)">', page.read_text(encoding="utf-8"))
    assert match is not None
    return match.group(1)


def test_audit_viewer_language_de_writes_the_german_page(
    key_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTIOND_CONFIG", str(tmp_path / "no-such-config.yaml"))
    public = str(key_pairs["right"][1])
    for option, language in ((["--language", "de"], "de"), ([], "en")):
        page = tmp_path / f"verify-{language}.html"
        args = ["viewer", "-o", str(page), "--public-key", public, *option]
        result = CliRunner().invoke(audit_group, args)
        assert result.exit_code == 0, result.output
        assert written_language(page) == language  # without a config: English
    assert "Löschprotokoll prüfen" in (tmp_path / "verify-de.html").read_text(encoding="utf-8")


def test_audit_viewer_speaks_organisation_language_of_the_config(
    browser: Any, tmp_path: Path
) -> None:
    """The demo PBX, signed, its config saying organisation.language: de: `audit viewer` without
    --language writes the German page, which checks the log in German; --language en overrides."""
    from test_checkpoints import NOW, keygen, run_rules, signed

    from retentiond import demo
    from retentiond.cli.main import cli

    private, public, _ = keygen(tmp_path / "keys")
    config_file = demo.build(tmp_path / "pbx", now=NOW, days=200)
    text = config_file.read_text()
    assert "\norganisation:" not in text
    config_file.write_text(text + "organisation:\n  controller: Example GmbH\n  language: de\n")
    config = signed(config_file, private)
    assert [o.status for o in run_rules(config)] == ["done"] * 3
    log = config.config.audit.path
    page = tmp_path / "verify.html"
    result = CliRunner().invoke(cli, ["-c", str(config_file), "audit", "viewer", "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert written_language(page) == "de"

    verdict = checked_in(browser, page, [log], log, public)
    assert verdict == german(verdict_line(log, public))
    assert verdict.startswith("unversehrt, ")
    rules = [rule.name for rule in config.config.rules]
    holds = [o["hold"] for o in objects(log) if o["type"].startswith("hold_")]
    reasons = [o.get("reason", "") for o in objects(log)]
    data = [log.name, *rules, *holds, *filter(None, reasons)]
    assert not untranslated(visible(browser), data), visible(browser)

    english = tmp_path / "verify-en.html"
    args = ["-c", str(config_file), "audit", "viewer", "-o", str(english), "--language", "en"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert written_language(english) == "en"
    # a key given, the config still says the language
    keyed = tmp_path / "verify-keyed.html"
    args = [
        "-c",
        str(config_file),
        "audit",
        "viewer",
        "-o",
        str(keyed),
        "--public-key",
        str(public),
    ]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert written_language(keyed) == "de"


def test_what_keeps_the_page_from_checking_is_said_in_german(
    browser: Any, figures_log: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = page_in(figures_log.parent.parent, "de")
    other = figures_log.with_name("notes.txt")
    other.write_text("not a log\n")
    for heads, files, english in (
        (
            "12:nonsense",
            [figures_log],
            "cannot check: 12:nonsense: expected SEQ:HASH as printed by `retentiond audit head`",
        ),
        (
            "",
            [figures_log, other],
            "cannot check: pick the files of one log: the log (e.g. audit.jsonl) and its rotated "
            "files (audit.jsonl.1, audit.jsonl.2, ...)",
        ),
    ):
        browser.get(page.as_uri())
        box = browser.find_element(By.ID, "verdict")
        assert box.text == "Noch keine Dateien ausgewählt."
        browser.find_element(By.ID, "heads").send_keys(heads, "\t")
        assert box.text == "Noch keine Dateien ausgewählt."  # no files: still waiting
        browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
        WebDriverWait(browser, 30).until(lambda _, box=box: box.get_attribute("class") == "error")
        assert box.text == german(english)
        assert box.text.startswith("Prüfung nicht möglich: ")


def test_translations_of_reads_one_area_of_a_language() -> None:
    assert translations_of("en", AREA) == {}
    german_words = translations_of("de", AREA)
    assert german_words["Holds"] == "Sperrungen"
    assert all(english != "" for english in german_words)
    with pytest.raises(ValueError):
        translations_of("fr", AREA)

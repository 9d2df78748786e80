"""The German catalogues are complete and in step with the code, and numbers and dates are
written each language's way (retentiond/i18n.py, tools/messages.py)."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from retentiond.i18n import LANGUAGES, words

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import messages  # noqa: E402


@pytest.mark.parametrize("area", sorted(messages.AREAS))
def test_every_marked_string_has_its_german(area: str) -> None:
    """A marked string without German, a fuzzy one, one whose placeholders differ, or an entry
    the code no longer has: each named, with what to do (make messages, then translate)."""
    assert messages.problems(area, "de") == []


def test_the_catalogues_hold_what_the_code_marks() -> None:
    """Not vacuous: each area marks strings, and the German of one is what gettext returns."""
    for area in messages.AREAS:
        assert len(messages.extract(area)) > 0, area
    german = words("de")
    for area in messages.AREAS:
        for message in messages.extract(area):
            if message.id and isinstance(message.id, str):
                assert german.gettext(message.id) != message.id or message.id.isupper(), (
                    area,
                    message.id,
                )
                break


def test_a_missing_translation_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself fails when the code marks a string the catalogue does not have."""
    source = tmp_path / "retentiond" / "mail.py"
    source.parent.mkdir()
    source.write_text('from retentiond.i18n import N_\nWORD = N_("A sentence nobody translated")\n')
    po = tmp_path / "retentiond" / "locale" / "de" / "LC_MESSAGES" / "mail.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr ""\n"Language: de\\n"\n\nmsgid "Gone"\nmsgstr "Weg"\n')
    monkeypatch.setattr(messages, "ROOT", tmp_path)
    monkeypatch.setattr(messages, "LOCALE", tmp_path / "retentiond" / "locale")
    monkeypatch.setattr(messages, "AREAS", {"mail": [("retentiond/mail.py", "python")]})
    found = messages.problems("mail", "de")
    assert any("not in the catalogue" in p and "nobody translated" in p for p in found)
    assert any("no longer in the code" in p and "Gone" in p for p in found)


@pytest.mark.parametrize(
    ("language", "number", "day", "moment"),
    [
        ("en", "1,234,567", "2026-03-04", "2026-03-04 06:06 CET"),
        ("de", "1.234.567", "04.03.2026", "04.03.2026 06:06 CET"),
    ],
)
def test_numbers_and_dates_by_language(language: str, number: str, day: str, moment: str) -> None:
    w = words(language)
    assert w.number(1234567) == number
    assert w.day(date(2026, 3, 4)) == day
    assert w.moment(datetime(2026, 3, 4, 5, 6, tzinfo=UTC), ZoneInfo("Europe/Berlin")) == moment
    assert w.number(None) == "–"


def test_languages_are_the_configs() -> None:
    assert LANGUAGES == ("en", "de")
    with pytest.raises(ValueError, match="no such language"):
        words("fr")

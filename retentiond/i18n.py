"""The DPO's language: the words of the report, the rule catalogue, the report mail and the
verifier page in English or German, with numbers and dates written the language's way.

The English text is the code's own (the message ids); the German lives in gettext catalogues,
`retentiond/locale/de/LC_MESSAGES/<area>.po`, one per area of the code so that each is read and
kept on its own (report, mail, viewer). All areas of a language form one catalogue. Babel reads
the `.po` files when a language is first asked for (no compiled `.mo` to fall out of step), and
writes numbers, dates and times for the locale. `make messages` extracts the marked strings and
merges them into the catalogues (tools/messages.py); tests/test_i18n.py fails on any marked
string without a German translation, a fuzzy one, or one whose placeholders differ.

Mark a string with `_` where the language is known (`words.gettext`), or with `N_` where it is
defined before that (module constants, the store kinds' report wording) and translate it later
with `words.gettext(text)`.
"""

from __future__ import annotations

import functools
import gettext
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal, get_args

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.catalog import Catalog, Message
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

Language = Literal["en", "de"]
LANGUAGES: tuple[str, ...] = get_args(Language)
DEFAULT: Language = "en"

# How each language writes a day and a moment. English keeps ISO 8601 (unambiguous on both sides
# of the Atlantic); German the way German forms and letters do.
_DAY = {"en": "yyyy-MM-dd", "de": "dd.MM.yyyy"}
_MOMENT = {"en": "yyyy-MM-dd HH:mm", "de": "dd.MM.yyyy HH:mm"}


def N_(message: str) -> str:
    """Mark `message` for the catalogues without translating it (translated where it is shown)."""
    return message


def _folder(language: str) -> Traversable:
    return resources.files("retentiond") / "locale" / language / "LC_MESSAGES"


@functools.cache
def _translated(language: str, area: str) -> tuple[Message, ...]:
    """The usable entries of one area's catalogue, read once: untranslated, partly translated
    and fuzzy entries are left out (the English is shown)."""
    with (_folder(language) / f"{area}.po").open("rb") as stream:
        catalog = read_po(stream, locale=language)
    return tuple(m for m in catalog if m.id and not m.fuzzy and all(_forms(m.string)))


def _forms(string: object) -> tuple[str, ...]:
    return tuple(string) if isinstance(string, tuple | list) else (str(string or ""),)


@functools.cache
def _translations(language: str) -> gettext.NullTranslations:
    """All areas of a language as one gettext catalogue."""
    if language == "en":
        return gettext.NullTranslations()
    areas = sorted(
        e.name[: -len(".po")] for e in _folder(language).iterdir() if e.name.endswith(".po")
    )
    merged = Catalog(locale=language, domain="retentiond")
    for area in areas:
        for message in _translated(language, area):
            merged.add(message.id, message.string)
    buffer = io.BytesIO()
    write_mo(buffer, merged)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def translations_of(language: str, area: str) -> dict[str, str | list[str]]:
    """The translated strings of one area (`viewer`: the verifier page's JavaScript), English ->
    `language`: a plural's English singular -> its forms. Empty for English; untranslated and
    fuzzy entries are left out (the English is shown)."""
    if language not in LANGUAGES:
        raise ValueError(f"no such language: {language!r}")
    if language == "en":
        return {}
    found: dict[str, str | list[str]] = {}
    for message in _translated(language, area):
        if isinstance(message.id, str):
            found[message.id] = str(message.string)
        else:
            found[str(message.id[0])] = list(_forms(message.string))
    return found


@dataclass(frozen=True)
class Words:
    """Everything the documents need to speak one language."""

    language: Language = DEFAULT

    @property
    def _t(self) -> gettext.NullTranslations:
        return _translations(self.language)

    def gettext(self, message: str) -> str:
        return self._t.gettext(message)

    def ngettext(self, singular: str, plural: str, count: int) -> str:
        return self._t.ngettext(singular, plural, count)

    def number(self, value: int | float | None, empty: str = "–") -> str:
        """An integer or decimal with the language's grouping: 1,234,567 / 1.234.567."""
        if value is None:
            return empty
        return format_decimal(value, locale=self.language)

    def day(self, value: date | None, empty: str = "–") -> str:
        if value is None:
            return empty
        return format_date(value, _DAY[self.language], locale=self.language)

    def moment(self, value: datetime | None, zone: tzinfo | None = None, empty: str = "–") -> str:
        """A moment to the minute, in `zone` (UTC when none is given), with the zone's name."""
        if value is None:
            return empty
        shown = value.astimezone(zone if zone is not None else UTC)
        text = format_datetime(shown, _MOMENT[self.language], locale=self.language)
        return f"{text} {shown.tzname() or 'UTC'}"

    @property
    def locale(self) -> Locale:
        return Locale.parse(self.language)


@functools.cache
def words(language: str = DEFAULT) -> Words:
    """The words for `language` ("en" or "de"); anything else is a bug of the caller's (config
    and command line only admit LANGUAGES)."""
    if language not in LANGUAGES:
        raise ValueError(f"no such language: {language!r}")
    return Words(language)  # type: ignore[arg-type]

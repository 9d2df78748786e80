"""A data subject's identifiers and how stored values are matched against them. Pure logic.

A PBX stores one phone number in several forms: `+4930123456` from a SIP trunk, `004930123456`
or `030123456` as dialled, `4930123456` from some providers. A number given to retentiond (in a
hold or to `erase`/`find`) must be written in international form, and is matched in all of these
forms, exactly: a stored value matches when, with blanks and the separators `-./()` taken out, it
is one of them. Extensions (internal numbers such as `1001`) are matched exactly as written.

Matching is exact on purpose: `erase` must not delete a stranger's calls that share a suffix.
A PBX that stores numbers in yet another form (say with an outside-line prefix `0`) is handled by
giving that form too; a form that does not start with `+` or `00` is then taken as written.

In a recording's file name only the fields that name a party are matched, by the naming scheme
the name follows (see `name_parties`): never its date, time, uniqueid or call type, so an
extension `175044` does not take every recording started at 17:50:44. For the same reason an
extension is 1 to 20 letters, digits, `*` or `#`, and never one of the words the schemes write
where no party is (`in`, `out`, `q`, ...).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[\s\-./()]")
_DIALLABLE = re.compile(r"^\+?[0-9]+$")
# Dialplan characters only; `-`, `_`, `.` and blanks separate a file name's parts (and `_`
# starts a dialplan pattern), `+` starts a number. 20: longer than any number with its prefixes.
_EXTENSION = re.compile(r"^[0-9A-Za-z*#]{1,20}$")
_TOKEN_SPLIT = re.compile(r"[-_\s]+")
# Words the PBXs write into a recording's name, or use in the dialplan, where no person is: the
# call types of FreePBX's sub-record-check and one_touch_record.php (FreePBX/callrecording
# 16.0.21, functions.inc.php; 17.0 adds internal/external), its recording policies, the
# `unknown` it writes for a caller without a number, Asterisk's `s` extension, and the `r`/`t`
# (`in`/`out`) of split-channel recordings.
NAMING_WORDS = frozenset(
    {
        *("in", "out", "internal", "external", "exten", "rg", "q", "conf", "page", "parking"),
        *("parked", "ondemand", "generic", "recq", "recconf", "force", "always", "never"),
        *("yes", "no", "dontcare", "unknown", "s", "r", "t"),
    }
)
# FreePBX `<type>-<dst>-<src>-YYYYMMDD-HHMMSS-<uniqueid>` (conferences and paging write other
# fields before the time): the parties are the fields before the date; what follows the time is
# the uniqueid (`[systemname-]<epoch>.<n>`) and perhaps a split-channel suffix.
_FREEPBX_NAME = re.compile(r"^(?P<fields>.*)-[0-9]{8}-[0-9]{6}-[^-].*$", re.DOTALL)
# 3CX `[Name]_<ext>-<number>_YYYYMMDDhhmmss(<n>)`: the extension and the other party's number.
_THREECX_NAME = re.compile(
    r"^(?:\[[^\]]*\]_)?(?P<ext>[^-_\[\]]+)-(?P<number>.*)_[0-9]{14}(?:\([0-9]+\))?$", re.DOTALL
)
# Parts of a name in no known scheme that are times or call ids, never a party.
_DAY = re.compile(r"^[0-9]{8}$")
_TIME_OF_DAY = re.compile(r"^[0-9]{6}$")
_TIMESTAMP = re.compile(r"^[0-9]{14}(?:\([0-9]+\))?$")
_UNIQUEID = re.compile(r"^[0-9]{9,}\.[0-9]+$")


class SubjectError(ValueError):
    """A number or extension that cannot be matched; the message says what to write instead."""


def number_forms(text: str) -> frozenset[str]:
    """Every form in which a PBX may have stored the international number `text`."""
    written = _SEPARATORS.sub("", text.strip())
    if not written:
        raise SubjectError("an empty phone number")
    if not _DIALLABLE.match(written):
        # phonenumbers would read letters as keypad digits (+4930 FLOWERS): a hold or an
        # erasure must name the digits a PBX stores, nothing it has to guess
        raise SubjectError(
            f"{_shape(written)} has letters or other signs; write digits only, with an optional "
            "leading +, e.g. +4930123456"
        )
    if not written.startswith(("+", "00")):
        if written.isdigit() and len(written) >= 6:
            return frozenset({written})  # a local form the administrator names explicitly
        raise SubjectError(
            f"{_shape(written)} is not in international form; write it as +<country><number>, "
            "e.g. +4930123456 (internal short numbers go under extensions)"
        )
    international = "+" + written[2:] if written.startswith("00") else written
    import phonenumbers  # here: only holds and erasures by number need it (50 ms to import)

    try:
        parsed = phonenumbers.parse(international, None)
    except phonenumbers.NumberParseException:
        raise SubjectError(
            f"{_shape(written)} is not a phone number; write it as +<country><number>, "
            "e.g. +4930123456"
        ) from None
    if not phonenumbers.is_possible_number(parsed):
        raise SubjectError(
            f"{_shape(written)} has the wrong length for its country code; check the digits"
        )
    country = str(parsed.country_code)
    national = phonenumbers.national_significant_number(parsed)
    dialled = _SEPARATORS.sub(
        "", phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    )
    forms = {f"+{country}{national}", f"00{country}{national}", f"{country}{national}", dialled}
    return frozenset(form for form in forms if form)


def extension_form(text: str) -> str:
    value = text.strip()
    if not _EXTENSION.match(value):
        raise SubjectError(
            "an extension is 1 to 20 letters, digits, * or # (for example 1001); "
            "external numbers go under numbers, in international form"
        )
    if value.lower() in NAMING_WORDS:
        raise SubjectError(
            f"{value!r} cannot be an extension: recording names use it for the call type or "
            "the policy, so it would match other people's recordings; give the extension's "
            "number (for example 1001)"
        )
    return value


def name_parties(stem: str) -> tuple[str, ...]:
    """The parts of a recording's file name (without its extension) that may name a party.

    FreePBX names give the fields before the date, 3CX names the extension and the number. A
    name in neither scheme gives its parts between `-`, `_` and blanks, leaving out those that
    are a date and a time, a 14-digit timestamp or a uniqueid.
    """
    freepbx = _FREEPBX_NAME.match(stem)
    if freepbx is not None:
        return tuple(field for field in freepbx["fields"].split("-") if field)
    threecx = _THREECX_NAME.match(stem)
    if threecx is not None:
        return (threecx["ext"], threecx["number"])
    return tuple(_without_times([part for part in _TOKEN_SPLIT.split(stem) if part]))


def _without_times(parts: list[str]) -> list[str]:
    kept: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        following = parts[index + 1] if index + 1 < len(parts) else ""
        if _DAY.match(part) and _TIME_OF_DAY.match(following):
            index += 2  # YYYYMMDD-HHMMSS
            continue
        if not (_TIMESTAMP.match(part) or _UNIQUEID.match(part)):
            kept.append(part)
        index += 1
    return kept


def _shape(value: str) -> str:
    """A number's shape for an error message, never its digits: the log must not carry them."""
    return f"the number ({len(value)} characters)"


@dataclass(frozen=True)
class Subject:
    """One person's identifiers as stored values: every form of their numbers, their extensions."""

    numbers: frozenset[str] = frozenset()
    extensions: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, numbers: Iterable[str] = (), extensions: Iterable[str] = ()) -> Subject:
        forms: set[str] = set()
        for number in numbers:
            forms |= number_forms(number)
        return cls(frozenset(forms), frozenset(extension_form(e) for e in extensions))

    @property
    def values(self) -> frozenset[str]:
        """The stored values that identify this subject (for `column IN (...)`)."""
        return self.numbers | self.extensions

    def __bool__(self) -> bool:
        return bool(self.numbers or self.extensions)

    def matches(self, value: object) -> bool:
        """A stored field (a number column, a caller id number) names this subject."""
        if value is None:
            return False
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        return text in self.values or _SEPARATORS.sub("", text) in self.numbers

    def matches_callerid(self, callerid: str) -> bool:
        """`"Name" <number>` or a bare number, as Asterisk writes caller ids."""
        inside = re.findall(r"<([^<>]*)>", callerid)
        candidates = inside or [callerid]
        return any(self.matches(candidate) for candidate in candidates)

    def matches_name(self, stem: str) -> bool:
        """A party field of a file name (without its extension) names this subject.

        FreePBX names recordings `out-<dst>-<src>-<date>-<time>-<uniqueid>`: only `<dst>` and
        `<src>` name parties (see `name_parties`).
        """
        return any(self.matches(part) for part in name_parties(stem))


# --- a subject's traces in free text (tickets, hold reasons: they go into the audit log) -------

# Shorter digit strings (a 4-digit extension, a year) are too common in references to refuse
_MIN_TRACE_DIGITS = 5
_MIN_TRACE_LETTERS = 3


def named_in(text: str, subject: Subject) -> bool:
    """Whether free text carries one of the subject's numbers or extensions.

    Numbers are compared by their digits in every stored form and as the national significant
    number (`+49301234567890`: also `301234567890`), against all the digits of the text, so
    separators (`030 1234-567890`) and a prefix (`DSR-301234567890`) do not hide them.
    Extensions with letters (`sales`) are compared as words, ignoring case.
    """
    digits = re.sub(r"\D", "", text)
    if any(trace in digits for trace in _digit_traces(subject)):
        return True
    return any(
        re.search(rf"(?<![0-9A-Za-z]){re.escape(extension)}(?![0-9A-Za-z])", text, re.IGNORECASE)
        for extension in subject.extensions
        if _has_letters(extension) and len(extension) >= _MIN_TRACE_LETTERS
    )


def _digit_traces(subject: Subject) -> set[str]:
    """The digits of each stored form, the national significant numbers, the digits of
    extensions without letters: those long enough to be told from a year or a case number."""
    import phonenumbers  # here: see number_forms

    traces = {re.sub(r"\D", "", form) for form in subject.numbers}
    for form in subject.numbers:
        if form.startswith("+"):
            with contextlib.suppress(phonenumbers.NumberParseException):
                parsed = phonenumbers.parse(form, None)
                traces.add(phonenumbers.national_significant_number(parsed))
    traces |= {
        re.sub(r"\D", "", extension)
        for extension in subject.extensions
        if not _has_letters(extension)
    }
    # never the empty string (`sales` has no digits): every text would "contain" it
    return {trace for trace in traces if len(trace) >= _MIN_TRACE_DIGITS}


def _has_letters(value: str) -> bool:
    return any(character.isalpha() for character in value)

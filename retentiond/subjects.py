"""A data subject's identifiers and how stored values are matched against them. Pure logic.

A PBX stores one phone number in several forms: `+4930123456` from a SIP trunk, `004930123456`
or `030123456` as dialled, `4930123456` from some providers. A number given to retentiond (in a
hold or to `erase`/`find`) must be written in international form, and is matched in all of these
forms, exactly: a stored value matches when, with blanks and the separators `-./()` taken out, it
is one of them. Extensions (internal numbers such as `1001`) are matched exactly as written.

Matching is exact on purpose: `erase` must not delete a stranger's calls that share a suffix.
A PBX that stores numbers in yet another form (say with an outside-line prefix `0`) is handled by
giving that form too; a form that does not start with `+` or `00` is then taken as written.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

_SEPARATORS = re.compile(r"[\s\-./()]")
_DIALLABLE = re.compile(r"^\+?[0-9]+$")
_EXTENSION = re.compile(r"^[0-9A-Za-z*#+_]{1,32}$")
_TOKEN_SPLIT = re.compile(r"[-_\s]+")


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
            "an extension is 1 to 32 letters, digits or * # + _ (for example 1001); "
            "external numbers go under numbers, in international form"
        )
    return value


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
        """A token of a file name (without its extension) names this subject.

        FreePBX names recordings `out-<dst>-<src>-<date>-<time>-<uniqueid>`: tokens are the
        parts between `-`, `_` and blanks.
        """
        return any(self.matches(token) for token in _TOKEN_SPLIT.split(stem) if token)


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

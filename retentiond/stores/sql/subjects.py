"""Whose a row is: the subject columns and the parts of the file's name, as SQL.

With `subject_columns`, a hold by number covers only rows naming the person there (`IN` the
subject's stored forms, or a caller id with one of them between `<` and `>` as in `clid`, NULL
never matching); `find` and `subject_batches` search those columns.
With `subject_in_file_name`, a row also names the person whose stored form is a part of its file's
name (3CX `<ext>/[Name]_<ext>-<number>_<time>(<n>).wav`), as a files store's `subject_in_name`
matches: the name without folders and extension, split at `-`, `_` and blanks. The database
computes that name and looks for `-<form>-` in `-<name>-` with the separators made `-`, the
form a bound parameter compared byte for byte (instr, strpos, LOCATE on BINARY): no pattern
characters to escape, and no case folding.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from sqlalchemy import Column, Table
from sqlalchemy import types as sqltypes

from retentiond.errors import StoreError
from retentiond.policy.subjects import Subject
from retentiond.stores.sql.predicates import Predicate
from retentiond.stores.sql.table import SqlTable

# A value with one of these can never be a whole part of a file name (subjects.matches_name).
_NAME_SEPARATORS = re.compile(r"[-_\s]")


class SubjectMatching(SqlTable):
    """Rows naming a data subject, as predicates."""

    def _prepare_subjects(self, table: Table) -> None:
        columns = self._columns(table, self._store.subject_columns, "subject_columns")
        self._subject_names = [column.name for column in columns]
        self._subject_sql = [self._as_text(column) for column in columns]

    def _as_text(self, column: Column[Any]) -> str:
        """A column compared with text: numbers stored as numbers (or untyped) cast to text."""
        quoted: str = self._preparer().quote(column.name)
        if isinstance(column.type, sqltypes.String):
            return quoted
        return f"CAST({quoted} AS {self._dialect.text_type})"

    def _prepare_file_subjects(self, column: Column[Any]) -> None:
        """The file's name as parts between `-`: its base name (after the last `/`) up to its
        last dot, `_` and blanks made `-`, with a `-` at each end."""
        value = self._file_sql
        text_type = isinstance(column.type, sqltypes.String)
        stem = self._dialect.file_stem(value, text_type)
        parts = f"REPLACE(REPLACE({stem}, '_', '-'), ' ', '-')"
        parts = self._dialect.concat("'-'", parts, "'-'")
        digits = f"REPLACE(REPLACE(REPLACE({parts}, '.', ''), '(', ''), ')', '')"
        self._file_parts = (parts, digits)

    def subject_fields(self) -> list[str]:
        files = [self._file_name] if self._file_parts is not None else []
        return self._subject_names + files

    def _naming(self, subject: Subject) -> Predicate:
        """Rows where a subject column holds one of the subject's stored forms, or (with
        subject_in_file_name) the file's name has one as a part."""
        naming = self._subject_naming(subject, "who")
        if naming is None:
            raise StoreError(
                f"{self.label}: this table cannot be searched for a person's rows because no "
                "subject_columns are set; set subject_columns to the columns holding numbers "
                "and extensions (FreePBX cdr: src, dst, cnum, did), or subject_in_file_name: "
                "true when the file names in file_column carry the numbers of the call"
            )
        return naming

    def _subject_naming(self, subject: Subject, name: str) -> Predicate | None:
        """Rows naming `subject`, never NULL; None when this table cannot tell whose a row is.
        `name` prefixes the parameters."""
        parts: list[Predicate] = []
        if self._subject_sql:
            parts.append(self._column_naming(subject, name))
        if self._file_parts is not None:
            parts.append(self._file_naming(subject, name, *self._file_parts))
        return Predicate.any_of(parts)

    def _file_naming(self, subject: Subject, name: str, parts: str, digits: str) -> Predicate:
        """Rows whose file's name has one of the subject's forms as a whole part: `-<form>-`
        occurs in its `parts`. A number's forms are looked for in its `digits` (`.()` taken
        out), as subjects.matches compares them; extensions as written."""
        params: dict[str, Any] = {}
        tests: list[str] = []
        for kind, values, where in (
            ("number", subject.numbers, digits),
            ("extension", subject.extensions, parts),
        ):
            usable = sorted(v for v in values if v and not _NAME_SEPARATORS.search(v))
            for index, value in enumerate(usable):
                param = f"{name}_{kind}{index}"
                params[param] = f"-{value}-"
                tests.append(self._contains(where, param))
        if not tests:
            return Predicate("1 = 0")  # no form of theirs can be a part of a name
        return Predicate(f"({self._file_sql} IS NOT NULL AND ({' OR '.join(tests)}))", params)

    def _contains(self, haystack: str, param: str) -> str:
        """`haystack` holds the parameter's text, compared byte for byte (case too)."""
        return self._dialect.contains(haystack, param)

    def _column_naming(self, subject: Subject, name: str) -> Predicate:
        """A subject column holds one of the forms, as written or with blanks and `-./()` taken
        out (`030 123456`, `+49 (30) 123-456`), or is a caller id with one of them between `<`
        and `>` (`"Alice" <+4930123456>`, as Asterisk writes `clid`), as subjects.Subject's
        matches and matches_callerid compare them."""
        params: dict[str, Any] = {name: sorted(subject.values)}
        # For a value with several `<`: `<form>` found byte for byte (`<+4930123456>` is no
        # part of `<+49301234567>`), each a parameter with no pattern characters to escape.
        inside: list[tuple[str, bool]] = []
        for kind, values, stripped in (
            ("number", subject.numbers, True),
            ("extension", subject.extensions, False),
        ):
            for index, value in enumerate(sorted(values)):
                param = f"{name}_callerid_{kind}{index}"
                params[param] = f"<{value}>"
                inside.append((param, stripped))
        tests = []
        for c in self._subject_sql:
            options = [f"{c} IN :{name}", f"{_stripped(c)} IN :{name}"]
            if inside:
                options.append(self._callerid_naming(c, name, inside))
            # IS NOT NULL: a NULL would make the whole condition NULL, and NOT (NULL) keeps a
            # row that names nobody.
            tests.append(f"({c} IS NOT NULL AND ({' OR '.join(options)}))")
        return Predicate(f"({' OR '.join(tests)})", params, frozenset({name}))

    def _callerid_naming(self, c: str, name: str, inside: list[tuple[str, bool]]) -> str:
        """`c` is a caller id with one of the forms (`name`) between `<` and `>`.

        A value without `<` costs one test, and one with a single `<` (Asterisk's clid) one
        comparison of what its `<...>` holds; only a value with several is searched for each
        `<form>` parameter in `inside`. CASE is evaluated in this order on every server.
        """
        bracketed, closed = self._bracketed(c)
        # The forms have no separators, so this also finds a form as written.
        single = f"({closed} AND {_stripped(bracketed)} IN :{name})"
        several = " OR ".join(
            self._contains(_stripped(c) if stripped else c, param) for param, stripped in inside
        )
        return (
            f"(CASE WHEN {self._position(c, '<')} = 0 THEN 1 = 0 "
            f"WHEN LENGTH({c}) - LENGTH(REPLACE({c}, '<', '')) = 1 THEN {single} "
            f"ELSE ({several}) END)"
        )

    def _bracketed(self, c: str) -> tuple[str, str]:
        """For a value with one `<`: what it and the first `>` after it enclose, and whether
        there is such a `>` at all."""
        after = f"SUBSTR({c}, {self._position(c, '<')} + 1)"  # SUBSTR: all three have it
        bracketed = self._dialect.up_to(after, ">")
        return bracketed, f"{self._position(after, '>')} > 0"

    def _position(self, text: str, character: Literal["<", ">"]) -> str:
        """Where `character` first occurs in `text`, 0 when it does not."""
        return self._dialect.position(text, character)


def _stripped(column: str) -> str:
    """The column's text without blanks and the separators `-./()` (REPLACE is portable)."""
    expression = column
    for separator in (" ", "-", ".", "/", "(", ")"):
        expression = f"REPLACE({expression}, '{separator}', '')"
    return expression

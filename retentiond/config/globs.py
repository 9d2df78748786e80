"""`match` patterns of a files store: checked when the config is loaded, compiled by the store.

A pattern that can match nothing is worse than an error: the store finds nothing to delete and
every run reports it compliant while the recordings stay. So what cannot select a file below
the root is refused with a hint: an absolute pattern, a `..` or `.` folder, an empty folder
name (`//`), an unbalanced `{` or `}`, a `[...]` range that is none (`[z-a]`). Braces are
expanded as a shell does (`*.{wav,mp3}` is `*.wav` and `*.mp3`, nested ones too), not matched
literally.

Patterns are relative to the root: `**` as a whole component spans any number of folders (also
none); `*`, `?` and `[...]` stay within one name. Case-sensitive, like the filesystem.
"""

from __future__ import annotations

import itertools
import re

# A pattern writes out to at most this many (`{a,b}{c,d}...` doubles with every group).
MAX_EXPANSIONS = 256


def check_match(pattern: str) -> str:
    """The pattern, unchanged; ValueError saying what to write instead when it cannot match."""
    for expanded in expand_braces(pattern):
        _check_components(expanded)
        try:
            compile_glob(expanded)
        except re.error:
            raise ValueError(
                f"{pattern!r} is not a valid glob; check its [...] ranges (e.g. [0-9])"
            ) from None
    return pattern


def expand_braces(pattern: str) -> list[str]:
    """`a{b,c}d` as `abd` and `acd`, nested groups too; ValueError for unbalanced braces."""
    expanded: list[str] = []
    pending = [pattern]
    while pending:
        current = pending.pop()
        group = _first_group(current, pattern)
        if group is None:
            expanded.append(current)
        else:
            start, end, alternatives = group
            pending.extend(
                current[:start] + alternative + current[end + 1 :]
                for alternative in reversed(alternatives)
            )
        if len(expanded) + len(pending) > MAX_EXPANSIONS:
            raise ValueError(
                f"{pattern!r} expands to more than {MAX_EXPANSIONS} patterns; "
                "write fewer {...} groups"
            )
    return expanded


def _first_group(text: str, written: str) -> tuple[int, int, list[str]] | None:
    """The first top-level `{...}`: where it starts and ends, and its alternatives."""
    depth = 0
    start = -1
    commas: list[int] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "[" and (end := _class_end(_component_at(text, index), index + 1)) is not None:
            index = end + 1  # a brace inside [...] is a character, not a group
            continue
        if char == "{":
            if depth == 0:
                start, commas = index, []
            depth += 1
        elif char == "}":
            if depth == 0:
                raise ValueError(_unbalanced(written))
            depth -= 1
            if depth == 0:
                if not commas:
                    raise ValueError(
                        f"{written!r}: braces list alternatives separated by commas, e.g. "
                        "*.{wav,mp3}; for a brace in a file name write [{] or [}]"
                    )
                bounds = [start, *commas, index]
                pieces = [text[a + 1 : b] for a, b in itertools.pairwise(bounds)]
                return start, index, pieces
        elif char == "," and depth == 1:
            commas.append(index)
        index += 1
    if depth:
        raise ValueError(_unbalanced(written))
    return None


def _component_at(text: str, index: int) -> str:
    """`text` up to the end of the folder name at `index`: a [...] range never spans a /."""
    end = text.find("/", index)
    return text if end < 0 else text[:end]


def _unbalanced(written: str) -> str:
    return (
        f"{written!r} has a {{ without its }} or the other way round; write *.{{wav,mp3}} "
        "for either extension, or [{] and [}] for braces in a file name"
    )


def _check_components(pattern: str) -> None:
    if pattern.startswith("/"):
        raise ValueError(
            f"{pattern!r} is absolute, but patterns are relative to the store's root: "
            "write e.g. '**/*.wav', or set root to the folder the pattern starts in"
        )
    for component in pattern.split("/"):
        if component == "..":
            raise ValueError(
                f"{pattern!r} has a '..' folder; a store never leaves its root: set root to "
                "the folder holding the files instead"
            )
        if component == ".":
            raise ValueError(f"{pattern!r} has a '.' folder, which matches nothing; remove it")
        if component == "":
            raise ValueError(
                f"{pattern!r} has an empty folder name (// or a / at the end), which matches "
                "nothing; write e.g. '2024/**' or '**/*.wav'"
            )


def compile_glob(pattern: str) -> re.Pattern[str]:
    """One expanded pattern as a regex over a root-relative path (see the module docstring)."""
    components = pattern.strip("/").split("/")
    parts: list[str] = []
    for index, component in enumerate(components):
        last = index == len(components) - 1
        if component == "**":
            parts.append(".*" if last else "(?:[^/]*/)*")
        else:
            parts.append(_component_regex(component) + ("" if last else "/"))
    return re.compile("".join(parts), re.DOTALL)


def _component_regex(component: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(component):
        char = component[index]
        index += 1
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[" and (end := _class_end(component, index)) is not None:
            parts.append(_class_regex(component[index:end]))
            index = end + 1
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def _class_end(component: str, start: int) -> int | None:
    index = start
    if index < len(component) and component[index] in "!^":
        index += 1
    if index < len(component) and component[index] == "]":
        index += 1  # a leading ] is a member, as in fnmatch
    end = component.find("]", index)
    return end if end >= 0 else None


def _class_regex(body: str) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    members = "".join(char if char == "-" else re.escape(char) for char in body)
    # The lookahead keeps a class (negated or naming "/") from ever spanning two folders.
    return f"(?!/)[^{members}]" if negated else f"(?!/)[{members}]"

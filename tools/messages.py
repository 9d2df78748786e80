"""The translation catalogues: extract the marked strings of each area and merge them into its
German catalogue (`make messages`), or say what is missing (`--check`, as tests/test_i18n.py does).

An area is the part of the code whose words one catalogue holds:
    report  the report's pages and the rule catalogue as rendered: the templates and render.py
    figures the words the report's figures carry, made in Python: verdicts, notes, the summary,
            statuses, reasons (the other modules of evidence/report, stores/kinds.py's wording)
    mail    the report mail (service/reports.py)
    viewer  the verifier page (evidence/viewer: its JavaScript and the Python that builds it)

Merging keeps every translation whose English is unchanged, adds new strings untranslated, and
drops the ones the code no longer uses. Then translate the new entries (msgstr) in
retentiond/locale/de/LC_MESSAGES/<area>.po; `--check` lists what is still open.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_file
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "retentiond" / "locale"
TRANSLATED = ("de",)
JINJA = "jinja2.ext:babel_extract"
# area -> (glob under the repository, extraction method)
AREAS: dict[str, list[tuple[str, str]]] = {
    "report": [
        ("retentiond/evidence/report/render.py", "python"),
        ("retentiond/evidence/report/templates/*.j2", JINJA),
    ],
    "figures": [
        ("retentiond/evidence/report/[!r]*.py", "python"),
        ("retentiond/evidence/report/re[!n]*.py", "python"),
        ("retentiond/stores/kinds.py", "python"),
    ],
    "mail": [("retentiond/service/reports.py", "python")],
    "viewer": [
        ("retentiond/evidence/viewer/*.py", "python"),
        ("retentiond/evidence/viewer/*.js", "javascript"),
    ],
}
KEYWORDS = {**DEFAULT_KEYWORDS, "t": None}  # t("...") in the verifier's JavaScript
JINJA_OPTIONS = {"trimmed": "true", "extensions": "jinja2.ext.i18n"}
HEADER = "# retentiond, %(area)s, %(language)s: tools/messages.py merges, people translate"
EPOCH = datetime(2026, 12, 7, tzinfo=UTC)
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sd]|\{[a-z_]*\}")


def po_path(language: str, area: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / f"{area}.po"


def _files(area: str) -> Iterator[tuple[Path, str]]:
    for pattern, method in AREAS[area]:
        for path in sorted(ROOT.glob(pattern)):
            yield path, method


def extract(area: str) -> Catalog:
    """The strings the code of `area` marks, as a template catalogue."""
    template = Catalog(domain=area, project="retentiond")
    for path, method in _files(area):
        options = JINJA_OPTIONS if method == JINJA else {}
        for line, message, comments, context in extract_from_file(
            method, str(path), keywords=KEYWORDS, options=options
        ):
            where = (str(path.relative_to(ROOT)), line)
            template.add(message, locations=[where], auto_comments=comments, context=context)
    return template


def merge(area: str, language: str) -> Catalog:
    """`language`'s catalogue of `area` brought up to the code: old translations kept."""
    template = extract(area)
    path = po_path(language, area)
    if path.exists():
        with path.open("rb") as stream:
            catalog = read_po(stream, locale=language)
    else:
        catalog = Catalog(locale=language, domain=area, project="retentiond")
    catalog.update(template, no_fuzzy_matching=True)
    catalog.obsolete.clear()
    # fixed header fields: a merge that adds no string changes no byte (and branches merge cleanly)
    catalog.header_comment = HEADER % {"area": area, "language": language}
    catalog.project, catalog.version = "retentiond", "1"
    catalog.creation_date = catalog.revision_date = EPOCH
    catalog.last_translator = catalog.language_team = "retentiond developers"
    catalog.msgid_bugs_address = ""
    catalog.fuzzy = False
    return catalog


def write(catalog: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        write_po(stream, catalog, width=100, no_location=True, sort_output=True)


def _placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def _strings(message: Message) -> list[tuple[str, str]]:
    ids = message.id if isinstance(message.id, tuple) else (message.id,)
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    return [(ids[min(i, len(ids) - 1)], s) for i, s in enumerate(strings)]


def problems(area: str, language: str) -> list[str]:
    """What keeps `area` from being wholly in `language`: each a line naming the English."""
    found: list[str] = []
    path = po_path(language, area)
    if not path.exists():
        return [f"{path.relative_to(ROOT)}: missing (run make messages)"]
    with path.open("rb") as stream:
        stored = read_po(stream, locale=language)
    wanted = extract(area)
    stored_ids = {m.id for m in stored if m.id}
    for message in wanted:
        if not message.id:
            continue
        shown = message.id if isinstance(message.id, str) else message.id[0]
        held = stored.get(message.id)
        if held is None:
            found.append(f"{area}: not in the catalogue (run make messages): {shown!r}")
        elif held.fuzzy:
            found.append(f"{area}: fuzzy: {shown!r}")
        elif not all(s for _, s in _strings(held)):
            found.append(f"{area}: untranslated: {shown!r}")
        else:
            for english, translated in _strings(held):
                if _placeholders(english) != _placeholders(translated):
                    found.append(f"{area}: placeholders differ: {english!r} / {translated!r}")
    for stale in sorted(stored_ids - {m.id for m in wanted if m.id}, key=str):
        found.append(f"{area}: no longer in the code (run make messages): {stale!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list what is missing; change nothing")
    parser.add_argument("areas", nargs="*", default=sorted(AREAS), help="areas (default: all)")
    options = parser.parse_args()
    if options.check:
        found = [p for a in options.areas for lang in TRANSLATED for p in problems(a, lang)]
        print("\n".join(found) or "every marked string is translated")
        return 1 if found else 0
    for area in options.areas:
        for language in TRANSLATED:
            catalog = merge(area, language)
            write(catalog, po_path(language, area))
            open_ = sum(1 for m in catalog if m.id and (not m.string or m.fuzzy))
            where = po_path(language, area).relative_to(ROOT)
            print(f"{where}: {len(catalog)} strings, {open_} open")
    return 0


if __name__ == "__main__":
    sys.exit(main())

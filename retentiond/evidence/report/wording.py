"""The report's words for the identifiers its figures carry (statuses, units, skip reasons, store
kinds, hold events, incident kinds): `label(words, identifier)` gives the text to print for one,
in the report's language. The identifiers themselves stay as they are in the values (CSS classes,
CSV and JSON keep them); only what a reader sees is translated. An identifier without a label is
printed as it is.
"""

from __future__ import annotations

from retentiond.i18n import Words

# identifier -> its English label, marked for the catalogue (N_) and translated by `label`
LABELS: dict[str, str] = {}


def label(words: Words, identifier: object) -> str:
    """What a reader sees for `identifier` in `words`' language."""
    text = str(identifier)
    english = LABELS.get(text)
    return text if english is None else words.gettext(english)

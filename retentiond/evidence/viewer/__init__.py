"""The verifier page (`retentiond audit viewer`): one self-contained HTML file that checks the
deletion log in the DPO's browser, with the public keys embedded.

verify.js ports the checks of `evidence.log` (the chain, the files' order, the checkpoints and
their Ed25519 signatures) to WebCrypto, with the same words; page.js shows the verdict and the
figures; page.html holds both and forbids any network access (its Content-Security-Policy).

The page speaks the DPO's language (en, de): page.html's own text is translated here (STATIC), the
scripts' through words.js, which gets the viewer catalogue's strings for the language embedded
(i18n.translations_of). The JSON result in the page stays English, as `audit verify --json`.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from importlib import resources

from retentiond import __version__
from retentiond.evidence.log import VerifyKey
from retentiond.i18n import DEFAULT, N_, Language, translations_of

AREA = "viewer"
# The locale the page's Intl formats numbers and dates with.
LOCALES = {"en": "en", "de": "de-DE"}
# page.html's markers -> its own text (HTML: the <code> marks are kept by the translation).
STATIC = {
    "TITLE": N_("retentiond: check the deletion log"),
    "HEADING": N_("Check the deletion log"),
    "INTRO": N_(
        "Pick the log file and its rotated files (<code>audit.jsonl</code>, "
        "<code>audit.jsonl.1</code>, …), all at once, in any order. This page checks the hash "
        "chain and the signed checkpoints in your browser, as <code>retentiond audit verify "
        "--public-key</code> does. The files are read here only: nothing is sent anywhere (the "
        "page has no network access)."
    ),
    "FILES_LABEL": N_("Log files:"),
    "HEADS_LABEL": N_(
        "Heads copied off the host earlier (optional, <code>SEQ:HASH</code>, from "
        "<code>retentiond audit head</code>):"
    ),
    "STRICT_LABEL": N_(
        "strict: also fail on entries not yet signed and an incomplete last line (as "
        "<code>--strict</code>)"
    ),
    "KEYS_LABEL": N_(
        "Public keys the signatures are checked with (SHA-256 fingerprints, compare them with "
        "the administrator over another channel):"
    ),
    "WAITING": N_("No files picked yet."),
    "FOOTER": N_(
        "Written by retentiond {version} (<code>retentiond audit viewer</code>). The log format "
        "is described in docs/audit-log.md."
    ),
}
_MARKER = re.compile(r"\{\{([A-Z_]+)\}\}")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def raw_public_key(key: VerifyKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _script_safe(text: str) -> str:
    """Text that cannot end the <script> element it is placed in."""
    return text.replace("</", "<\\/")


def viewer_page(keys: Sequence[VerifyKey], language: Language = DEFAULT) -> str:
    """The page in `language`, with `keys` embedded (none: the page checks the chain only)."""
    embedded = [
        {"fingerprint": key.fingerprint, "raw": base64.b64encode(raw_public_key(key)).decode()}
        for key in keys
    ]
    messages = translations_of(language, AREA)
    catalogue = {"language": language, "locale": LOCALES[language], "messages": messages}
    # page.html's text from the same strings as the scripts' (the viewer area's, no other)
    values = {name: str(messages.get(text, text)) for name, text in STATIC.items()}
    values["FOOTER"] = values["FOOTER"].format(version=html.escape(__version__))
    values |= {
        "LANG": language,
        "KEYS": _script_safe(json.dumps(embedded)),
        "WORDS": _script_safe(json.dumps(catalogue, ensure_ascii=False)),
        "WORDS_JS": _script_safe(_asset("words.js")),
        "VERIFY_JS": _script_safe(_asset("verify.js")),
        "PAGE_JS": _script_safe(_asset("page.js")),
    }
    # one pass over page.html: the scripts put in are not searched for markers themselves
    return _MARKER.sub(lambda match: values[match.group(1)], _asset("page.html"))

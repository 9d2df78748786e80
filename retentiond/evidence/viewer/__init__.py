"""The verifier page (`retentiond audit viewer`): one self-contained HTML file that checks the
deletion log in the DPO's browser, with the public keys embedded.

verify.js ports the checks of `evidence.log` (the chain, the files' order, the checkpoints and
their Ed25519 signatures) to WebCrypto, with the same words; page.js shows the verdict and the
figures; page.html holds both and forbids any network access (its Content-Security-Policy).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from importlib import resources

from retentiond import __version__
from retentiond.evidence.log import VerifyKey
from retentiond.i18n import DEFAULT, Language


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
    page = _asset("page.html")
    for marker, value in (
        ("{{VERSION}}", __version__),
        ("{{KEYS}}", _script_safe(json.dumps(embedded))),
        ("{{VERIFY_JS}}", _script_safe(_asset("verify.js"))),
        ("{{PAGE_JS}}", _script_safe(_asset("page.js"))),
    ):
        page = page.replace(marker, value)
    return page

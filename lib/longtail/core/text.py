"""Text normalisation shared by ``ingest`` (content hashes) and ``encode`` (what the model sees).

The content hash is taken over exactly the string the encoder receives, so that an item is
re-encoded if and only if the text the model would see has changed.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,2000}>")
_SPACE = re.compile(r"\s+")
# Control characters other than whitespace (which _SPACE folds); they carry no meaning for BERT.
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\ufeff]")


def normalise_text(text: str | None) -> str:
    """Return ``text`` as the encoder should see it: HTML tags stripped and entities unescaped,
    Unicode NFKC, control characters removed, whitespace folded to single spaces, trimmed.

    ``None`` and non-strings give ``""``.

    Example:
        >>> normalise_text("  <p>Caf&eacute;\\n  noir</p> ")
        'Café noir'
    """
    if not isinstance(text, str):
        return ""
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    return _SPACE.sub(" ", text).strip()


def encoder_text(title: str | None, description: str | None) -> str:
    """The single string encoded for an item: ``"<title>. <description>"``, each normalised.

    The title is left out when it is empty, or when the description already starts with it.

    Example:
        >>> encoder_text("Heat", "A heist in L.A.")
        'Heat. A heist in L.A.'
    """
    t, d = normalise_text(title), normalise_text(description)
    if not t or d.lower().startswith(t.lower()):
        return d
    if not d:
        return t
    return f"{t.rstrip('.')}. {d}"


def content_hash(text: str) -> str:
    """SHA-256 (hex) of the UTF-8 encoded text: stable across runs, machines and Python versions."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""Item text is user-generated: make it safe to put inside a prompt.

A title may carry fake ``<answer>`` tags, prompt-injection text, control characters, bidi marks
or a megabyte of junk. We never let it change the prompt's structure: control and bidi
characters go, angle brackets become look-alike guillemets (so no tag survives), and the text is
cut to a bounded length with the cut recorded.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_TITLE_CHARS = 200
# Bidi embeddings/overrides/isolates and marks (U+200E/F, U+202A-E, U+2066-9), zero-width chars.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class CleanText:
    """Sanitised text and whether it was shortened."""

    text: str
    truncated: bool


def clean_item_text(raw: object, max_chars: int = MAX_TITLE_CHARS) -> CleanText:
    """Sanitise one piece of item text (a title, a category, a profile) for a prompt.

    Args:
        raw: the text; non-strings (NaN, None) become ``""``.
        max_chars: the kept length; longer text is cut at a word boundary and ends with "…".

    Returns:
        The cleaned text and a truncation flag.
    """
    if not isinstance(raw, str):
        return CleanText("", False)
    # Look at no more than we could keep: a 1 MB title costs nothing past this point.
    text = raw[: max_chars * 4]
    text = _INVISIBLE.sub("", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = text.replace("<", "‹").replace(">", "›")
    text = _WS.sub(" ", text).strip()
    truncated = len(raw) > max_chars * 4 or len(text) > max_chars
    if len(text) > max_chars:
        cut = text[:max_chars].rsplit(" ", 1)[0] or text[:max_chars]
        text = cut + "…"
    return CleanText(text, truncated)

"""Tag normalisation: many raw web spellings of a tag map to one vocabulary entry.

"#Café!", "cafe" and " CAFÉ " all become "cafe": unicode compatibility forms are folded, accents dropped,
case folded, and every run of punctuation or white space becomes one space.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)


def normalize_tag(raw: str) -> str:
    """The canonical form of one raw tag; empty when nothing of it survives."""
    text = unicodedata.normalize("NFKD", raw)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold()
    return _SEPARATORS.sub(" ", text).strip()


def normalize_tags(raw_tags: Iterable[str]) -> list[str]:
    """Canonical tags of one image, first occurrence order, without empties or repeats."""
    seen: dict[str, None] = {}
    for raw in raw_tags:
        if isinstance(raw, str):
            tag = normalize_tag(raw)
            if tag:
                seen.setdefault(tag, None)
    return list(seen)

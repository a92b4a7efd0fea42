"""Tag normalisation: many raw web spellings of a tag map to one vocabulary entry.

"#Café!", "cafe" and " CAFÉ " all become "cafe": unicode compatibility forms are folded, accents dropped,
case folded, and every run of punctuation or white space becomes one space.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

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


def caption_tags(caption: str) -> list[str]:
    """Raw tags of a caption: its comma-separated pieces, or its words when it has no comma."""
    pieces = caption.split(",") if "," in caption else caption.split()
    return [p.strip() for p in pieces if p.strip()]


def sample_tags(meta: dict | None, caption: str | None) -> list[str] | None:
    """Raw tags of a sample: the sidecar's `tags` list, else those of its caption (img2dataset's `.txt`, or the
    sidecar's `caption`); None when the sidecar's `tags` is not a list or there is nothing to take tags from."""
    if meta is not None and "tags" in meta:
        tags = meta["tags"]
        return tags if isinstance(tags, list) else None
    if caption is None and meta is not None and isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    if caption is not None:
        return caption_tags(caption)
    return [] if meta is not None else None


def raw_sample_tags(sample: dict[str, Any]) -> list[str] | None:
    """Raw tags of a webdataset sample (`json` sidecar and/or `txt` caption); None when they are unusable."""
    meta = None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict):
            return None
    text = sample.get("txt")
    caption = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return sample_tags(meta, caption)

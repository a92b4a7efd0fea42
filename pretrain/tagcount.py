"""Counting tags at web scale: a streaming counter with bounded memory, and the synonym (canonicalisation) map.

`TagCounter(max_tracked=M)` keeps at most M distinct tags between updates (Misra–Gries with batched
decrements). When an update leaves more than M tags, every count is lowered by t, the count of the tag at rank
M/2 from the top, and tags left at zero are dropped. Each such prune removes t from at least M/2 + 1 tags, so
the sum of all t over a stream of N occurrences is at most N / (M/2 + 1) = `max_undercount`: every kept count
is within [true - max_undercount, true], and every tag seen more than max_undercount times is kept. Memory is
that of at most M + (distinct tags of one update) entries. `max_tracked=0` counts exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pretrain.config import VocabConfig
from pretrain.tags import normalize_tag


class TagCounter:
    """Counts of normalised (and canonicalised) tags, exact or bounded to `max_tracked` distinct tags."""

    def __init__(self, max_tracked: int = 0, synonyms: Mapping[str, str] | None = None) -> None:
        if max_tracked < 0 or max_tracked == 1:
            raise ValueError(f"vocab.max_tracked={max_tracked}: 0 (exact) or at least 2")
        self.max_tracked = max_tracked
        self.synonyms = dict(synonyms or {})
        self.counts: Counter[str] = Counter()
        self.total = 0  # occurrences seen, exact whatever the pruning
        self.max_undercount = 0  # the sum of all decrements: the bound on any count's error
        self.prunes = 0
        self.peak_tracked = 0  # most distinct tags held at once (just before a prune)

    def update(self, tags: Mapping[str, int] | Iterable[str]) -> None:
        """Add a mapping tag -> count or an iterable of tag occurrences (already normalised)."""
        if not isinstance(tags, Mapping):
            tags = Counter(tags)  # counted in C
        if self.synonyms:
            canonical: Counter[str] = Counter()
            for tag, n in tags.items():
                canonical[self.synonyms.get(tag, tag)] += n
            tags = canonical
        self.counts.update(tags)
        self.total += sum(tags.values())
        self.peak_tracked = max(self.peak_tracked, len(self.counts))
        if self.max_tracked and len(self.counts) > self.max_tracked:
            self._prune()

    def _prune(self) -> None:
        values = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        keep = self.max_tracked // 2  # the number of tags certain to survive the decrement
        t = int(np.partition(values, len(values) - keep - 1)[len(values) - keep - 1])
        del values
        self.counts = Counter({tag: n - t for tag, n in self.counts.items() if n > t})
        self.max_undercount += t
        self.prunes += 1

    def __len__(self) -> int:
        return len(self.counts)


def read_synonyms(path: str | Path) -> dict[str, str]:
    """A synonym map file -> {normalised variant: normalised canonical tag}, chains followed to their end.

    Format: one `variant<TAB>canonical` pair per line (both raw tags, normalised here); blank lines and lines
    starting with `#` are ignored. A variant mapped twice to different tags, or a cycle, is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocab.synonyms={str(path)!r}: no such file")
    pairs: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            variant, canonical = (normalize_tag(p) for p in parts) if len(parts) == 2 else ("", "")
            if not variant or not canonical:
                raise ValueError(f"{path}:{lineno}: expected 'variant<TAB>canonical' (two non-empty tags), "
                                 f"got {line.rstrip()!r}")
            if pairs.get(variant, canonical) != canonical:
                raise ValueError(f"{path}:{lineno}: {variant!r} is mapped to both {pairs[variant]!r} and {canonical!r}")
            if variant != canonical:
                pairs[variant] = canonical
    resolved: dict[str, str] = {}
    for variant in pairs:
        seen = [variant]
        target = pairs[variant]
        while target in pairs:
            if target in seen:
                raise ValueError(f"{path}: synonym cycle {' -> '.join([*seen, target])}")
            seen.append(target)
            target = pairs[target]
        resolved[variant] = target
    return resolved


def tag_counter(cfg: VocabConfig) -> TagCounter:
    """The counter a dataset's vocabulary is built with: `vocab.max_tracked` and the `vocab.synonyms` map."""
    return TagCounter(cfg.max_tracked, read_synonyms(cfg.synonyms) if cfg.synonyms else None)

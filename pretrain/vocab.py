"""The tag vocabulary: which normalised tags are training targets, and their indices.

`vocab.tsv` holds one line per kept tag, `tag<TAB>count<TAB>index`, most frequent first, after a header line.
Tags below `min_count`, or beyond the `top_k` most frequent, are out of vocabulary: they are counted but are
not targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.atomic import atomic_write_text

HEADER = "tag\tcount\tindex"


@dataclass
class Vocabulary:
    tags: list[str]
    counts: list[int]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {tag: i for i, tag in enumerate(self.tags)}

    def __len__(self) -> int:
        return len(self.tags)

    def encode(self, normalized_tags: Iterable[str]) -> list[int]:
        """Indices of the in-vocabulary tags, in order, without repeats; out-of-vocabulary tags are dropped."""
        ids: dict[int, None] = {}
        for tag in normalized_tags:
            i = self.index.get(tag)
            if i is not None:
                ids.setdefault(i, None)
        return list(ids)

    def save(self, path: str | Path) -> Path:
        lines = [HEADER] + [f"{t}\t{c}\t{i}" for i, (t, c) in enumerate(zip(self.tags, self.counts, strict=True))]
        return atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no vocabulary file (build shards first: `webly synth` or `webly shards`)")
        tags: list[str] = []
        counts: list[int] = []
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                line = line.rstrip("\n")
                if lineno == 1 and line == HEADER or not line:
                    continue
                parts = line.split("\t")
                if len(parts) != 3 or not parts[1].isdigit() or parts[2] != str(len(tags)):
                    raise ValueError(f"{path}:{lineno}: expected 'tag<TAB>count<TAB>{len(tags)}', got {line!r}")
                tags.append(parts[0])
                counts.append(int(parts[1]))
        return cls(tags, counts)


def build_vocabulary(tag_counts: Counter[str], min_count: int = 1, top_k: int = 0) -> Vocabulary:
    """Keep tags seen at least `min_count` times, the `top_k` most frequent if top_k > 0; ties by name."""
    kept = sorted(((t, c) for t, c in tag_counts.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0]))
    if top_k > 0:
        kept = kept[:top_k]
    if not kept:
        raise ValueError(f"no tag is seen {min_count} times or more: lower shards.vocab.min_count")
    return Vocabulary([t for t, _ in kept], [c for _, c in kept])


def coverage(vocab: Vocabulary, tag_counts: Counter[str]) -> float:
    """Fraction of all tag occurrences that fall inside the vocabulary."""
    total = sum(tag_counts.values())
    return sum(vocab.counts) / total if total else 0.0

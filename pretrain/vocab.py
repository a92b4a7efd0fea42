"""The tag vocabulary: which normalised tags are training targets, and their indices.

`vocab.tsv` holds one line per kept tag, `tag<TAB>count<TAB>index`, most frequent first, after a header line.
Tags below `min_count`, or beyond the `top_k` most frequent, are out of vocabulary (OOV): they are counted but
are not targets (`oov=drop`), or they all share one last entry `<oov>` (`oov=bucket`), so an image with only
rare tags still trains. Synonyms (`synonyms.tsv` next to `vocab.tsv`, `variant<TAB>canonical`) encode as
their canonical tag.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.atomic import atomic_write_text

HEADER = "tag\tcount\tindex"
OOV_TAG = "<oov>"  # never a normalised tag: normalisation removes '<' and '>'
OOV_MODES = ("drop", "bucket")
SYNONYMS_FILE = "synonyms.tsv"


@dataclass
class Vocabulary:
    tags: list[str]
    counts: list[int]
    aliases: dict[str, str] = field(default_factory=dict)  # normalised variant -> canonical tag
    index: dict[str, int] = field(init=False, repr=False)
    oov_index: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {tag: i for i, tag in enumerate(self.tags)}
        self.oov_index = self.index.get(OOV_TAG)
        for variant, canonical in self.aliases.items():
            if canonical in self.index:
                self.index.setdefault(variant, self.index[canonical])

    def __len__(self) -> int:
        return len(self.tags)

    def encode(self, normalized_tags: Iterable[str]) -> list[int]:
        """Indices of the in-vocabulary tags, in order, without repeats; OOV tags dropped or mapped to <oov>."""
        ids: dict[int, None] = {}
        for tag in normalized_tags:
            i = self.index.get(tag, self.oov_index)
            if i is not None:
                ids.setdefault(i, None)
        return list(ids)

    def save(self, path: str | Path) -> Path:
        lines = [HEADER] + [f"{t}\t{c}\t{i}" for i, (t, c) in enumerate(zip(self.tags, self.counts, strict=True))]
        if self.aliases:
            atomic_write_text(Path(path).with_name(SYNONYMS_FILE),
                              "".join(f"{v}\t{c}\n" for v, c in sorted(self.aliases.items())))
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
        aliases: dict[str, str] = {}
        synonyms = path.with_name(SYNONYMS_FILE)
        if synonyms.is_file():
            for lineno, line in enumerate(synonyms.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split("\t")
                if len(parts) != 2:
                    raise ValueError(f"{synonyms}:{lineno}: expected 'variant<TAB>canonical', got {line!r}")
                aliases[parts[0]] = parts[1]
        return cls(tags, counts, aliases)


def build_vocabulary(
    tag_counts: Mapping[str, int],
    min_count: int = 1,
    top_k: int = 0,
    oov: str = "drop",
    total: int | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Vocabulary:
    """Keep tags seen at least `min_count` times, the `top_k` most frequent if top_k > 0; ties by name.

    With `oov="bucket"` a last entry `<oov>` counts every other occurrence (`total` minus the kept ones;
    `total` defaults to the sum of `tag_counts`, pass the true total when the counts are bounded).
    """
    if oov not in OOV_MODES:
        raise ValueError(f"vocab.oov={oov!r}: choose one of {', '.join(OOV_MODES)}")
    kept = sorted(((t, c) for t, c in tag_counts.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0]))
    if top_k > 0:
        kept = kept[:top_k]
    if not kept:
        raise ValueError(f"no tag is seen {min_count} times or more: lower shards.vocab.min_count")
    tags, counts = [t for t, _ in kept], [c for _, c in kept]
    if oov == "bucket":
        tags.append(OOV_TAG)
        counts.append((sum(tag_counts.values()) if total is None else total) - sum(counts))
    return Vocabulary(tags, counts, dict(aliases or {}))


def coverage(vocab: Vocabulary, tag_counts: Counter[str], total: int | None = None) -> float:
    """Fraction of all tag occurrences that fall inside the vocabulary (the <oov> bucket is not inside)."""
    total = sum(tag_counts.values()) if total is None else total
    inside = sum(c for t, c in zip(vocab.tags, vocab.counts, strict=True) if t != OOV_TAG)
    return inside / total if total else 0.0

"""Vocabulary at scale: the bounded counter's error bound, synonyms, the OOV bucket and the statistics files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import ShardsConfig, VocabConfig
from pretrain.ingest import ingest_folder
from pretrain.tagcount import TagCounter, read_synonyms
from pretrain.tags import normalize_tags
from pretrain.vocab import OOV_TAG, Vocabulary, build_vocabulary
from tests.unit.conftest import encode_image


def zipf_stream(occurrences: int, distinct: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, distinct + 1)
    ranks = rng.choice(distinct, size=occurrences, p=weights / weights.sum())
    return [f"t{r}" for r in ranks]


def test_bounded_counter_stays_within_its_bound() -> None:
    stream = zipf_stream(60_000, 20_000)
    exact = Counter(stream)
    counter = TagCounter(max_tracked=1_000)
    peak = 0
    for start in range(0, len(stream), 500):
        counter.update(stream[start : start + 500])
        peak = max(peak, len(counter))
    assert counter.total == len(stream)
    assert counter.prunes > 0
    # every prune takes t from >= M/2 + 1 tags, so the summed decrements are at most N / (M/2 + 1)
    assert 0 < counter.max_undercount <= len(stream) / (1_000 // 2 + 1)
    assert peak <= 1_000 + 500  # the cap plus one update's distinct tags
    for tag, true in exact.items():
        est = counter.counts.get(tag, 0)
        assert true - counter.max_undercount <= est <= true, tag
        if true > counter.max_undercount:
            assert tag in counter.counts
    # the head of the distribution is ranked as the exact count ranks it
    top = [t for t, _ in exact.most_common(20)]
    assert [t for t, _ in counter.counts.most_common(20)][:5] == top[:5]


def test_exact_counter_when_unbounded() -> None:
    counter = TagCounter()
    counter.update(["a", "b", "a"])
    counter.update({"b": 2, "c": 1})
    assert counter.counts == Counter({"a": 2, "b": 3, "c": 1}) and counter.total == 6
    assert counter.max_undercount == 0


def test_synonym_file_canonicalises_counts_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "synonyms.tsv"
    path.write_text("# variant <TAB> canonical\nNYC\tNew York\nnew-york-city\tNYC\nSF\tsan francisco\n\n",
                    encoding="utf-8")
    synonyms = read_synonyms(path)
    assert synonyms == {"nyc": "new york", "new york city": "new york", "sf": "san francisco"}
    counter = TagCounter(synonyms=synonyms)
    counter.update(normalize_tags(["NYC", "New York", "#new_york_city", "SF", "beach"]))
    assert counter.counts == Counter({"new york": 3, "san francisco": 1, "beach": 1})
    vocab = build_vocabulary(counter.counts, aliases=synonyms)
    vocab.save(tmp_path / "ds" / "vocab.tsv")
    loaded = Vocabulary.load(tmp_path / "ds" / "vocab.tsv")
    assert loaded.tags == ["new york", "beach", "san francisco"]
    assert loaded.encode(normalize_tags(["nyc", "New-York-City", "sf"])) == [0, 2]


@pytest.mark.parametrize(("text", "message"), [
    ("a\tb\tc\n", r"synonyms.tsv:1: expected 'variant<TAB>canonical'"),
    ("ok\tfine\n!!!\tx\n", r"synonyms.tsv:2: expected 'variant<TAB>canonical'"),
    ("a\tb\na\tc\n", r"synonyms.tsv:2: 'a' is mapped to both 'b' and 'c'"),
    ("a\tb\nb\ta\n", r"synonym cycle a -> b -> a"),
])
def test_bad_synonym_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "synonyms.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_synonyms(path)


def test_oov_bucket_is_a_last_shared_target(tmp_path: Path) -> None:
    counts = Counter({"a": 5, "b": 3, "c": 1, "d": 1})
    vocab = build_vocabulary(counts, min_count=2, oov="bucket")
    assert vocab.tags == ["a", "b", OOV_TAG] and vocab.counts == [5, 3, 2]
    assert vocab.encode(["c", "a", "zzz"]) == [2, 0]
    vocab.save(tmp_path / "vocab.tsv")
    assert Vocabulary.load(tmp_path / "vocab.tsv").encode(["d"]) == [2]
    assert build_vocabulary(counts, min_count=2).encode(["c"]) == []  # oov=drop
    with pytest.raises(ValueError, match=r"vocab.oov='keep': choose one of drop, bucket"):
        build_vocabulary(counts, oov="keep")


def test_ingest_writes_vocab_statistics_and_the_long_tail_plot(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}.jpg").write_bytes(encode_image((i * 8, 0, 0)))
        (folder / f"{i:02d}.txt").write_text("\n".join(["common", f"mid{i % 3}", f"rare{i}"]), encoding="utf-8")
    (tmp_path / "syn.tsv").write_text("mid2\tmid1\n", encoding="utf-8")
    cfg = ShardsConfig(input=str(folder), samples_per_shard=10, heldout_fraction=0.0, subsets=[1.0],
                       vocab=VocabConfig(min_count=2, synonyms=str(tmp_path / "syn.tsv"), oov="bucket",
                                         max_tracked=40))
    manifest = ingest_folder(tmp_path / "ds", cfg)
    vocab = Vocabulary.load(tmp_path / "ds" / "vocab.tsv")
    assert vocab.tags == ["common", "mid1", "mid0", OOV_TAG]
    assert vocab.counts == [30, 20, 10, 30]  # 30 rare tags, each seen once, all in the bucket
    assert manifest["vocab"]["coverage"] == pytest.approx(60 / 90, abs=1e-6)
    assert manifest["vocab"]["synonyms"] == 1 and manifest["vocab"]["max_tracked"] == 40
    stats = json.loads((tmp_path / "ds" / "vocab_stats.json").read_text(encoding="utf-8"))
    assert stats["occurrences"] == 90 and stats["distinct_tags_counted"] == 33
    assert stats["coverage_at_k"] == {"10": pytest.approx((30 + 20 + 10 + 7) / 90, abs=1e-6)}
    assert stats["tags_seen_once"] == 30
    png = (tmp_path / "ds" / "vocab_longtail.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000

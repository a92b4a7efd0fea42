"""Label resampling q(tag) ∝ count^α: α = 0 and α = 0.5 change the per-tag sample counts as the formula says."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.loader import TaggedImageStream
from pretrain.resample import TAG_IDS_KEY, TagSampleCounts, expected_shares, resample, tag_factors
from pretrain.shards import write_shard
from pretrain.vocab import Vocabulary
from tests.unit.conftest import encode_image

# single-tag images: tag a on 800 images, b on 200, c on 50, d on 10 (a Zipf-like head and tail)
COUNTS = {"a": 800, "b": 200, "c": 50, "d": 10}
VOCAB = Vocabulary(list(COUNTS), list(COUNTS.values()))
JPEG = encode_image()


def corpus() -> list[dict]:
    samples = [{"__key__": f"{tag}{i}", "json": json.dumps({"tags": [tag]}).encode()}
               for tag, n in COUNTS.items() for i in range(n)]
    return samples + [{"__key__": "bad", "json": b"{not json"}, {"__key__": "oov", "json": b'{"tags": ["zzz"]}'}]


def emitted(alpha: float, passes: int, seed: int = 0) -> Counter[str]:
    factors = tag_factors(VOCAB.counts, alpha)
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    for _ in range(passes):
        for sample in resample(iter(corpus()), VOCAB, factors, rng):
            counts.update(VOCAB.tags[i] for i in sample.get(TAG_IDS_KEY, []))
            counts["_unusable"] += TAG_IDS_KEY not in sample
    return counts


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_per_tag_sample_counts_follow_count_to_the_alpha(alpha: float) -> None:
    passes = 20
    got = emitted(alpha, passes)
    assert got["_unusable"] == 2 * passes  # bad JSON and OOV-only samples pass once, for the decoder to count
    total_natural = sum(COUNTS.values()) * passes
    shares = expected_shares(list(COUNTS.values()), alpha)
    for tag, share in zip(COUNTS, shares, strict=True):
        expected = share * total_natural  # E[emitted(t)] = c · count(t)^α per pass
        # stochastic rounding: each emitted count is a sum of Bernoulli offsets, variance <= n/4 per tag
        sd = np.sqrt(COUNTS[tag] * passes / 4)
        assert abs(got[tag] - expected) <= 4 * sd + 1, (tag, got[tag], expected)
    if alpha == 0.0:  # uniform: every tag gets a quarter
        assert all(abs(got[t] / total_natural - 0.25) < 0.01 for t in COUNTS)
    else:  # square root: a/b = sqrt(800/200) = 2, b/c = 2, c/d = sqrt(5)
        assert got["a"] / got["b"] == pytest.approx(2.0, rel=0.03)
        assert got["b"] / got["c"] == pytest.approx(2.0, rel=0.03)
        assert got["c"] / got["d"] == pytest.approx(np.sqrt(5), rel=0.03)


def test_natural_alpha_and_expected_length() -> None:
    assert np.allclose(tag_factors(VOCAB.counts, 1.0), 1.0)
    for alpha in (0.0, 0.5, 1.0):  # the stream keeps its expected length whatever α
        f = tag_factors(VOCAB.counts, alpha)
        assert float((f * np.array(VOCAB.counts)).sum()) == pytest.approx(sum(COUNTS.values()))
    natural = emitted(1.0, 1)
    assert {t: natural[t] for t in COUNTS} == COUNTS


def _shards(tmp_path: Path) -> list[str]:
    """The same single-tag corpus (fewer images) as 4 real shards with tiny JPEGs."""
    items = [(tag, i) for tag, n in {"a": 160, "b": 40, "c": 10, "d": 4}.items() for i in range(n)]
    random.Random(1).shuffle(items)
    urls = []
    for s in range(4):
        chunk = items[s::4]
        samples = [{"__key__": f"{tag}{i}", "jpg": JPEG, "json": {"tags": [tag]}} for tag, i in chunk]
        urls.append(str(tmp_path / f"train-{s:06d}.tar"))
        write_shard(Path(urls[-1]), samples)
    return urls


def _take(stream: TaggedImageStream, batches: int) -> list:
    return list(itertools.islice(iter(stream), batches))


def test_loader_resamples_deterministically_and_counts_tags(tmp_path: Path, monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    urls = _shards(tmp_path)
    vocab = Vocabulary(["a", "b", "c", "d"], [160, 40, 10, 4])

    def run(alpha: float, batches: int = 60, skip: int = 0) -> tuple[Counter[str], list]:
        stream = TaggedImageStream(urls, vocab, 16, 8, train=True, seed=3, shuffle_buffer=50, resample_alpha=alpha)
        stream.set_position(0, skip)
        out = _take(stream, batches)
        counter = TagSampleCounts(len(vocab))
        for batch in out:
            counter.update(batch.tag_ids)
        return Counter(dict(zip(vocab.tags, counter.counts.tolist(), strict=True))), out

    natural, _ = run(1.0)
    uniform, batches = run(0.0)
    total = sum(natural.values())
    assert natural["a"] / total > 0.6  # the head dominates the natural stream
    assert all(abs(uniform[t] / total - 0.25) < 0.06 for t in "abcd"), uniform  # 960 samples: ±6 points
    # exact resume: the stream after 10 batches is the tail of the full stream, resampling included
    _, resumed = run(0.0, batches=50, skip=10)
    for a, b in zip(batches[10:], resumed, strict=True):
        assert a.keys == b.keys and torch.equal(a.images, b.images)
    row = TagSampleCounts(4)
    row.update(torch.tensor([[0, 1], [1, -1]]))
    assert row.log_row(7, vocab) == {"step": 7, "tag_samples": {"a": 1, "b": 2, "c": 0, "d": 0}}

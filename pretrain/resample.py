"""Label resampling, q(tag) ∝ count(tag)^α, as Mahajan et al. 2018 compared (α = 1 natural, ½ square root, 0
uniform), and the per-tag counts of what training actually saw.

The loader replicates or drops each training sample before its shuffle buffer: a sample with in-vocabulary
tags T is emitted k times, k = floor(w) or floor(w) + 1 with E[k] = w (stochastic rounding), where

    w = mean over t in T of  c · count(t)^(α-1),     c = Σ_t count(t) / Σ_t count(t)^α.

For single-tag images the expected number of emitted samples of tag t is count(t) · c · count(t)^(α-1) =
c · count(t)^α, i.e. q(t) ∝ count(t)^α exactly, and the expected stream length stays that of α = 1; for
multi-tag images q follows the formula approximately (a sample's weight is the mean over its tags). The
draws come from a generator seeded by (seed, epoch, slot), so a resumed run rebuilds the same stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.atomic import atomic_write_text
from pretrain.tags import normalize_tags, raw_sample_tags
from pretrain.vocab import Vocabulary

TAG_IDS_KEY = "__tag_ids__"  # the resampling stage leaves the encoded tags in the sample for the decoder
MAX_LOGGED_TAGS = 10_000  # per-tag rows in metrics.jsonl hold the most frequent tags up to this many


def tag_factors(counts: list[int] | np.ndarray, alpha: float) -> np.ndarray:
    """c · count^(α-1) per tag (zero-count tags get the factor of a count of 1)."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return n ** (alpha - 1.0) * (n.sum() / (n**alpha).sum())


def expected_shares(counts: list[int] | np.ndarray, alpha: float) -> np.ndarray:
    """q(tag) = count^α / Σ count^α: the share of samples each tag should get."""
    q = np.maximum(np.asarray(counts, dtype=np.float64), 1.0) ** alpha
    return q / q.sum()


def resample(samples: Iterator[dict[str, Any]], vocab: Vocabulary, factors: np.ndarray,
             rng: random.Random) -> Iterator[dict[str, Any]]:
    """Emit each sample floor(w) or floor(w) + 1 times (mean w); unusable samples pass once for the decoder
    to count."""
    for sample in samples:
        raw = raw_sample_tags(sample)
        ids = vocab.encode(normalize_tags(raw)) if raw is not None else []
        if not ids:
            yield sample
            continue
        weight = float(factors[ids].mean())
        copies = int(weight) + (rng.random() < weight - int(weight))
        tagged = {**sample, TAG_IDS_KEY: ids}
        for _ in range(copies):
            yield tagged


class TagSampleCounts:
    """How many training samples carried each tag (in-vocabulary ids of the batches), checkpointed with the run."""

    def __init__(self, vocab_size: int) -> None:
        self.counts = torch.zeros(vocab_size, dtype=torch.int64)

    @classmethod
    def summed(cls, per_rank: list[torch.Tensor]) -> TagSampleCounts:
        """The counts of all ranks of a DDP run together."""
        total = cls(len(per_rank[0]))
        total.counts = torch.stack(per_rank).sum(dim=0)
        return total

    def update(self, tag_ids: torch.Tensor) -> None:
        ids = tag_ids[tag_ids >= 0]
        # once per batch: touch only the batch's ids (a bincount of length V would cost O(V) per step)
        self.counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.int64))

    def log_row(self, step: int, vocab: Vocabulary) -> dict[str, Any]:
        """A metrics row: per-tag sample counts of the MAX_LOGGED_TAGS most frequent tags (vocab order)."""
        top = min(len(vocab), MAX_LOGGED_TAGS)
        return {"step": step, "tag_samples": dict(zip(vocab.tags[:top], self.counts[:top].tolist(), strict=True))}

    def write_tsv(self, path: Path, vocab: Vocabulary) -> Path:
        """Every tag: its count in the data and how many training samples carried it."""
        rows = (f"{t}\t{c}\t{s}\n" for t, c, s in zip(vocab.tags, vocab.counts, self.counts.tolist(), strict=True))
        return atomic_write_text(path, "tag\tcount\tsampled\n" + "".join(rows))


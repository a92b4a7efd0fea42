"""The word-embedding head: trunk features projected into the tag-vector space (Attalos im2vec, DeViSE).

An image's embedding e = W f + b (f: pooled trunk features) scores tag t by e . v_t, v_t its unit tag vector
(pretrain.tagvectors). Training draws S negatives per step from a proposal over tags (by default frequency^0.75,
word2vec's), shared by the step's images; a negative that is one of the image's own tags is masked out, as are
tags held out for zero-shot evaluation, which are never positives either. Losses:

- negative_sampling (im2vec): -log sigma(e . v_pos) averaged over the image's tags, plus -log sigma(-e . v_neg)
  averaged over its negatives;
- hinge (DeViSE's hinge rank loss): max(0, margin - e . v_pos + e . v_neg) averaged over (tag, negative) pairs.

The tag vectors sit in a sparse embedding: frozen by default, or fine-tuned row by row with the sampled-softmax
head's plain-SGD sparse optimiser (`head.finetune_vectors`). Scoring all V tags (`forward`) is one matrix
product, so held-out tags are predicted through their vectors like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.atomic import atomic_write
from pretrain.sampling import TagSampler

LOSSES = ("negative_sampling", "hinge")
EXPORT_NAME = "embedding.pt"  # projection, tag vectors and held-out tags, next to trunk.pt


class EmbeddingHead(nn.Module):
    def __init__(self, feature_dim: int, vectors: torch.Tensor, loss: str = "negative_sampling", margin: float = 0.1,
                 num_sampled: int = 64, proposal: str = "frequency", counts: Sequence[int] | None = None,
                 alpha: float = 0.75, finetune_vectors: bool = False, heldout: Sequence[int] = (),
                 seed: int = 0) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"head.loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if num_sampled < 1:
            raise ValueError(f"head.num_sampled={num_sampled}: draw at least one negative per batch")
        num_tags, dim = vectors.shape
        self.num_tags, self.loss_name, self.margin, self.num_sampled = num_tags, loss, margin, num_sampled
        self.projection = nn.Linear(feature_dim, dim)
        self.vectors = nn.Embedding(num_tags, dim, sparse=True)
        with torch.no_grad():
            self.vectors.weight.copy_(F.normalize(vectors.float(), dim=1))
        self.vectors.weight.requires_grad_(finetune_vectors)
        trainable = torch.ones(num_tags, dtype=torch.bool)
        trainable[torch.as_tensor(list(heldout), dtype=torch.int64)] = False
        self.register_buffer("trainable", trainable)  # False: a held-out (zero-shot) tag
        self.sampler = TagSampler(proposal, num_tags, counts, alpha, seed)
        self.negatives: torch.Tensor | None = None

    @property
    def heldout(self) -> list[int]:
        return torch.nonzero(~self.trainable).flatten().tolist()

    def draw_negatives(self) -> None:
        """The negatives of the next optimiser step (the same on every rank: same seed, same calls)."""
        self.negatives = self.sampler.sample(self.num_sampled)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Images' points in the tag-vector space (N x D), before any normalisation."""
        return self.projection(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of all V tags (N x V): e . v_t."""
        return self.embed(features).float() @ self.vectors.weight.float().T

    def training_loss(self, features: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        batch, width = tag_ids.shape
        true_ids = tag_ids.clamp_min(0)
        positive = (tag_ids >= 0) & self.trainable[true_ids]
        negatives = self.negatives if self.negatives is not None else self.sampler.sample(self.num_sampled)
        negatives = negatives.to(tag_ids.device)
        rows = self.vectors(torch.cat([true_ids.flatten(), negatives]))  # one lookup: sparse rows when fine-tuned
        embedded = self.embed(features).float()
        split = batch * width
        pos_scores = torch.einsum("nd,nkd->nk", embedded, rows[:split].view(batch, width, -1).float())
        neg_scores = embedded @ rows[split:].float().T  # N x S
        own = (tag_ids.unsqueeze(2) == negatives.view(1, 1, -1)).any(dim=1)  # a negative that is an own tag
        negative = ~own & self.trainable[negatives].unsqueeze(0)
        has_pos = positive.any(dim=1)
        if self.loss_name == "negative_sampling":
            pos_term = _masked_mean(-F.logsigmoid(pos_scores), positive)
            neg_term = _masked_mean(-F.logsigmoid(-neg_scores), negative)
            per_image = pos_term + neg_term
        else:
            pairs = positive.unsqueeze(2) & negative.unsqueeze(1)  # N x K x S
            violation = (self.margin - pos_scores.unsqueeze(2) + neg_scores.unsqueeze(1)).clamp_min(0)
            per_image = (violation * pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp_min(1)
        # an image whose tags are all held out teaches nothing here (it still counts in the batch average)
        return (per_image * has_pos).sum() / batch

    def export(self, run_dir: Path, tags: Sequence[str]) -> Path:
        """`embedding.pt`: what search and zero-shot need besides the trunk."""
        state = {"projection.weight": self.projection.weight.detach().cpu().clone(),
                 "projection.bias": self.projection.bias.detach().cpu().clone(),
                 "vectors": self.vectors.weight.detach().cpu().clone(), "tags": list(tags),
                 "heldout": self.heldout}
        return atomic_write(Path(run_dir) / EXPORT_NAME, lambda handle: torch.save(state, handle))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)

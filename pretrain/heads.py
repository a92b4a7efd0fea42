"""Heads that turn trunk features into tag scores, each with the loss of one paper's recipe.

- sigmoid: one binary classifier per tag, cross-entropy against multi-hot targets (Sun et al. 2017, JFT);
- softmax: one distribution over tags, cross-entropy against 1/k on each of an image's k tags
  (Mahajan et al. 2018, Instagram hashtags);
- sampled_softmax: the same loss estimated on S sampled negatives, for millions of tags (pretrain.sampled_softmax);
- embedding: a projection into a tag-vector space with negative sampling or DeViSE's hinge rank loss, which
  scores tags held out of training too (pretrain.embedding_head).
Targets arrive as padded index rows (N x K, -1 = none) so that no dense N x V target tensor crosses the loader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import HeadConfig
from pretrain.embedding_head import EmbeddingHead
from pretrain.sampled_softmax import SampledSoftmaxHead


def multi_hot(tag_ids: torch.Tensor, num_tags: int) -> torch.Tensor:
    """N x K padded indices -> N x V float {0, 1}."""
    target = torch.zeros(tag_ids.shape[0], num_tags + 1, device=tag_ids.device)
    target.scatter_(1, torch.where(tag_ids < 0, num_tags, tag_ids), 1.0)
    return target[:, :num_tags]


class LinearHead(nn.Module):
    """A linear layer over pooled features; exported as torchvision's `fc`."""

    def __init__(self, feature_dim: int, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.fc = nn.Linear(feature_dim, num_tags)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def loss(self, logits: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, features: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        """The loss of a training step from pooled features (a sampled head never forms all V logits)."""
        return self.loss(self(features), tag_ids)


class SigmoidHead(LinearHead):
    def __init__(self, feature_dim: int, num_tags: int) -> None:
        super().__init__(feature_dim, num_tags)
        # start every tag at the prior of a rare tag, so the first steps do not spend themselves on biases
        nn.init.constant_(self.fc.bias, -math.log(max(num_tags - 1, 1)))

    def loss(self, logits: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy summed over tags, averaged over images."""
        target = multi_hot(tag_ids, self.num_tags)
        return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / logits.shape[0]


class SoftmaxHead(LinearHead):
    def loss(self, logits: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the uniform distribution over each image's tags."""
        target = multi_hot(tag_ids, self.num_tags)
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1.0)
        return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


HEADS: dict[str, type[nn.Module]] = {"sigmoid": SigmoidHead, "softmax": SoftmaxHead,
                                     "sampled_softmax": SampledSoftmaxHead, "embedding": EmbeddingHead}


def build_head(cfg: HeadConfig, feature_dim: int, num_tags: int, tag_counts: Sequence[int] | None = None,
               seed: int = 0, tag_vectors: torch.Tensor | None = None, heldout: Sequence[int] = ()) -> nn.Module:
    """The head `cfg` names; `tag_counts` (vocab.tsv's counts) feed the frequency proposals of the sampled heads;
    the embedding head needs its `tag_vectors` (V x D, pretrain.tagvectors) and the `heldout` (zero-shot) tags."""
    if cfg.name not in HEADS:
        raise ValueError(f"head.name={cfg.name!r}: choose one of {sorted(HEADS)}")
    if cfg.name == "embedding":
        if tag_vectors is None or len(tag_vectors) != num_tags:
            raise ValueError(f"head.name=embedding needs one tag vector per tag ({num_tags}); got "
                             f"{None if tag_vectors is None else len(tag_vectors)}")
        return EmbeddingHead(feature_dim, tag_vectors, cfg.loss, cfg.margin, cfg.num_sampled, cfg.proposal,
                             tag_counts, cfg.alpha, cfg.finetune_vectors, heldout, seed)
    if cfg.name == "sampled_softmax":
        return SampledSoftmaxHead(feature_dim, num_tags, cfg.num_sampled, cfg.proposal, tag_counts, cfg.alpha,
                                  seed, cfg.eval_chunk, cfg.table_dtype)
    return HEADS[cfg.name](feature_dim, num_tags)

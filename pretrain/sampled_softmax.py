"""Sampled softmax over millions of tags (Jean et al. 2015; Joulin et al. 2016), with a full-softmax evaluation path.

Training: per batch, S negatives are drawn from a proposal q (pretrain.sampling); the softmax runs over each
image's own tags plus the S negatives, every logit corrected by -log(S * q), negatives that are one of the
image's tags (accidental hits) masked out, targets 1/k over the k true tags. The head's weights are sparse
embeddings (`nn.Embedding(sparse=True)`): a step touches only the rows of the batch's tags and negatives, so the
gradient, the update (plain SGD on those rows, pretrain.optim.build_sparse_optimizer) and the optimiser state
(none) do not grow with V. Evaluation: the exact softmax over all V tags, computed in chunks of tags so that
V = 10M never materialises an N x V matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.sampling import TagSampler

TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MASKED = -1.0e9  # a logit that takes no probability mass (finite, so a fully masked row gives no NaN)


class SampledSoftmaxHead(nn.Module):
    def __init__(self, feature_dim: int, num_tags: int, num_sampled: int = 1024, proposal: str = "log_uniform",
                 counts: Sequence[int] | None = None, alpha: float = 0.75, seed: int = 0,
                 eval_chunk: int = 65536, table_dtype: str = "float32") -> None:
        super().__init__()
        if num_sampled < 1:
            raise ValueError(f"head.num_sampled={num_sampled}: draw at least one negative per batch")
        if table_dtype not in TABLE_DTYPES:
            raise ValueError(f"head.table_dtype={table_dtype!r}: choose one of {', '.join(TABLE_DTYPES)}")
        self.num_tags, self.num_sampled, self.eval_chunk = num_tags, num_sampled, eval_chunk
        self.sampler = TagSampler(proposal, num_tags, counts, alpha, seed)
        # the table may be bf16 (pretrain.sparse_sgd rounds its updates stochastically); the biases, V numbers,
        # stay fp32
        self.weight = nn.Embedding(num_tags, feature_dim, sparse=True, dtype=TABLE_DTYPES[table_dtype])
        self.bias = nn.Embedding(num_tags, 1, sparse=True)
        # nn.Linear's initial scale, so that the head starts as the full-softmax head does
        bound = 1.0 / math.sqrt(feature_dim)
        nn.init.uniform_(self.weight.weight, -bound, bound)
        nn.init.zeros_(self.bias.weight)
        self.negatives: torch.Tensor | None = None  # the current step's draw, shared by its micro-batches and ranks

    def draw_negatives(self) -> None:
        """Draw the negatives of the next optimiser step (every rank draws the same: same seed, same calls)."""
        self.negatives = self.sampler.sample(self.num_sampled)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """All V logits (N x V): held-out scoring at a vocabulary size where N x V fits."""
        return F.linear(features, self.weight.weight.to(features.dtype), self.bias.weight.squeeze(1))

    def training_loss(self, features: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        """Sampled-softmax cross-entropy against 1/k on each image's k tags, averaged over images."""
        batch, width = tag_ids.shape
        valid = tag_ids >= 0
        true_ids = tag_ids.clamp_min(0)
        # without draw_negatives() (a bare call, e.g. a benchmark) every call draws its own
        negatives = self.negatives if self.negatives is not None else self.sampler.sample(self.num_sampled)
        negatives = negatives.to(tag_ids.device)
        ids = torch.cat([true_ids.flatten(), negatives])
        rows, biases = self.weight(ids), self.bias(ids).squeeze(1)  # one lookup: sparse gradient on these rows
        split = batch * width
        true_rows, true_bias = rows[:split].view(batch, width, -1), biases[:split].view(batch, width)
        true_logits = torch.einsum("nd,nkd->nk", features, true_rows.to(features.dtype)).float() + true_bias
        sampled_logits = (features @ rows[split:].to(features.dtype).T).float() + biases[split:]
        true_logits = true_logits - self.sampler.log_expected_count(true_ids, self.num_sampled)
        sampled_logits = sampled_logits - self.sampler.log_expected_count(negatives, self.num_sampled)
        hits = (tag_ids.unsqueeze(2) == negatives.view(1, 1, -1)).any(dim=1)  # N x S: a negative that is a true tag
        logits = torch.cat([true_logits.masked_fill(~valid, MASKED), sampled_logits.masked_fill(hits, MASKED)], 1)
        log_p = F.log_softmax(logits, dim=1)[:, :width].masked_fill(~valid, 0.0)
        target = valid.float() / valid.sum(dim=1, keepdim=True).clamp_min(1)
        return -(target * log_p).sum(dim=1).mean()

    def _chunks(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.eval_chunk, self.num_tags)) for start in range(0, self.num_tags,
                                                                                          self.eval_chunk)]

    def _chunk_logits(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return F.linear(features.float(), self.weight.weight[start:stop].float(), self.bias.weight[start:stop, 0])

    @torch.no_grad()
    def full_log_partition(self, features: torch.Tensor) -> torch.Tensor:
        """log sum_v exp(logit_v) over all V tags (N), one chunk of tags at a time."""
        parts = [torch.logsumexp(self._chunk_logits(features, a, b), dim=1) for a, b in self._chunks()]
        return torch.logsumexp(torch.stack(parts, dim=1), dim=1)

    @torch.no_grad()
    def full_loss(self, features: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
        """The exact full-softmax loss (1/k targets) the sampled loss estimates, in O(N x chunk) memory."""
        valid = tag_ids >= 0
        true_ids = tag_ids.clamp_min(0)
        true_logits = torch.einsum("nd,nkd->nk", features.float(), self.weight.weight[true_ids].float())
        true_logits = true_logits + self.bias.weight[true_ids, 0]
        log_p = (true_logits - self.full_log_partition(features).unsqueeze(1)).masked_fill(~valid, 0.0)
        target = valid.float() / valid.sum(dim=1, keepdim=True).clamp_min(1)
        return -(target * log_p).sum(dim=1).mean()

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, tag ids) of the k best tags over all V, N x k each, merging chunk by chunk."""
        best_scores = torch.full((features.shape[0], 0), -math.inf, device=features.device)
        best_ids = torch.zeros((features.shape[0], 0), dtype=torch.int64, device=features.device)
        for start, stop in self._chunks():
            scores, ids = self._chunk_logits(features, start, stop).topk(min(k, stop - start), dim=1)
            merged_scores = torch.cat([best_scores, scores], 1)
            merged_ids = torch.cat([best_ids, ids + start], 1)
            best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_ids = merged_ids.gather(1, order)
        return best_scores, best_ids

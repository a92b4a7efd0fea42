"""Proposal distributions over tags for sampled softmax: which negatives a batch sees, and how likely each was.

- uniform: q(i) = 1/V;
- log_uniform: q(i) = log((i + 2) / (i + 1)) / log(V + 1), the Zipfian proposal of word2vec and TensorFlow's
  `log_uniform_candidate_sampler`; right when tag ids are sorted by decreasing frequency, as vocab.tsv is;
- frequency: q(i) proportional to count(i)^alpha (alpha = 0.75 in word2vec), from vocab.tsv's counts.

Negatives are drawn with replacement, so a tag's expected count among S draws is S * q(i): the log-Q correction
subtracts log(S * q(i)) from its logit (Jean et al. 2015). Draws cost O(S log V) whatever V is: the CDF of the
frequency proposal is computed once. The sampler owns its random generator, whose state goes into checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PROPOSALS = ("uniform", "log_uniform", "frequency")


class TagSampler:
    """Draws S negative tag ids per batch from a proposal q over V tags and gives log(S * q) of any id."""

    def __init__(self, proposal: str, num_tags: int, counts: Sequence[int] | None = None, alpha: float = 0.75,
                 seed: int = 0) -> None:
        if proposal not in PROPOSALS:
            raise ValueError(f"head.proposal={proposal!r}: choose one of {', '.join(PROPOSALS)}")
        if num_tags < 1:
            raise ValueError(f"sampled softmax needs at least one tag, got {num_tags}")
        self.proposal, self.num_tags = proposal, num_tags
        self.generator = torch.Generator().manual_seed(seed)
        self.log_q_table: torch.Tensor | None = None  # float32 log q per tag (frequency proposal only)
        self.cdf: torch.Tensor | None = None
        if proposal == "frequency":
            if counts is None or len(counts) != num_tags:
                raise ValueError(f"head.proposal=frequency needs one count per tag ({num_tags}); "
                                 f"got {None if counts is None else len(counts)} (vocab.tsv's count column)")
            weights = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1.0).pow(alpha)
            total = weights.sum()
            self.log_q_table = (weights / total).log().float()
            self.cdf = torch.cumsum(weights, 0) / total
            self.cdf[-1] = 1.0  # searchsorted must never run past the last tag

    def sample(self, num: int) -> torch.Tensor:
        """`num` tag ids (int64) drawn with replacement from q."""
        if self.proposal == "uniform":
            return torch.randint(0, self.num_tags, (num,), generator=self.generator)
        u = torch.rand(num, generator=self.generator, dtype=torch.float64)
        if self.proposal == "log_uniform":
            ids = torch.floor(torch.exp(u * math.log(self.num_tags + 1))).long() - 1
        else:
            ids = torch.searchsorted(self.cdf, u, right=True)
        return ids.clamp_(0, self.num_tags - 1)

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """log q(id) for a tensor of tag ids (float32, same shape, on the ids' device)."""
        if self.proposal == "uniform":
            return torch.full(ids.shape, -math.log(self.num_tags), device=ids.device)
        if self.proposal == "log_uniform":
            as_float = ids.double()
            return (torch.log((as_float + 2) / (as_float + 1)) / math.log(self.num_tags + 1)).log().float()
        assert self.log_q_table is not None
        self.log_q_table = self.log_q_table.to(ids.device)
        return self.log_q_table[ids]

    def log_expected_count(self, ids: torch.Tensor, num_sampled: int) -> torch.Tensor:
        """log(S * q(id)): the log-Q correction of a logit when S negatives are drawn with replacement."""
        return self.log_q(ids) + math.log(num_sampled)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

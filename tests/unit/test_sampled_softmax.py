"""Sampled softmax: proposals and their log-Q, the loss by hand, accidental hits, sparse rows, chunked evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import HeadConfig, OptimConfig
from pretrain.heads import SoftmaxHead, build_head
from pretrain.optim import build_optimizer, build_sparse_optimizer, parameter_groups, scaled_lr
from pretrain.sampled_softmax import SampledSoftmaxHead
from pretrain.sampling import TagSampler


@pytest.mark.parametrize("proposal", ["uniform", "log_uniform", "frequency"])
def test_draws_follow_the_proposal(proposal: str) -> None:
    counts = [50, 20, 10, 10, 5, 3, 1, 1]
    sampler = TagSampler(proposal, 8, counts, alpha=0.5, seed=0)
    draws = sampler.sample(200_000)
    assert draws.dtype == torch.int64 and int(draws.min()) >= 0 and int(draws.max()) <= 7
    observed = torch.bincount(draws, minlength=8).double() / len(draws)
    expected = sampler.log_q(torch.arange(8)).double().exp()
    assert float(expected.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(observed, expected, atol=4e-3)


def test_proposal_probabilities_by_formula() -> None:
    ids = torch.arange(4)
    assert torch.allclose(TagSampler("uniform", 4).log_q(ids), torch.full((4,), -math.log(4)))
    zipf = [math.log((i + 2) / (i + 1)) / math.log(5) for i in range(4)]
    assert torch.allclose(TagSampler("log_uniform", 4).log_q(ids).exp(), torch.tensor(zipf))
    freq = torch.tensor([9.0, 4.0, 1.0, 1.0]).sqrt()
    sampler = TagSampler("frequency", 4, [9, 4, 1, 1], alpha=0.5)
    assert torch.allclose(sampler.log_q(ids).exp(), freq / freq.sum())
    assert torch.allclose(sampler.log_expected_count(ids, 10), (10 * freq / freq.sum()).log())


def test_sampler_state_round_trip_and_errors() -> None:
    sampler = TagSampler("log_uniform", 1000, seed=4)
    state = {k: v.clone() for k, v in sampler.state_dict().items()}
    first = sampler.sample(16)
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample(16), first)
    with pytest.raises(ValueError, match=r"head\.proposal='zipf'"):
        TagSampler("zipf", 10)
    with pytest.raises(ValueError, match=r"frequency needs one count per tag \(10\); got 3"):
        TagSampler("frequency", 10, [1, 2, 3])


def _head(num_tags: int = 6, num_sampled: int = 3) -> SampledSoftmaxHead:
    head = SampledSoftmaxHead(4, num_tags, num_sampled, "uniform", seed=0)
    torch.manual_seed(0)
    torch.nn.init.normal_(head.weight.weight)
    torch.nn.init.normal_(head.bias.weight)
    return head


def test_loss_by_hand_with_log_q_and_an_accidental_hit() -> None:
    head = _head()
    head.negatives = torch.tensor([1, 4, 5])
    features = torch.randn(2, 4)
    tag_ids = torch.tensor([[0, 4], [2, -1]])  # image 0 has tag 4 among the negatives: an accidental hit
    w, b = head.weight.weight.detach(), head.bias.weight.detach()[:, 0]
    log_sq = math.log(3 / 6)  # S * q with q uniform over 6 tags

    def logit(i: int, v: int) -> float:
        return float(features[i] @ w[v] + b[v]) - log_sq

    row0 = [logit(0, 0), logit(0, 4), logit(0, 1), logit(0, 5)]  # true 0, 4; negatives 1, 5 (4 is masked)
    row1 = [logit(1, 2), logit(1, 1), logit(1, 4), logit(1, 5)]
    lse0, lse1 = math.log(sum(map(math.exp, row0))), math.log(sum(map(math.exp, row1)))
    expected = (-0.5 * ((row0[0] - lse0) + (row0[1] - lse0)) - (row1[0] - lse1)) / 2
    assert head.training_loss(features, tag_ids).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_touches_only_the_batch_rows() -> None:
    head = _head(num_tags=1000, num_sampled=8)
    head.draw_negatives()
    head.training_loss(torch.randn(3, 4), torch.tensor([[7, -1], [900, 8], [7, 9]])).backward()
    grad = head.weight.weight.grad
    assert grad.is_sparse
    grad = grad.coalesce()
    assert grad.indices().shape[1] <= 6 + 8  # the batch's tag slots and the negatives, not V rows
    # padding (-1) reads row 0 but gives it a zero gradient
    touched = set(grad.indices()[0][grad.values().abs().sum(1) > 0].tolist())
    assert touched == {7, 8, 9, 900} | set(head.negatives.tolist())


def test_with_every_tag_sampled_the_gradient_points_like_the_full_softmax() -> None:
    # q uniform and all V tags drawn: the sampled loss is the full one up to masking; gradients align
    torch.manual_seed(1)
    sampled = SampledSoftmaxHead(8, 20, num_sampled=4000, proposal="uniform")
    full = SoftmaxHead(8, 20)
    full.fc.weight.data.copy_(sampled.weight.weight.data)
    full.fc.bias.data.zero_()
    features, tag_ids = torch.randn(5, 8), torch.tensor([[0, 3], [5, -1], [19, 2], [7, 8], [1, -1]])
    sampled.training_loss(features, tag_ids).backward()
    full.loss(full(features), tag_ids).backward()
    dense = sampled.weight.weight.grad.to_dense()
    cosine = torch.nn.functional.cosine_similarity(dense.flatten(), full.fc.weight.grad.flatten(), dim=0)
    assert cosine.item() > 0.98
    assert sampled.full_loss(features, tag_ids).item() == pytest.approx(full.loss(full(features), tag_ids).item(),
                                                                         rel=1e-5)


def test_chunked_evaluation_equals_the_dense_one() -> None:
    head = SampledSoftmaxHead(6, 23, eval_chunk=5)  # 5 chunks, the last one short
    features = torch.randn(4, 6)
    logits = head(features)
    assert logits.shape == (4, 23)
    assert torch.allclose(head.full_log_partition(features), torch.logsumexp(logits, 1), atol=1e-5)
    scores, ids = head.topk(features, k=3)
    expected_scores, expected_ids = logits.topk(3, dim=1)
    assert torch.equal(ids, expected_ids)
    assert torch.allclose(scores, expected_scores, atol=1e-6)


def test_sparse_rows_get_their_own_stateless_sgd() -> None:
    cfg = OptimConfig(lr=0.1, momentum=0.9, reference_batch=256)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), build_head(HeadConfig("sampled_softmax"), 4, 50))
    dense_params = {id(p) for g in parameter_groups(model, 1e-4) for p in g["params"]}
    assert dense_params == {id(p) for p in model[0].parameters()}
    dense = build_optimizer(model, cfg, global_batch=512)
    sparse = build_sparse_optimizer(model, cfg, global_batch=512)
    assert dense.param_groups[0]["lr"] == pytest.approx(0.2)  # linear scaling: twice the reference batch
    assert sparse is not None and sparse.param_groups[0]["lr"] == pytest.approx(2.0)  # lr / (1 - momentum), x2
    assert set(sparse.param_groups[0]) == {"params", "lr"}  # no momentum, no weight decay: no per-row state
    assert build_sparse_optimizer(torch.nn.Linear(2, 2), cfg) is None
    assert scaled_lr(0.1, 1024, 0) == 0.1


def test_bad_head_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"head\.num_sampled=0"):
        build_head(HeadConfig("sampled_softmax", num_sampled=0), 4, 10)
    with pytest.raises(ValueError, match=r"head\.proposal='zipf'"):
        build_head(HeadConfig("sampled_softmax", proposal="zipf"), 4, 10)
    with pytest.raises(ValueError, match=r"head\.table_dtype='float16'"):
        build_head(HeadConfig("sampled_softmax", table_dtype="float16"), 4, 10)

"""Heads and their losses, held-out metrics, the optimiser's groups and schedule, and the ResNet trunk's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.config import HeadConfig, OptimConfig
from pretrain.heads import SigmoidHead, SoftmaxHead, build_head, multi_hot
from pretrain.metrics import average_precision, mean_average_precision, precision_at_1
from pretrain.models import ResNetTrunk
from pretrain.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups

# -------------------------------------------------------------------------------------------------------- heads


def test_multi_hot() -> None:
    tag_ids = torch.tensor([[0, 2, -1], [1, -1, -1], [-1, -1, -1], [3, 3, 0]])
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.float32)
    out = multi_hot(tag_ids, 4)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert torch.equal(multi_hot(torch.empty(0, 1, dtype=torch.int64), 4), torch.zeros(0, 4))


LOGITS = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
TAG_IDS = torch.tensor([[0, 2], [1, -1]])  # targets [[1, 0, 1], [0, 1, 0]]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_loss_by_hand() -> None:
    # BCE with logits: -log(sigmoid(x)) = softplus(-x) for a positive, -log(1 - sigmoid(x)) = softplus(x) else
    row0 = _softplus(-1.0) + _softplus(-2.0) + _softplus(-0.5)
    row1 = _softplus(0.0) + _softplus(-3.0) + _softplus(-1.0)
    expected = (row0 + row1) / 2  # summed over tags, averaged over images
    loss = SigmoidHead(8, 3).loss(LOGITS, TAG_IDS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.98463145, rel=1e-6)


def _log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(v) for v in row))
    return [v - log_z for v in row]


def test_softmax_loss_by_hand() -> None:
    lp0, lp1 = _log_softmax([1.0, -2.0, 0.5]), _log_softmax([0.0, 3.0, -1.0])
    expected = (-(0.5 * lp0[0] + 0.5 * lp0[2]) + -lp1[1]) / 2  # 1/k on each of an image's k tags
    loss = SoftmaxHead(8, 3).loss(LOGITS, TAG_IDS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.41024040, rel=1e-6)


def test_softmax_loss_of_an_image_without_tags_is_zero_but_counts_in_the_mean() -> None:
    lp0 = _log_softmax([1.0, -2.0, 0.5])
    loss = SoftmaxHead(8, 3).loss(LOGITS, torch.tensor([[0, 2], [-1, -1]]))
    assert loss.item() == pytest.approx(-(0.5 * lp0[0] + 0.5 * lp0[2]) / 2, rel=1e-6)


def test_losses_take_low_precision_logits_in_float32() -> None:
    for head in (SigmoidHead(8, 3), SoftmaxHead(8, 3)):
        loss = head.loss(LOGITS.to(torch.bfloat16), TAG_IDS)
        assert loss.dtype == torch.float32


def test_sigmoid_bias_starts_at_the_prior_of_a_rare_tag() -> None:
    assert torch.allclose(SigmoidHead(4, 11).fc.bias, torch.full((11,), -math.log(10)))
    assert torch.equal(SigmoidHead(4, 1).fc.bias, torch.zeros(1))


def test_build_head() -> None:
    assert type(build_head(HeadConfig("sigmoid"), 16, 5)) is SigmoidHead
    head = build_head(HeadConfig("softmax"), 16, 5)
    assert type(head) is SoftmaxHead
    assert (head.fc.in_features, head.fc.out_features, head.num_tags) == (16, 5, 5)
    assert head(torch.zeros(2, 16)).shape == (2, 5)
    choices = r"\['embedding', 'sampled_softmax', 'sigmoid', 'softmax'\]"
    with pytest.raises(ValueError, match=r"head\.name='cosine': choose one of " + choices):
        build_head(HeadConfig("cosine"), 16, 5)


# ------------------------------------------------------------------------------------------------------ metrics


def test_precision_at_1() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    targets = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=bool)
    assert precision_at_1(scores, targets) == pytest.approx(2 / 3)
    assert precision_at_1(scores, np.ones_like(targets)) == 1.0
    assert precision_at_1(np.array([[0.5, 0.5]]), np.array([[0, 1]], dtype=bool)) == 0.0  # a tie goes to the first
    assert math.isnan(precision_at_1(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool)))


def test_average_precision_perfect_ranking() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1, 0.05]), np.array([1, 1, 0, 0])) == 1.0
    assert average_precision(np.array([0.1, 0.7, 0.2]), np.array([0, 1, 0])) == 1.0


def test_average_precision_known_ranking() -> None:
    # ranked: +, -, +, -, + -> precisions at the hits 1/1, 2/3, 3/5
    scores = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    positives = np.array([1, 0, 1, 0, 1])[::-1].copy()
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision(scores, positives) == pytest.approx(34 / 45)
    # the worst ranking of 1 positive among 4
    assert average_precision(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 0, 1])) == pytest.approx(1 / 4)


def test_average_precision_ties_keep_the_given_order_and_no_positive_is_nan() -> None:
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(1 / 2)
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 1.0
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_mean_average_precision_skips_tags_without_positives() -> None:
    scores = np.stack([
        np.array([0.9, 0.8, 0.1, 0.05, 0.0]),  # tag 0: perfect, AP 1
        np.array([0.9, 0.8, 0.7, 0.6, 0.5]),  # tag 1: +, -, +, -, +: AP 34/45
        np.array([0.1, 0.2, 0.3, 0.4, 0.5]),  # tag 2: no positive image, left out
    ], axis=1)
    targets = np.stack([np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 1]), np.zeros(5, dtype=int)], axis=1)
    assert mean_average_precision(scores, targets.astype(bool)) == pytest.approx((1 + 34 / 45) / 2)
    assert math.isnan(mean_average_precision(scores, np.zeros_like(targets, dtype=bool)))


# -------------------------------------------------------------------------------------------------------- optim


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),  # warm-up starts at 1/warmup
        (4, 0.5),
        (9, 1.0),  # the last warm-up step reaches the base lr
        (10, 1.0),  # the cosine starts at its top
        (60, 0.1 + 0.9 * 0.5),  # half way down
        (85, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75))),
        (110, 0.1),  # ends at min_ratio
        (500, 0.1),  # and stays there
    ],
)
def test_lr_factor_warmup_then_cosine(step: int, expected: float) -> None:
    assert lr_factor(step, total_steps=110, warmup_steps=10, min_ratio=0.1) == pytest.approx(expected)


def test_lr_factor_without_warmup() -> None:
    assert lr_factor(0, 100, 0, 0.0) == 1.0
    assert lr_factor(50, 100, 0, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, 0.0) == pytest.approx(0.0)
    assert lr_factor(0, 5, 5, 0.0) == pytest.approx(0.2)  # warm-up as long as the run
    assert lr_factor(5, 5, 5, 0.0) == 1.0


def test_scheduler_applies_lr_factor() -> None:
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.2, warmup_steps=4, min_lr_ratio=0.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=12)
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    assert lrs[8] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert len({g["lr"] for g in optimizer.param_groups}) == 1  # decay and no-decay groups share the schedule


def test_parameter_groups_put_1d_parameters_in_the_no_decay_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.append(frozen)
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p): name for name, p in model.named_parameters()}
    assert [ids[id(p)] for p in decay["params"]] == ["0.weight", "3.weight"]
    assert [ids[id(p)] for p in no_decay["params"]] == ["0.bias", "1.weight", "1.bias", "3.bias"]


def test_build_optimizer() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    sgd = build_optimizer(model, OptimConfig(name="sgd", lr=0.3, momentum=0.9, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] is True and sgd.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]
    plain = build_optimizer(model, OptimConfig(name="sgd", momentum=0.0))
    assert plain.defaults["nesterov"] is False
    adamw = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, betas=[0.8, 0.95], weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.95)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match=r"optim\.name='lamb': choose sgd or adamw"):
        build_optimizer(model, OptimConfig(name="lamb"))


# -------------------------------------------------------------------------------------------------------- trunk


@pytest.mark.parametrize("depth", [0, 11, 20, 1000])
def test_trunk_rejects_a_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"^model\.depth={depth}: choose one of \[10, 18, 34, 50, 101, 152, 200\]$"):
        ResNetTrunk(depth=depth, width=64)


@pytest.mark.parametrize("width", [0, 4, 12, 63, -8])
def test_trunk_rejects_a_bad_width(width: int) -> None:
    with pytest.raises(ValueError, match=rf"^model\.width={width}: use a multiple of 8"):
        ResNetTrunk(depth=18, width=width)


@pytest.mark.parametrize(
    ("depth", "width", "feature_dim"),
    [(18, 64, 512), (50, 64, 2048), (10, 16, 128), (18, 16, 128), (50, 16, 512), (34, 8, 64)],
)
def test_feature_dim(depth: int, width: int, feature_dim: int) -> None:
    assert ResNetTrunk(depth, width).feature_dim == feature_dim


def test_tiny_trunk_output_shapes() -> None:
    trunk = ResNetTrunk(10, 16).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = trunk.stages(images)
        features = trunk(images)
    assert [tuple(s.shape) for s in stages] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    assert tuple(features.shape) == (2, trunk.feature_dim)

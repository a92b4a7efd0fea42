"""The embedding head's losses, masks and sparse rows; held-out tag selection; zero-shot P/R/F1 and its chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.config import HeadConfig
from pretrain.embedding_head import EmbeddingHead
from pretrain.heads import build_head
from pretrain.optim import sparse_parameters
from pretrain.vocab import Vocabulary
from pretrain.zeroshot import heldout_tags, precision_recall_f1


def _head(loss: str = "negative_sampling", finetune: bool = False, heldout: tuple[int, ...] = ()) -> EmbeddingHead:
    torch.manual_seed(0)
    vectors = torch.randn(6, 4)
    return EmbeddingHead(3, vectors, loss=loss, num_sampled=4, proposal="uniform", finetune_vectors=finetune,
                         heldout=heldout, margin=0.1)


def test_negative_sampling_loss_by_hand_with_own_tags_masked() -> None:
    head = _head()
    head.negatives = torch.tensor([0, 2, 3, 5])
    features = torch.randn(2, 3)
    tag_ids = torch.tensor([[0, 1], [4, -1]])
    e = head.embed(features)
    v = head.vectors.weight
    # image 0: positives 0, 1; negatives 2, 3, 5 (0 is its own tag); image 1: positive 4; negatives 0, 2, 3, 5
    img0 = -F.logsigmoid(e[0] @ v[[0, 1]].T).mean() - F.logsigmoid(-(e[0] @ v[[2, 3, 5]].T)).mean()
    img1 = -F.logsigmoid(e[1] @ v[4]) - F.logsigmoid(-(e[1] @ v[[0, 2, 3, 5]].T)).mean()
    assert head.training_loss(features, tag_ids).item() == pytest.approx(((img0 + img1) / 2).item(), rel=1e-5)


def test_hinge_rank_loss_by_hand() -> None:
    head = _head("hinge")
    head.negatives = torch.tensor([1, 2])
    features = torch.randn(1, 3)
    e, v = head.embed(features)[0], head.vectors.weight
    pos, neg = e @ v[0], e @ v[[1, 2]].T
    expected = (0.1 - pos + neg).clamp_min(0).mean()
    assert head.training_loss(features, torch.tensor([[0]])).item() == pytest.approx(expected.item(), rel=1e-5)


def test_heldout_tags_are_neither_positives_nor_negatives() -> None:
    head = _head(finetune=True, heldout=(1, 3))
    head.negatives = torch.tensor([3, 2, 1, 5])
    features = torch.randn(2, 3)
    loss = head.training_loss(features, torch.tensor([[0, 1], [1, -1]]))  # image 1 has only a held-out tag
    loss.backward()
    grad = head.vectors.weight.grad.coalesce()
    touched = grad.indices()[0][grad.values().abs().sum(1) > 0].tolist()
    assert sorted(touched) == [0, 2, 5]  # rows of held-out tags 1 and 3 get no gradient
    assert head.heldout == [1, 3]
    # the whole-image loss of image 1 is zero: it counts in the average but teaches nothing
    alone = head.training_loss(features[1:], torch.tensor([[1]]))
    assert alone.item() == 0.0


def test_frozen_vectors_are_not_trained_and_finetuned_ones_are_sparse() -> None:
    frozen, tuned = _head(), _head(finetune=True)
    assert sparse_parameters(frozen) == [] and not frozen.vectors.weight.requires_grad
    assert sparse_parameters(tuned) == [tuned.vectors.weight]
    assert torch.allclose(frozen.vectors.weight.norm(dim=1), torch.ones(6))  # unit tag vectors
    scores = frozen(torch.randn(5, 3))
    assert scores.shape == (5, 6)


def test_build_head_needs_one_vector_per_tag() -> None:
    cfg = HeadConfig(name="embedding", proposal="uniform")
    with pytest.raises(ValueError, match="one tag vector per tag"):
        build_head(cfg, 8, 5)
    with pytest.raises(ValueError, match="one tag vector per tag"):
        build_head(cfg, 8, 5, tag_vectors=torch.randn(4, 3))
    with pytest.raises(ValueError, match="head.loss='triplet'"):
        build_head(HeadConfig(name="embedding", loss="triplet", proposal="uniform"), 8, 5,
                   tag_vectors=torch.randn(5, 3))
    assert isinstance(build_head(cfg, 8, 5, tag_vectors=torch.randn(5, 3)), EmbeddingHead)


def test_precision_recall_f1_and_chance() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.0, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 1, 1, 1, 1.0]])
    targets = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])  # the last row: no target
    got = precision_recall_f1(scores, targets, k=2)
    assert got["images"] == 2
    assert got["precision"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert got["recall"] == pytest.approx(1.0)
    assert got["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert got["chance_precision"] == pytest.approx(1.5 / 6)  # mean |T| / H
    assert got["chance_recall"] == pytest.approx(2 / 6)  # k / H
    # a random ranking's expected precision is what the formula says
    rng = np.random.default_rng(0)
    draws = [precision_recall_f1(rng.random((2, 6)), targets[:2], k=2)["precision"] for _ in range(3000)]
    assert np.mean(draws) == pytest.approx(got["chance_precision"], abs=0.01)


def test_heldout_selection(tmp_path: Path) -> None:
    vocab = Vocabulary(["red", "zorvik", "blim", "circle", "blor", "iphone"], [9, 8, 7, 6, 5, 4])
    manifest = {"synth": {"concepts": [{"name": "zorvik", "synonyms": ["blim"]}, {"name": "blor", "synonyms": []}]}}
    assert heldout_tags(HeadConfig(zeroshot_tags=["#Red!", "circle"]), vocab, manifest) == [0, 3]
    with pytest.raises(ValueError, match="'purple' is not in the vocabulary"):
        heldout_tags(HeadConfig(zeroshot_tags=["purple"]), vocab, manifest, tmp_path)
    whole = heldout_tags(HeadConfig(zeroshot_count=1), vocab, manifest)
    assert whole in ([1, 2], [4])  # a concept goes with its synonyms
    assert heldout_tags(HeadConfig(zeroshot_count=2), vocab, manifest) == [1, 2, 4]
    assert heldout_tags(HeadConfig(zeroshot_count=2, zeroshot_pool="concepts"), vocab, manifest) == [1, 2, 4]
    assert len(heldout_tags(HeadConfig(zeroshot_count=3, zeroshot_pool="vocab"), vocab, manifest)) == 3
    assert heldout_tags(HeadConfig(), vocab, manifest) == []
    with pytest.raises(ValueError, match="needs a synthweb corpus"):
        heldout_tags(HeadConfig(zeroshot_count=1, zeroshot_pool="concepts"), vocab, {}, tmp_path)
    assert len(heldout_tags(HeadConfig(zeroshot_count=2), vocab, {})) == 2  # auto: any tag off synthweb

"""The frozen-trunk feature store: same features as the trunk, each distinct image computed once."""

from __future__ import annotations

import pytest
import torch

from pretrain.models import ResNetTrunk
from transfer.backbone import fpn_backbone
from transfer.feature_cache import CachedTrunk, FeatureStore


def _backbone(seed: int, store: FeatureStore, cache_mb: float = 64.0):
    torch.manual_seed(seed)
    backbone = fpn_backbone(ResNetTrunk(10, 8), out_channels=8, trainable=False)
    plain = backbone.body
    backbone.body = CachedTrunk(plain, cache_mb, store)
    return backbone, plain


def _counting(module: torch.nn.Module) -> list[int]:
    """Batch sizes of every forward of `module`."""
    seen: list[int] = []
    module.register_forward_hook(lambda _m, inputs, _out: seen.append(len(inputs[0])))
    return seen


def test_cached_features_equal_the_trunks_and_each_image_is_computed_once() -> None:
    store = FeatureStore()
    backbone, plain = _backbone(0, store)
    calls = _counting(plain)
    images = torch.rand(4, 3, 64, 64)
    batch = torch.stack([images[0], images[1], images[0]])  # a repeat within the batch
    first = backbone.body(batch)
    again = backbone.body(torch.stack([images[1], images[2], images[3], images[2]]))
    expected = plain(torch.stack([images[1], images[2], images[3], images[2]]))
    assert list(again) == list(expected) == ["0", "1", "2", "3"]
    for name in expected:
        torch.testing.assert_close(again[name], expected[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first["3"][0], first["3"][2])
    # computed: 2 distinct images of the first batch, the 2 new ones of the second, then 4 by hand
    assert calls == [2, 2, 4]
    assert (store.hits, store.misses) == (3, 4)


def test_another_trunk_starts_afresh_and_a_full_store_still_returns_features() -> None:
    store = FeatureStore()
    images = torch.rand(2, 3, 64, 64)
    first, _ = _backbone(0, store)
    first.body(images)
    other, plain = _backbone(1, store)  # other weights: the first trunk's features must not be served
    out = other.body(images)
    torch.testing.assert_close(out["2"], plain(images)["2"], rtol=1e-4, atol=1e-5)
    assert store.misses == 2 and store.hits == 0 and len(store.features) == 2

    tiny = FeatureStore()
    small, plain = _backbone(0, tiny, cache_mb=1e-4)  # ~100 bytes: no image fits
    calls = _counting(plain)
    small.body(images)
    small.body(images)
    assert calls == [2, 2] and not tiny.features


def test_features_stored_under_inference_mode_train_the_heads_later() -> None:
    store = FeatureStore()
    backbone, _ = _backbone(0, store)
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        backbone(images)
    loss = sum(level.square().mean() for level in backbone(images).values())
    loss.backward()  # the FPN's weights get gradients through features first computed for inference
    assert backbone.fpn.inner_blocks[0][0].weight.grad is not None and store.hits == 2


def test_only_a_frozen_trunk_is_cached() -> None:
    trunk = ResNetTrunk(10, 8)
    assert not isinstance(fpn_backbone(trunk, 8, trainable=True, cache_mb=64).body, CachedTrunk)
    assert isinstance(fpn_backbone(ResNetTrunk(10, 8), 8, trainable=False, cache_mb=64).body, CachedTrunk)
    with pytest.raises(ValueError, match="only a frozen trunk"):
        CachedTrunk(fpn_backbone(ResNetTrunk(10, 8), 8, trainable=True).body, 64)

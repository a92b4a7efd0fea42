"""Trunks for transfer: a pretraining run's exported trunk (or a random one), frozen or not, with an FPN.

The trunk is rebuilt with the depth and width recorded in the run's manifest and loaded strictly from its
`trunk.pt` (torchvision key names). Dense tasks use frozen batch-norm statistics, as detection recipes do
with small per-device batches; `frozen` mode also fixes every trunk weight.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from pretrain.atomic import read_json
from pretrain.config import ModelConfig
from pretrain.models import ResNetTrunk
from transfer.feature_cache import CachedTrunk

STAGES = ("layer1", "layer2", "layer3", "layer4")


def trunk_model_config(init: str, fallback: ModelConfig) -> ModelConfig:
    """The model config a trunk was pretrained with (from its run manifest), or `fallback` for random init."""
    if not init:
        return fallback
    manifest = read_json(Path(init) / "manifest.json")
    if manifest.get("status") != "done":
        raise ValueError(f"{init}: pretraining run is {manifest.get('status')!r}, not done")
    return ModelConfig(**manifest["config"]["model"])


def load_trunk(init: str, fallback: ModelConfig, seed: int = 0) -> ResNetTrunk:
    """A pretrained trunk from run directory `init`, or a randomly initialised one when `init` is empty."""
    model = trunk_model_config(init, fallback)
    torch.manual_seed(seed)
    trunk = ResNetTrunk(model.depth, model.width)
    if init:
        path = Path(init) / "trunk.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    return trunk


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding the same statistics and affine parameters."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def set_trainable(trunk: nn.Module, trainable: bool) -> None:
    for param in trunk.parameters():
        param.requires_grad_(trainable)


def fpn_backbone(trunk: ResNetTrunk, out_channels: int, trainable: bool, cache_mb: float = 0.0) -> BackboneWithFPN:
    """An FPN over layer1..layer4 of the trunk (strides 4-32, plus a max-pooled level), as torchvision builds.

    A frozen trunk (`trainable` false) with `cache_mb` > 0 computes each distinct image once (`CachedTrunk`)."""
    freeze_batchnorm(trunk)
    set_trainable(trunk, trainable)
    widths = [trunk.width * 2**i * (4 if trunk.depth >= 50 else 1) for i in range(4)]
    backbone = BackboneWithFPN(trunk, {name: str(i) for i, name in enumerate(STAGES)}, widths, out_channels)
    if not trainable and cache_mb > 0:
        backbone.body = CachedTrunk(backbone.body, cache_mb)
    return backbone

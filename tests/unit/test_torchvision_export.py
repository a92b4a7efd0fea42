"""Exported trunks load into torchvision's ResNets with strict=True and compute the same function."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from pretrain.config import HeadConfig, ModelConfig
from pretrain.models import build_model, export_torchvision
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir


@pytest.mark.parametrize("depth", [18, 50])
def test_export_loads_strictly_into_torchvision(depth: int) -> None:
    num_tags = 37
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=f"resnet{depth}", depth=depth, width=64), HeadConfig("sigmoid"), num_tags)
    with torch.no_grad():  # make BN statistics non-trivial so a key mix-up would show in the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    state = export_torchvision(model.trunk, model.head.fc)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_tags)
    reference.load_state_dict(state, strict=True)

    model.eval()
    reference.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=1e-4, atol=1e-4)


def test_trunk_without_head_misses_only_fc() -> None:
    model = build_model(ModelConfig(depth=18, width=64), HeadConfig("softmax"), 5)
    reference = torchvision.models.resnet18(weights=None)
    result = reference.load_state_dict(export_torchvision(model.trunk), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []


def test_pretrain_run_exports_a_loadable_trunk(tmp_path: Path, synth_root: Path) -> None:
    cfg = tiny_config(tmp_path, synth_root, "train.steps=4", "model=resnet18")
    summary = pretrain_job(cfg)
    state = torch.load(pretrain_run_dir(cfg) / "trunk.pt", weights_only=True)
    reference = torchvision.models.resnet18(weights=None, num_classes=summary["vocab_size"])
    reference.load_state_dict(state, strict=True)

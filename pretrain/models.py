"""ResNet trunks whose parameter names are torchvision's, at any width.

`build_trunk(depth=50, width=64)` has exactly the state-dict keys and shapes of `torchvision.models.resnet50()`
minus `fc`; narrower widths (the "tiny" CPU profiles) keep the same names. `export_torchvision` adds the head's
linear layer as `fc`, so `torchvision.models.resnet50(num_classes=V).load_state_dict(sd, strict=True)` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from pretrain.config import HeadConfig, ModelConfig
from pretrain.heads import build_head

# depth -> (block, blocks per stage); 10 and 200 are the usual extensions of torchvision's table
ARCHITECTURES: dict[int, tuple[type[nn.Module], list[int]]] = {
    10: (BasicBlock, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
    200: (Bottleneck, [3, 24, 36, 3]),
}


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without `fc`: image -> pooled features of size `feature_dim`."""

    def __init__(self, depth: int = 50, width: int = 64) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"model.depth={depth}: choose one of {sorted(ARCHITECTURES)}")
        if width < 8 or width % 8:
            raise ValueError(f"model.width={width}: use a multiple of 8 (64 is torchvision's ResNet)")
        block, layers = ARCHITECTURES[depth]
        self.depth, self.width = depth, width
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # torchvision's blocks check groups/base_width against 64 only for Bottleneck's inner width
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # zero-init the last BN of each residual branch: each block starts as identity (Goyal et al. 2017)
        for module in self.modules():
            last_bn = getattr(module, "bn3", None) if isinstance(module, Bottleneck) else getattr(module, "bn2", None)
            if isinstance(module, BasicBlock | Bottleneck) and last_bn is not None:
                nn.init.zeros_(last_bn.weight)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after layer1..layer4 (strides 4, 8, 16, 32), for dense transfer heads."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.stages(x)[-1]), 1)


class TaggingModel(nn.Module):
    """Trunk + head: normalised images -> tag logits, or -> the training loss when the tags are given.

    The loss is computed inside `forward` so that a DistributedDataParallel wrapper sees the whole step (and a
    sampled head never forms all V logits).
    """

    def __init__(self, trunk: ResNetTrunk, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, images: torch.Tensor, tag_ids: torch.Tensor | None = None) -> torch.Tensor:
        features = self.trunk(images)
        if tag_ids is None:
            return self.head(features)
        return self.head.training_loss(features, tag_ids)


def build_model(model: ModelConfig, head: HeadConfig, num_tags: int, tag_counts: Sequence[int] | None = None,
                seed: int = 0, tag_vectors: torch.Tensor | None = None, heldout: Sequence[int] = ()) -> TaggingModel:
    trunk = ResNetTrunk(model.depth, model.width)
    return TaggingModel(trunk, build_head(head, trunk.feature_dim, num_tags, tag_counts, seed, tag_vectors, heldout))


def export_torchvision(trunk: nn.Module, fc: nn.Linear | None = None) -> dict[str, torch.Tensor]:
    """The trunk's state dict under torchvision's names, with `fc.*` from a linear head when given."""
    state = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
    if fc is not None:
        state["fc.weight"] = fc.weight.detach().clone()
        state["fc.bias"] = fc.bias.detach().clone()
    return state

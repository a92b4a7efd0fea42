"""Semantic segmentation transfer on a Pascal VOC layout: an FPN semantic head over the trunk; mIoU.

The reader takes `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG of class indices, 255 =
ignore) and `ImageSets/Segmentation/<split>.txt`, as in VOC2012. The head follows Panoptic FPN's semantic
branch: a conv on every FPN level, upsampled to stride 4, summed, classified, upsampled to the input.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from pretrain.images import to_float
from pretrain.optim import lr_factor
from transfer.backbone import fpn_backbone, load_trunk
from transfer.config import TransferConfig

IGNORE = 255


def read_voc_split(root: Path, split: str, size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(ids, uint8 images N x 3 x S x S, int64 masks N x S x S) of a VOC segmentation split, resized to S."""
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.exists():
        raise FileNotFoundError(f"{list_file}: no such VOC split list")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    images, masks = [], []
    for image_id in ids:
        image = Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
        mask = Image.open(root / "SegmentationClass" / f"{image_id}.png")
        if mask.mode not in ("P", "L"):
            raise ValueError(f"{root / 'SegmentationClass' / image_id}.png: expected a palette or grey PNG of indices")
        images.append(np.asarray(image))
        masks.append(np.asarray(mask.resize((size, size), Image.NEAREST)))
    return ids, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
        np.stack(masks).astype(np.int64))


class SemanticFPN(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.out_channels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, channels, 3, padding=1, bias=False), nn.GroupNorm(8, channels), nn.ReLU())
            for _ in range(4)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = self.backbone(images)
        target = levels["0"].shape[-2:]
        fused = sum(
            F.interpolate(conv(levels[str(i)]), size=target, mode="bilinear", align_corners=False)
            for i, conv in enumerate(self.lateral)
        )
        return F.interpolate(self.classifier(fused), size=images.shape[-2:], mode="bilinear", align_corners=False)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    valid = target != IGNORE
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes that occur (in truth or prediction) of intersection / union."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else float("nan")


def train_and_evaluate(cfg: TransferConfig, excluded_test_ids: set[str]) -> dict:
    """Transfer to the benchmark's `segmentation/` VOC layout; mIoU on the full and dedup test sets."""
    root = Path(cfg.benchmark) / "segmentation"
    started = time.perf_counter()
    _, train_images, train_masks = read_voc_split(root, "train", cfg.image_size)
    test_ids, test_images, test_masks = read_voc_split(root, "test", cfg.image_size)
    labels = torch.cat([train_masks.unique(), test_masks.unique()])
    num_classes = int(labels[labels != IGNORE].max()) + 1
    keep = [f"segmentation/JPEGImages/{i}.jpg" not in excluded_test_ids for i in test_ids]

    trunk = load_trunk(cfg.init, cfg.model, cfg.seed)
    torch.manual_seed(cfg.seed)
    backbone = fpn_backbone(trunk, cfg.dense.fpn_channels, cfg.mode == "finetune", cfg.dense.feature_cache_mb)
    model = SemanticFPN(backbone, num_classes, cfg.dense.seg_channels)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    model.train()
    for step in tqdm(range(cfg.steps), desc="semantic segmentation", unit="step", mininterval=1.0):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, 0.0)
        index = [rng.randrange(len(train_images)) for _ in range(cfg.batch_size)]
        images, masks = train_images[index], train_masks[index]
        if rng.random() < 0.5:
            images, masks = images.flip(-1), masks.flip(-1)
        loss = F.cross_entropy(model(to_float(images)), masks, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train_seconds = time.perf_counter() - started

    model.eval()
    full = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    dedup = torch.zeros_like(full)
    with torch.no_grad():
        for first in range(0, len(test_images), cfg.batch_size):
            preds = model(to_float(test_images[first : first + cfg.batch_size])).argmax(1)
            for i, pred in enumerate(preds, start=first):
                matrix = confusion_matrix(pred, test_masks[i], num_classes)
                full += matrix
                if keep[i]:
                    dedup += matrix
    return {
        "task": "semantic",
        "metrics": {"full": {"mIoU": mean_iou(full)}, "dedup": {"mIoU": mean_iou(dedup)}},
        "test_images": {"full": len(test_ids), "dedup": int(sum(keep))},
        "classes": num_classes,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - started - train_seconds,
    }

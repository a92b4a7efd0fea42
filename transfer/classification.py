"""Classification transfer on an ImageFolder benchmark: a linear probe on frozen features, or fine-tuning.

`frozen`: features of the trunk are computed once per image (central crop) and a multinomial logistic
regression is fitted on them, full batch. `finetune`: trunk and a new linear layer train together with
random crops and flips. Both report top-1 / top-5 on the full test set and on the de-duplicated one.
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

from pretrain.images import center_crop, random_resized_crop, to_float
from pretrain.optim import lr_factor
from transfer.backbone import load_trunk
from transfer.config import TransferConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_imagefolder(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, class indices, class names) of an ImageNet-style folder: one sub-folder per class."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such ImageFolder split")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(index)
    if not paths:
        raise ValueError(f"{split_dir}: no images in class sub-folders")
    return paths, labels, classes


def _load(paths: list[Path], size: int) -> torch.Tensor:
    """Central crops of every image as one uint8 N x 3 x S x S tensor (benchmarks are small)."""
    crops = [center_crop(Image.open(p).convert("RGB"), size) for p in paths]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _features(trunk: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    trunk.eval()
    return torch.cat([trunk(to_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    if len(labels) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def _scores(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> dict[str, dict[str, float]]:
    subsets = (("full", torch.ones_like(keep)), ("dedup", keep))
    return {name: {f"top{k}": topk_accuracy(logits[mask], labels[mask], k) for k in (1, 5)} for name, mask in subsets}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, epochs: int, lr: float,
                 weight_decay: float) -> nn.Linear:
    """Multinomial logistic regression on standardised features, full-batch Adam."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    probe = nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    standardized = (train_x - mean) / std
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(probe(standardized), train_y).backward()
        optimizer.step()
    # fold the standardisation into the layer, so it applies to raw features
    with torch.no_grad():
        probe.weight.div_(std)
        probe.bias.sub_((probe.weight * mean).sum(1))
    return probe


def _finetune(trunk: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
              cfg: TransferConfig) -> nn.Module:
    model = nn.Sequential(trunk, nn.Linear(trunk.feature_dim, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.classification.finetune_lr, momentum=0.9,
                                weight_decay=cfg.weight_decay, nesterov=True)
    steps = cfg.classification.finetune_steps
    rng = random.Random(cfg.seed)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    model.train()
    for step in tqdm(range(steps), desc="finetune classification", unit="step", mininterval=1.0):
        for group in optimizer.param_groups:
            group["lr"] = cfg.classification.finetune_lr * lr_factor(step, steps, cfg.warmup_steps, 0.0)
        index = [rng.randrange(len(pil)) for _ in range(cfg.batch_size)]
        crops = np.stack([random_resized_crop(pil[i], cfg.image_size, rng, 0.5) for i in index])
        batch = to_float(torch.from_numpy(crops).permute(0, 3, 1, 2))
        loss = F.cross_entropy(model(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def train_and_evaluate(cfg: TransferConfig, excluded_test_ids: set[str]) -> dict:
    """Transfer to the benchmark's `classification/` ImageFolder; metrics on the full and dedup test sets."""
    root = Path(cfg.benchmark)
    started = time.perf_counter()
    train_paths, train_labels, classes = read_imagefolder(root / "classification" / "train")
    test_paths, test_labels, test_classes = read_imagefolder(root / "classification" / "test")
    if test_classes != classes:
        raise ValueError(f"{root / 'classification'}: train and test class folders differ")
    keep = torch.tensor([str(p.relative_to(root)) not in excluded_test_ids for p in test_paths])
    train_y, test_y = torch.tensor(train_labels), torch.tensor(test_labels)
    train_images, test_images = _load(train_paths, cfg.image_size), _load(test_paths, cfg.image_size)
    trunk = load_trunk(cfg.init, cfg.model, cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.mode == "frozen":
        probe = linear_probe(_features(trunk, train_images), train_y, len(classes), cfg.classification.probe_epochs,
                             cfg.classification.probe_lr, cfg.weight_decay)
        with torch.no_grad():
            logits = probe(_features(trunk, test_images))
    else:
        model = _finetune(trunk, train_images, train_y, len(classes), cfg)
        with torch.no_grad():
            logits = torch.cat([model(to_float(test_images[i : i + 256])) for i in range(0, len(test_images), 256)])
    return {
        "task": "classification",
        "metrics": _scores(logits, test_y, keep),
        "test_images": {"full": len(test_y), "dedup": int(keep.sum())},
        "classes": len(classes),
        "train_seconds": time.perf_counter() - started,
    }

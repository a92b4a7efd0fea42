"""Dense transfer: Faster / Mask / Keypoint R-CNN on an FPN over a (pretrained) trunk, trained and COCO-evaluated.

Heads are torchvision's with the sizes of `DenseConfig` and small RoI grids (5x5 box, 10x10 mask and keypoint
instead of 7 / 14 / 14) so a run of ~100 steps on 96-px images takes seconds on one CPU core. The R-CNN
transform keeps images at `image_size` (min_size = max_size = image_size: no upscaling to 800 px) and
normalises [0, 1] inputs with ImageNet statistics, the same statistics the trunk was pretrained with.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from pretrain.images import MEAN, STD
from pretrain.optim import lr_factor, parameter_groups
from transfer.backbone import fpn_backbone, load_trunk
from transfer.coco import CocoDense, coco_evaluate, collate, test_ids, to_coco_results
from transfer.config import DenseConfig, TransferConfig

FEATURE_MAPS = ["0", "1", "2", "3"]  # RoI pooling reads the stride 4-32 levels, as torchvision's R-CNNs do
BOX_POOL, MASK_POOL, KEYPOINT_POOL = 5, 10, 10  # RoIAlign grids (torchvision: 7, 14, 14)
# one bilinear sample per bin (torchvision: 2x2): RoIAlign's CPU backward is the costliest op after the
# convolutions; on 96-px images the bins span about one feature cell, so nothing is skipped over
ASPECT_RATIOS = (0.5, 1.0, 2.0)
GRAD_CLIP = 10.0  # random-init trunks at lr 0.02 can spike early; clipping keeps the short runs finite


def anchor_sizes(image_size: int) -> tuple[tuple[int, ...], ...]:
    """One anchor size per FPN level (strides 4..64), doubling from image_size / 12: 8..128 px at 96 px."""
    base = max(2, round(image_size / 12))
    return tuple((base * 2**level,) for level in range(5))


def build_model(task: str, backbone: nn.Module, num_classes: int, num_keypoints: int, dense_cfg: DenseConfig,
                image_size: int) -> nn.Module:
    """Faster R-CNN (detection), Mask R-CNN (instance) or class-agnostic Keypoint R-CNN (pose) with small heads.

    `num_classes` counts foreground classes (background is added here); `backbone` is an FPN backbone with
    `out_channels` (see `transfer.backbone.fpn_backbone`).
    """
    channels = backbone.out_channels
    sizes = anchor_sizes(image_size)
    common: dict[str, Any] = {
        "min_size": image_size, "max_size": image_size,
        "image_mean": [m / 255 for m in MEAN], "image_std": [s / 255 for s in STD],
        "rpn_anchor_generator": AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes)),
        "rpn_pre_nms_top_n_train": dense_cfg.rpn_pre_nms, "rpn_pre_nms_top_n_test": dense_cfg.rpn_pre_nms,
        "rpn_post_nms_top_n_train": dense_cfg.rpn_post_nms, "rpn_post_nms_top_n_test": dense_cfg.rpn_post_nms,
        "box_batch_size_per_image": dense_cfg.box_batch_per_image,
        "box_roi_pool": MultiScaleRoIAlign(FEATURE_MAPS, output_size=BOX_POOL, sampling_ratio=1),
        "box_head": TwoMLPHead(channels * BOX_POOL**2, dense_cfg.representation_size),
    }
    if task == "pose":
        num_classes = 1  # one "object" class, as COCO's person
        common["box_detections_per_img"] = 20  # COCOeval scores keypoints on the top 20 only; heatmaps cost
    predictor = FastRCNNPredictor(dense_cfg.representation_size, num_classes + 1)
    if task == "detection":
        return FasterRCNN(backbone, box_predictor=predictor, **common)
    if task == "instance":
        mask_layers = [dense_cfg.mask_channels] * dense_cfg.mask_layers
        return MaskRCNN(
            backbone, box_predictor=predictor, **common,
            mask_roi_pool=MultiScaleRoIAlign(FEATURE_MAPS, output_size=MASK_POOL, sampling_ratio=1),
            mask_head=MaskRCNNHeads(channels, mask_layers, dilation=1),
            mask_predictor=MaskRCNNPredictor(mask_layers[-1], dense_cfg.mask_channels, num_classes + 1),
        )
    if task == "pose":
        if num_keypoints < 1:
            raise ValueError("the pose task needs keypoints (num_keypoints >= 1)")
        keypoint_layers = [dense_cfg.keypoint_channels] * dense_cfg.keypoint_layers
        return KeypointRCNN(
            backbone, box_predictor=predictor, **common,
            keypoint_roi_pool=MultiScaleRoIAlign(FEATURE_MAPS, output_size=KEYPOINT_POOL, sampling_ratio=1),
            keypoint_head=KeypointRCNNHeads(channels, keypoint_layers),
            keypoint_predictor=KeypointRCNNPredictor(keypoint_layers[-1], num_keypoints),
        )
    raise ValueError(f"task={task!r}: choose detection, instance or pose")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(dataset: CocoDense, batch_size: int, seed: int):
    """An endless stream of shuffled batches (a new order every pass over the training images)."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         generator=generator, num_workers=0)
    while True:
        yield from loader


def train(model: nn.Module, dataset: CocoDense, cfg: TransferConfig) -> dict[str, float]:
    """`cfg.steps` SGD steps (momentum 0.9, linear warm-up, cosine decay); returns the last losses."""
    optimizer = torch.optim.SGD(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, 0.0))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    stream = batches(dataset, min(cfg.batch_size, len(dataset)), cfg.seed)
    last: dict[str, float] = {}
    skipped = 0
    progress = tqdm(range(cfg.steps), desc=f"{cfg.task}/{cfg.mode}", mininterval=1.0, leave=False)
    for _ in progress:
        images, targets = next(stream)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):  # skip a diverged step rather than poisoning the weights
            skipped += 1
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
        schedule.step()
        last = {name: value.item() for name, value in losses.items()}
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    last["skipped_steps"] = float(skipped)
    return last


@torch.inference_mode()
def predict(model: nn.Module, dataset: CocoDense, batch_size: int) -> list[dict]:
    """COCO result dicts for every image of `dataset`, in original coordinates and category ids."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = []
    for images, targets in loader:
        outputs = model(images)
        results += to_coco_results(outputs, [int(t["image_id"]) for t in targets], dataset)
    return results


def task_metrics(task: str, dataset: CocoDense, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """AP / AP50 / AP75 of the task's own kind (box, mask, keypoint); instance adds box_AP / box_AP50."""
    iou_type = {"detection": "bbox", "instance": "segm", "pose": "keypoints"}[task]
    metrics = coco_evaluate(dataset.coco, results, iou_type, image_ids)
    if task == "instance":
        box = coco_evaluate(dataset.coco, results, "bbox", image_ids)
        metrics.update(box_AP=box["AP"], box_AP50=box["AP50"])
    return metrics


def train_and_evaluate(cfg: TransferConfig, excluded_test_ids: set[str]) -> dict[str, Any]:
    """Transfer a trunk to one dense task: train on `train`, evaluate once on `test` (full and de-duplicated).

    `excluded_test_ids` are test image id strings (paths relative to the benchmark root) flagged as near
    duplicates of pretraining images; the `dedup` metrics are over the test images not in that set.
    """
    if cfg.task not in ("detection", "instance", "pose"):
        raise ValueError(f"task={cfg.task!r}: dense transfer handles detection, instance and pose")
    if cfg.mode not in ("frozen", "finetune"):
        raise ValueError(f"mode={cfg.mode!r}: choose frozen or finetune")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_set = CocoDense(cfg.benchmark, "train", cfg.task, train=True, flip=True, seed=cfg.seed)
    test_set = CocoDense(cfg.benchmark, "test", cfg.task)
    if not len(train_set):
        raise ValueError(f"{cfg.benchmark}: no training image has a usable {cfg.task} annotation")
    trunk = load_trunk(cfg.init, cfg.model, cfg.seed)
    backbone = fpn_backbone(trunk, cfg.dense.fpn_channels, cfg.mode == "finetune", cfg.dense.feature_cache_mb)
    model = build_model(cfg.task, backbone, train_set.num_classes, train_set.num_keypoints, cfg.dense,
                        cfg.image_size)

    start = time.perf_counter()
    losses = train(model, train_set, cfg)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    results = predict(model, test_set, cfg.batch_size)
    names = test_ids(test_set.coco, "test")
    full = list(test_set.ids)
    dedup = [i for i in full if names[i] not in excluded_test_ids]
    metrics = {"full": task_metrics(cfg.task, test_set, results, full),
               "dedup": task_metrics(cfg.task, test_set, results, dedup)}
    eval_seconds = time.perf_counter() - start
    return {
        "task": cfg.task,
        "mode": cfg.mode,
        "init": cfg.init,
        "metrics": metrics,
        "test_images": {"full": len(full), "dedup": len(dedup)},
        "final_losses": {k: (v if math.isfinite(v) else None) for k, v in losses.items()},
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
    }

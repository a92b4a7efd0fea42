"""Dense transfer end to end on a tiny generated COCO benchmark: each task, frozen and fine-tuned."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from pretrain.config import ModelConfig
from transfer import detection
from transfer.config import DenseConfig, TransferConfig
from transfer.detection import train_and_evaluate

KEYPOINTS = ["centre", "left_top", "right_top", "left_bottom", "right_bottom"]
COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}


def _object(draw: ImageDraw.ImageDraw, rng: random.Random, size: int, ann_id: int, image_id: int) -> dict:
    """Draw one rectangle (polygon mask) or ellipse (RLE mask) and return its COCO annotation."""
    cat = rng.choice(list(COLOURS))
    w, h = rng.randint(size // 4, size // 2), rng.randint(size // 4, size // 2)
    x, y = rng.randint(0, size - w - 1), rng.randint(0, size - h - 1)
    if rng.random() < 0.5:
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=COLOURS[cat])
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    else:
        draw.ellipse((x, y, x + w - 1, y + h - 1), fill=COLOURS[cat])
        canvas = Image.new("L", (size, size))
        ImageDraw.Draw(canvas).ellipse((x, y, x + w - 1, y + h - 1), fill=1)
        rle = mask_utils.encode(np.asfortranarray(np.asarray(canvas, dtype=np.uint8)))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
    points = [(x + w / 2, y + h / 2), (x + w / 4, y + h / 4), (x + 3 * w / 4, y + h / 4),
              (x + w / 4, y + 3 * h / 4), (x + 3 * w / 4, y + 3 * h / 4)]
    keypoints = [round(v, 1) for px, py in points for v in (px, py, 2)]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": float(w * h),
            "iscrowd": 0, "segmentation": segmentation, "keypoints": keypoints, "num_keypoints": len(points)}


def make_benchmark(root: Path, splits: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """`<root>/detection/{images,annotations}` in the COCO layout, 1-2 coloured shapes per image."""
    rng = random.Random(seed)
    categories = [{"id": cid, "name": f"shape{cid}", "supercategory": "shape", "keypoints": KEYPOINTS,
                   "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]]} for cid in COLOURS]
    ann_id = 1
    for split, count in splits.items():
        image_dir = root / "detection" / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = 1000 * (1 + list(splits).index(split)) + index
            grey = rng.randint(90, 160)
            image = Image.new("RGB", (size, size), (grey, grey, grey))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randint(1, 2)):
                annotations.append(_object(draw, rng, size, ann_id, image_id))
                ann_id += 1
            name = f"{index:06d}.jpg"
            image.save(image_dir / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        annotation_dir = root / "detection" / "annotations"
        annotation_dir.mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": categories}
        (annotation_dir / f"instances_{split}.json").write_text(json.dumps(data))
    return root


TINY_HEADS = DenseConfig(fpn_channels=16, rpn_pre_nms=100, rpn_post_nms=30, box_batch_per_image=32,
                         representation_size=32, mask_channels=16, mask_layers=1, keypoint_channels=16,
                         keypoint_layers=1)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("dense_bench"), {"train": 24, "test": 8})


def tiny_transfer(benchmark: Path, task: str, mode: str, steps: int = 10) -> TransferConfig:
    return TransferConfig(task=task, mode=mode, model=ModelConfig(depth=10, width=16), benchmark=str(benchmark),
                          image_size=64, steps=steps, batch_size=4, lr=0.01, warmup_steps=3, threads=1,
                          dense=TINY_HEADS)


EXPECTED_KEYS = {"detection": {"AP", "AP50", "AP75"}, "instance": {"AP", "AP50", "AP75", "box_AP", "box_AP50"},
                 "pose": {"AP", "AP50", "AP75"}}
EXCLUDED = {"detection/images/test/000001.jpg", "detection/images/test/000005.jpg", "detection/images/val/x.jpg"}


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
@pytest.mark.parametrize("task", ["detection", "instance", "pose"])
def test_transfer_runs_and_reports(benchmark: Path, task: str, mode: str) -> None:
    result = train_and_evaluate(tiny_transfer(benchmark, task, mode), EXCLUDED)
    assert result["task"] == task
    assert result["test_images"] == {"full": 8, "dedup": 6}  # only the two test paths are removed
    for subset in ("full", "dedup"):
        metrics = result["metrics"][subset]
        assert set(metrics) == EXPECTED_KEYS[task]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert result["train_seconds"] > 0 and result["eval_seconds"] > 0
    assert result["train_seconds"] < 60  # tiny heads at 64 px: a few seconds on one core


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_frozen_keeps_trunk_finetune_changes_it(benchmark: Path, mode: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    captured: dict[str, torch.nn.Module] = {}
    real_load = detection.load_trunk

    def load_and_remember(*args, **kwargs):
        trunk = real_load(*args, **kwargs)
        captured["trunk"] = trunk
        captured["before"] = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
        return trunk

    monkeypatch.setattr(detection, "load_trunk", load_and_remember)
    train_and_evaluate(tiny_transfer(benchmark, "detection", mode, steps=4), set())
    after = captured["trunk"].state_dict()
    before = {k: v for k, v in captured["before"].items() if k in after}  # frozen BN has no batch counter
    weights = [k for k in before if k.endswith("weight") and after[k].ndim == 4]  # the convolutions
    changed = [k for k in weights if not torch.equal(before[k], after[k])]
    if mode == "frozen":
        assert not changed
        assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics too
    else:
        assert len(changed) == len(weights)

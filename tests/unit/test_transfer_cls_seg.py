"""Classification and semantic-segmentation transfer on hand-made ImageFolder / VOC data with known answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.config import ModelConfig
from transfer.classification import read_imagefolder, topk_accuracy
from transfer.classification import train_and_evaluate as classify
from transfer.config import ClassificationConfig, TransferConfig
from transfer.segmentation import confusion_matrix, mean_iou
from transfer.segmentation import train_and_evaluate as segment

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def _imagefolder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / "classification" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)


def _voc(root: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(1)
    seg = root / "segmentation"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (seg / sub).mkdir(parents=True)
    index = 0
    for split, count in counts.items():
        ids = []
        for _ in range(count):
            image = np.full((48, 48, 3), 90, np.uint8)
            mask = np.zeros((48, 48), np.uint8)
            for label, colour in ((1, (220, 40, 40)), (2, (40, 40, 220))):
                x, y = rng.integers(0, 28, 2)
                image[y : y + 20, x : x + 20] = colour
                mask[y : y + 20, x : x + 20] = label
            name = f"{index:04d}"
            Image.fromarray(image).save(seg / "JPEGImages" / f"{name}.jpg", quality=95)
            png = Image.fromarray(mask, mode="L").convert("P")
            png.save(seg / "SegmentationClass" / f"{name}.png")
            ids.append(name)
            index += 1
        (seg / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _cfg(root: Path, task: str, mode: str, **extra) -> TransferConfig:
    settings = {"image_size": 32, "batch_size": 8, "steps": 15, "warmup_steps": 2, "lr": 0.05, **extra}
    return TransferConfig(task=task, mode=mode, benchmark=str(root), model=ModelConfig(depth=10, width=16),
                          classification=ClassificationConfig(probe_epochs=150, finetune_steps=10), **settings)


def test_topk_accuracy_on_a_hand_case() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 5) == 1.0


def test_linear_probe_separates_colours_and_dedup_drops_flagged(tmp_path: Path) -> None:
    _imagefolder(tmp_path, {"train": 20, "test": 10})
    paths, labels, classes = read_imagefolder(tmp_path / "classification" / "test")
    assert classes == ["blue", "green", "red"] and len(paths) == 30 and labels.count(2) == 10
    flagged = {"classification/test/red/000.jpg", "classification/test/blue/003.jpg"}
    result = classify(_cfg(tmp_path, "classification", "frozen"), flagged)
    assert result["test_images"] == {"full": 30, "dedup": 28}
    assert result["metrics"]["full"]["top1"] >= 0.9  # colour is linearly separable even from a random trunk
    assert result["metrics"]["full"]["top5"] == 1.0  # 3 classes: top-5 always hits


def test_finetune_changes_the_trunk_and_reports_both_sets(tmp_path: Path) -> None:
    _imagefolder(tmp_path, {"train": 8, "test": 4})
    result = classify(_cfg(tmp_path, "classification", "finetune"), set())
    assert set(result["metrics"]) == {"full", "dedup"}
    assert result["metrics"]["full"] == result["metrics"]["dedup"]
    assert 0.0 <= result["metrics"]["full"]["top1"] <= 1.0


def test_miou_known_values() -> None:
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    assert mean_iou(confusion_matrix(target.clamp(max=2), target, 3)) == 1.0
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    # class 0: truth 4 px, predicted 3, overlap 3 -> 3/4; class 1: truth 3, predicted 4 (the ignored pixel
    # does not count), overlap 3 -> 3/4
    assert mean_iou(confusion_matrix(pred, target, 2)) == pytest.approx(0.75)
    pred[0, 0] = 1  # one more class-0 pixel lost: 2/4 and 3/5
    assert mean_iou(confusion_matrix(pred, target, 2)) == pytest.approx((2 / 4 + 3 / 5) / 2)


def test_semantic_segmentation_learns_squares(tmp_path: Path) -> None:
    _voc(tmp_path, {"train": 16, "test": 6})
    flagged = {"segmentation/JPEGImages/0016.jpg"}
    result = segment(_cfg(tmp_path, "semantic", "finetune", steps=40), flagged)
    assert result["classes"] == 3
    assert result["test_images"] == {"full": 6, "dedup": 5}
    assert 0.0 <= result["metrics"]["dedup"]["mIoU"] <= 1.0
    assert result["metrics"]["full"]["mIoU"] > 0.3  # more than painting everything background (~0.27)


def test_a_failing_transfer_run_is_marked_failed(tmp_path: Path) -> None:
    from pretrain.atomic import read_json
    from transfer.run import run_transfer

    cfg = _cfg(tmp_path / "no-benchmark", "classification", "frozen", run_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="no such ImageFolder split"):
        run_transfer(cfg)
    manifest = read_json(tmp_path / "run" / "manifest.json")
    assert manifest["status"] == "failed" and "FileNotFoundError" in manifest["error"]


def test_repeated_transfer_averages_its_seeds_and_the_report_shows_the_spread(tmp_path: Path) -> None:
    from pretrain.atomic import read_json
    from transfer.run import run_transfer
    from webly.report import _cell
    from webly.results import transfer_rows

    _imagefolder(tmp_path, {"train": 8, "test": 6})

    def cfg(**extra) -> TransferConfig:  # one tiny step from a random trunk: the accuracy depends on the seed
        quick = ClassificationConfig(finetune_steps=1, finetune_lr=1e-3)
        return dataclasses.replace(_cfg(tmp_path, "classification", "finetune", **extra), classification=quick)

    singles = [classify(cfg(seed=s), set())["metrics"]["full"]["top1"] for s in (3, 4)]
    assert singles[0] != singles[1]
    run_dir = tmp_path / "exp" / "transfer" / "random-tiny-classification-finetune"
    result = run_transfer(cfg(seed=3, repeats=2, run_dir=str(run_dir)))
    assert [run["seed"] for run in result["runs"]] == [3, 4]
    assert [run["metrics"]["full"]["top1"] for run in result["runs"]] == singles
    assert result["metrics"]["full"]["top1"] == pytest.approx(np.mean(singles))
    assert result["metrics_std"]["full"]["top1"] == pytest.approx(np.std(singles, ddof=1))
    assert read_json(run_dir / "result.json")["metrics"] == result["metrics"]

    rows = [r for r in transfer_rows(tmp_path / "exp", []) if r.metric == "top1"]
    assert len(rows) == 1 and rows[0].repeats == 2
    assert rows[0].full_std == pytest.approx(np.std(singles, ddof=1))
    mean, spread = np.mean(singles), np.std(singles, ddof=1)
    assert _cell(rows) == f"{mean:.3f} ± {spread:.3f} / {mean:.3f}"

    with pytest.raises(ValueError, match=r"transfer.repeats=0: must be at least 1"):
        run_transfer(cfg(repeats=0, run_dir=str(tmp_path / "bad")))

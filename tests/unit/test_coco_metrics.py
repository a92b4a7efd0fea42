"""COCO metrics with known answers on a hand-made three-image COCO file, and the dataset's geometry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from transfer import coco as coco_module  # its `test_ids` is no test: not imported by name
from transfer.coco import (
    CocoDense,
    coco_evaluate,
    flip_index,
    hflip,
    load_coco,
    oks_sigmas,
    to_coco_results,
)

NAMES = ["nose", "left_ear", "right_ear", "left_foot", "right_foot"]
SIZE = 40


def _keypoints(x: float, y: float, w: float, h: float) -> list[float]:
    points = [(x + w / 2, y + h / 2), (x + 2, y + 2), (x + w - 2, y + 2), (x + 2, y + h - 2), (x + w - 2, y + h - 2)]
    return [v for px, py in points for v in (px, py, 2)]


def _annotation(ann_id: int, image_id: int, cat: int, box: list[float], polygon: bool) -> dict:
    x, y, w, h = box
    if polygon:
        segmentation: list | dict = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    else:  # the same rectangle as an uncompressed RLE: alternating 0/1 run lengths, column-major
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[int(y):int(y + h), int(x):int(x + w)] = 1
        counts, value, run = [], 0, 0
        for pixel in mask.flatten(order="F"):
            if pixel != value:
                counts.append(run)
                value, run = pixel, 0
            run += 1
        counts.append(run)
        segmentation = {"size": [SIZE, SIZE], "counts": counts}
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": box, "area": float(w * h), "iscrowd": 0,
            "segmentation": segmentation, "keypoints": _keypoints(*box), "num_keypoints": 5}


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """Three 40-px test images; category ids 3 and 7 (not contiguous); polygon and RLE masks."""
    anns = [_annotation(1, 11, 3, [4, 6, 20, 20], True), _annotation(2, 11, 7, [26, 20, 10, 16], False),
            _annotation(3, 12, 3, [10, 10, 20, 20], True), _annotation(4, 13, 7, [5, 5, 24, 24], False)]
    images = [{"id": i, "file_name": f"img{i}.jpg", "width": SIZE, "height": SIZE} for i in (11, 12, 13)]
    categories = [{"id": c, "name": n, "keypoints": NAMES, "skeleton": [[1, 2], [1, 3]]}
                  for c, n in ((3, "a"), (7, "b"))]
    image_dir = tmp_path / "detection" / "images" / "test"
    image_dir.mkdir(parents=True)
    for image in images:
        Image.new("RGB", (SIZE, SIZE), (120, 60, 30)).save(image_dir / image["file_name"])
    (tmp_path / "detection" / "annotations").mkdir()
    data = {"images": images, "annotations": anns, "categories": categories}
    (tmp_path / "detection" / "annotations" / "instances_test.json").write_text(json.dumps(data))
    return tmp_path


def _gt_as_results(coco, ann_ids: list[int] | None = None) -> list[dict]:
    anns = coco.loadAnns(ann_ids or coco.getAnnIds())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": list(a["bbox"]),
             "segmentation": coco.annToRLE(a), "keypoints": list(a["keypoints"])} for a in anns]


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_ground_truth_as_predictions_is_perfect(bench: Path, iou_type: str) -> None:
    coco = load_coco(bench / "detection/annotations/instances_test.json")
    metrics = coco_evaluate(coco, _gt_as_results(coco), iou_type)
    assert metrics == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


@pytest.mark.parametrize("task", ["detection", "instance", "pose"])
def test_model_outputs_map_back_to_category_ids(bench: Path, task: str) -> None:
    """Targets of the dataset, dressed as R-CNN outputs, score AP 1 after `to_coco_results`."""
    dataset = CocoDense(bench, "test", task)
    outputs, ids = [], []
    for _, target in dataset:
        output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["boxes"]))}
        if task == "instance":
            output["masks"] = target["masks"][:, None].float()
        if task == "pose":
            output["keypoints"] = target["keypoints"]
        outputs.append(output)
        ids.append(int(target["image_id"]))
    results = to_coco_results(outputs, ids, dataset)
    assert {r["category_id"] for r in results} == ({3} if task == "pose" else {3, 7})
    iou_type = {"detection": "bbox", "instance": "segm", "pose": "keypoints"}[task]
    assert coco_evaluate(dataset.coco, results, iou_type)["AP"] == pytest.approx(1.0)


def test_shifted_box_has_the_hand_iou(bench: Path) -> None:
    coco = load_coco(bench / "detection/annotations/instances_test.json")
    gt = [10.0, 10.0, 20.0, 20.0]  # image 12's box, xywh
    shift = 4.0  # overlap 16 x 20 = 320, union 400 + 400 - 320 = 480: IoU 2/3
    iou = box_iou(torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([[14.0, 10.0, 34.0, 30.0]]))
    assert float(iou) == pytest.approx(320 / 480)
    detection = {"image_id": 12, "category_id": 3, "score": 0.9, "bbox": [gt[0] + shift, *gt[1:]]}
    metrics = coco_evaluate(coco, [detection], "bbox", [12])
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.4)  # matched at IoU thresholds 0.50, 0.55, 0.60, 0.65 of ten


def test_displaced_keypoints_have_the_hand_oks(bench: Path) -> None:
    coco = load_coco(bench / "detection/annotations/instances_test.json")
    gt = coco.loadAnns([3])[0]
    sigma = oks_sigmas(coco)
    assert sigma == pytest.approx(np.full(5, 0.07))  # no COCO-sized keypoint set: the uniform default
    moved = list(gt["keypoints"])
    moved[3] += 3.0  # left_ear by (3, 4): distance 5; the rest exact
    moved[4] += 4.0
    # COCO: OKS = mean over visible points of exp(-d^2 / (2 * area * (2 sigma)^2))
    hand = (math.exp(-25 / (2 * gt["area"] * (2 * 0.07) ** 2)) + 4) / 5
    dets = coco.loadRes([{"image_id": 12, "category_id": 3, "score": 1.0, "keypoints": moved}])
    evaluator = COCOeval(coco, dets, "keypoints")
    evaluator.params.imgIds, evaluator.params.catIds = [12], [3]
    evaluator.params.kpt_oks_sigmas = sigma
    evaluator.evaluate()
    assert float(evaluator.ious[(12, 3)][0, 0]) == pytest.approx(hand)
    assert float(evaluator.computeOks(12, 3)[0, 0]) == pytest.approx(hand)
    metrics = coco_evaluate(coco, [{"image_id": 12, "category_id": 3, "score": 1.0, "keypoints": moved}],
                            "keypoints", [12])
    passed = sum(t <= hand for t in np.linspace(0.5, 0.95, 10))  # 0.841: thresholds 0.50 .. 0.80
    assert hand == pytest.approx(0.8406, abs=1e-4) and passed == 7
    assert metrics["AP"] == pytest.approx(passed / 10)
    assert metrics["AP50"] == metrics["AP75"] == pytest.approx(1.0)


def test_image_ids_restrict_the_evaluation(bench: Path) -> None:
    coco = load_coco(bench / "detection/annotations/instances_test.json")
    results = _gt_as_results(coco, [3])  # image 12 perfect
    results.append({"image_id": 13, "category_id": 7, "score": 1.0, "bbox": [30.0, 30.0, 8.0, 8.0]})  # IoU 0
    both = coco_evaluate(coco, results, "bbox", [12, 13])
    assert both["AP"] < 1.0
    assert coco_evaluate(coco, results, "bbox", [12])["AP"] == pytest.approx(1.0)
    assert coco_evaluate(coco, results, "bbox", [13])["AP"] == pytest.approx(0.0)
    assert coco_evaluate(coco, results, "bbox")["AP"] < both["AP"]  # image 11's objects are missed too


def test_no_predictions_and_no_ground_truth(bench: Path) -> None:
    coco = load_coco(bench / "detection/annotations/instances_test.json")
    for iou_type in ("bbox", "segm", "keypoints"):
        assert coco_evaluate(coco, [], iou_type) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    assert all(math.isnan(v) for v in coco_evaluate(coco, [], "bbox", []).values())  # undefined, not 0


def test_dataset_targets_and_ids(bench: Path) -> None:
    dataset = CocoDense(bench, "test", "instance")
    image, target = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert target["boxes"].tolist() == [[4, 6, 24, 26], [26, 20, 36, 36]]
    assert target["labels"].tolist() == [1, 2]  # ids 3, 7 -> contiguous labels
    assert target["masks"].shape == (2, SIZE, SIZE)
    assert int(target["masks"][1].sum()) == 10 * 16  # the RLE rectangle
    assert coco_module.test_ids(dataset.coco)[11] == "detection/images/test/img11.jpg"
    pose = CocoDense(bench, "test", "pose")
    assert pose.num_classes == 1 and pose[0][1]["labels"].tolist() == [1, 1]
    assert pose[0][1]["keypoints"].shape == (2, 5, 3)


def test_flip_swaps_left_and_right(bench: Path) -> None:
    assert flip_index(NAMES) == [0, 2, 1, 4, 3]
    assert flip_index(["top", "right", "bottom", "left", "centre"]) == [0, 3, 2, 1, 4]  # synthweb's names
    assert flip_index(["a", "b", "c"]) == [0, 1, 2]
    dataset = CocoDense(bench, "test", "pose")
    image, target = dataset[1]  # box [10, 10, 20, 20]: left_ear at (12, 12), right_ear at (28, 12)
    flipped, moved = hflip(image, target, dataset.flip_index)
    assert moved["boxes"].tolist() == [[10, 10, 30, 30]]  # symmetric about the centre line x = 20
    assert moved["keypoints"][0, 1].tolist() == [SIZE - 28, 12, 2]  # the mirrored right ear is the new left ear
    assert torch.equal(flipped, image.flip(-1))
    back_image, back = hflip(flipped, moved, dataset.flip_index)
    assert torch.equal(back["keypoints"], target["keypoints"]) and torch.equal(back_image, image)


def test_cached_samples_equal_fresh_ones_and_survive_callers_writing_to_them(bench: Path) -> None:
    cached = CocoDense(bench, "test", "instance", flip=True, seed=3)
    fresh = CocoDense(bench, "test", "instance", flip=True, seed=3, cache_mb=0)
    for _ in range(2):  # the second pass reads the cache and draws the same flips
        for i in range(len(fresh)):
            (image, target), (want_image, want) = cached[i], fresh[i]
            assert torch.equal(image, want_image)
            assert all(torch.equal(target[k], want[k]) for k in want)
            image.zero_()
            target["boxes"].zero_()
    assert len(cached.cache) == len(cached) and not fresh.cache
    assert torch.equal(cached[0][0], fresh[0][0])

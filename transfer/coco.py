"""COCO-format dense benchmarks: a torch Dataset for the R-CNN family, de-duplication ids and COCOeval metrics.

Images are returned at their stored size as float tensors in [0, 1]; the model's own transform resizes them
(long side = `image_size`) and normalises with ImageNet statistics, and its `postprocess` maps predictions
back to the stored image size, so predictions are already in original coordinates when they reach COCOeval.
The same code reads real COCO (`detection/images/<split>/` + `detection/annotations/instances_<split>.json`).
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

DENSE_TASKS = ("detection", "instance", "pose")
IOU_TYPES = ("bbox", "segm", "keypoints")
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
DEFAULT_SIGMA = 0.07  # about the mean of COCO's person sigmas: for keypoint sets that define none


def split_paths(benchmark: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of one split of `<benchmark>/detection`."""
    root = Path(benchmark) / "detection"
    return root / "images" / split, root / "annotations" / f"instances_{split}.json"


def load_coco(path: str | Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
        return COCO(str(path))


def test_ids(coco: COCO, split: str = "test") -> dict[int, str]:
    """image id -> the image's path relative to the benchmark root, the id string of de-duplication."""
    return {img_id: f"detection/images/{split}/{img['file_name']}" for img_id, img in coco.imgs.items()}


def keypoint_categories(coco: COCO) -> list[int]:
    """Category ids that carry keypoints (every category in the synthetic benchmark, `person` in COCO)."""
    return sorted(cid for cid, cat in coco.cats.items() if cat.get("keypoints"))


def keypoint_names(coco: COCO) -> list[str]:
    cats = keypoint_categories(coco)
    return list(coco.cats[cats[0]]["keypoints"]) if cats else []


def flip_index(names: list[str]) -> list[int]:
    """Keypoint permutation of a horizontal flip: 'left*' <-> 'right*' by name; unpaired names stay."""
    lowered = [name.lower() for name in names]
    index = list(range(len(names)))
    for i, name in enumerate(lowered):
        for side, other in (("left", "right"), ("right", "left")):
            if side in name and name.replace(side, other) in lowered:
                index[i] = lowered.index(name.replace(side, other))
    return index


def oks_sigmas(coco: COCO) -> np.ndarray:
    """Per-keypoint OKS sigmas: a category's own `sigmas`, COCO's for 17 keypoints, else a uniform 0.07."""
    cats = keypoint_categories(coco)
    if not cats:
        return np.zeros(0)
    cat = coco.cats[cats[0]]
    if cat.get("sigmas"):
        return np.asarray(cat["sigmas"], dtype=np.float64)
    k = len(cat["keypoints"])
    return COCO_SIGMAS.copy() if k == len(COCO_SIGMAS) else np.full(k, DEFAULT_SIGMA)


class CocoDense(torch.utils.data.Dataset):
    """One split for one dense task: (float image CxHxW in [0, 1], target dict) at the stored image size.

    Targets hold `boxes` (xyxy), `labels` (1..C for detection/instance, all 1 for class-agnostic pose),
    `image_id`, and `masks` (instance) or `keypoints` (pose, NxKx3). Crowd and degenerate boxes are dropped;
    with `train`, images without a usable object are dropped too (as torchvision's references do).
    Decoded samples are kept in memory up to `cache_mb` (a short run passes over a small set many times:
    decoding and rasterising masks again each pass was ~5% of a training step); past it they are read again.
    """

    def __init__(self, benchmark: str | Path, split: str, task: str, train: bool = False, flip: bool = False,
                 seed: int = 0, cache_mb: float = 512.0) -> None:
        if task not in DENSE_TASKS:
            raise ValueError(f"task={task!r}: choose one of {DENSE_TASKS}")
        self.image_dir, annotation_file = split_paths(benchmark, split)
        self.split, self.task, self.flip = split, task, flip
        self.coco = load_coco(annotation_file)
        self.rng = random.Random(seed)
        self.cache: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.cache_room = int(cache_mb * 2**20)  # bytes left for cached samples
        if task == "pose":  # class-agnostic: every keypoint category is the one "object" class
            self.category_ids = keypoint_categories(self.coco)
            if not self.category_ids:
                raise ValueError(f"{annotation_file}: no category has keypoints; the pose task needs them")
            self.label_of = dict.fromkeys(self.category_ids, 1)
        else:
            self.category_ids = sorted(self.coco.cats)
            self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.names = keypoint_names(self.coco)
        self.flip_index = flip_index(self.names)
        self.ids = sorted(self.coco.imgs)
        if train:
            self.ids = [i for i in self.ids if self._annotations(i)]

    @property
    def num_classes(self) -> int:
        """Foreground classes (the model adds background)."""
        return 1 if self.task == "pose" else len(self.category_ids)

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def category_of(self, label: int) -> int:
        """Model label -> COCO category id (pose predictions go to the first keypoint category)."""
        return self.category_ids[label - 1]

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        anns = []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            if ann.get("iscrowd", 0) or ann["category_id"] not in self.label_of:
                continue
            if ann["bbox"][2] < 1 or ann["bbox"][3] < 1:
                continue
            if self.task == "pose" and not any(v > 0 for v in ann.get("keypoints", [])[2::3]):
                continue
            anns.append(ann)
        return anns

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        if image_id in self.cache:
            image, target = self.cache[image_id]
            image, target = image.clone(), {k: v.clone() for k, v in target.items()}  # callers may write to them
        else:
            image, target = self._load(image_id)
            size = image.nbytes + sum(v.nbytes for v in target.values())
            if size <= self.cache_room:
                self.cache_room -= size
                self.cache[image_id] = (image.clone(), {k: v.clone() for k, v in target.items()})
        if self.flip and self.rng.random() < 0.5:
            image, target = hflip(image, target, self.flip_index)
        return image, target

    def _load(self, image_id: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as pil:
            array = np.asarray(pil.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
        anns = self._annotations(image_id)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }
        height, width = image.shape[-2:]
        if self.task == "instance":
            masks = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width,
                                                                                           dtype=torch.uint8)
        if self.task == "pose":
            keypoints = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32)
            target["keypoints"] = keypoints.reshape(len(anns), self.num_keypoints, 3)
        return image, target


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor], index: list[int]) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its target; keypoints move to x' = W - x and swap left/right by `index`."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        keypoints = target["keypoints"][:, index].clone()
        keypoints[..., 0] = width - keypoints[..., 0]
        keypoints[keypoints[..., 2] == 0] = 0  # unlabelled points stay at the origin, as in COCO
        target["keypoints"] = keypoints
    return image.flip(-1), target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Lists of images and targets: the R-CNN transform batches (and pads) them itself."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def to_coco_results(outputs: list[dict[str, torch.Tensor]], image_ids: list[int], dataset: CocoDense
                    ) -> list[dict[str, Any]]:
    """torchvision R-CNN outputs (already at stored image size) -> COCO result dicts with category ids."""
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        scores = output["scores"].tolist()
        labels = output["labels"].tolist()
        rles = None
        if "masks" in output:
            binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for i, (score, label) in enumerate(zip(scores, labels, strict=True)):
            result = {"image_id": image_id, "category_id": dataset.category_of(label), "score": score,
                      "bbox": [round(v, 2) for v in boxes[i].tolist()]}
            if rles is not None:
                result["segmentation"] = rles[i]
            if "keypoints" in output:
                result["keypoints"] = [round(v, 2) for v in output["keypoints"][i].reshape(-1).tolist()]
            results.append(result)
    return results


def _keypoint_gt(coco_gt: COCO) -> COCO:
    """A copy of the ground truth for class-agnostic keypoint AP: keypoint objects only, in one category."""
    cats = keypoint_categories(coco_gt)
    anns = []
    for ann in coco_gt.dataset["annotations"]:
        if ann["category_id"] in cats and ann.get("keypoints"):
            visible = sum(1 for v in ann["keypoints"][2::3] if v > 0)
            anns.append({**ann, "category_id": cats[0], "num_keypoints": ann.get("num_keypoints", visible)})
    gt = COCO()
    gt.dataset = {"images": coco_gt.dataset["images"], "annotations": anns,
                  "categories": [coco_gt.cats[cats[0]]]}
    gt.createIndex()
    return gt


FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def coco_evaluate(coco_gt: COCO, detections: list[dict], iou_type: str, image_ids: list[int] | None = None
                  ) -> dict[str, float]:
    """COCO AP, AP50, AP75 (stats[0..2]) of `detections` over `image_ids` (all images when None).

    Detections are COCO result dicts (original coordinates, category ids); only the field of `iou_type` is
    passed on, so pycocotools does not derive one kind of geometry from another. No detections: AP 0.0.
    No ground-truth object among the chosen images: NaN (AP is undefined there). Keypoint AP is
    class-agnostic (every keypoint category counts as one, like COCO's person) with `oks_sigmas(coco_gt)`.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type={iou_type!r}: choose one of {IOU_TYPES}")
    with contextlib.redirect_stdout(io.StringIO()):
        if iou_type == "keypoints":
            sigmas = oks_sigmas(coco_gt)
            coco_gt = _keypoint_gt(coco_gt)
            cat_id = coco_gt.dataset["categories"][0]["id"]
        ids = sorted(coco_gt.imgs) if image_ids is None else sorted(set(image_ids))
        chosen = set(ids)
        if not ids or not coco_gt.getAnnIds(imgIds=ids):  # getAnnIds([]) would mean every image
            return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
        field = FIELDS[iou_type]
        results = []
        for det in detections:
            if det["image_id"] in chosen and det.get(field) is not None:
                result = {"image_id": det["image_id"], "category_id": det["category_id"], "score": det["score"],
                          field: det[field]}
                if iou_type == "keypoints":
                    result["category_id"] = cat_id
                results.append(result)
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        evaluator.params.imgIds = ids
        if iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:3]]
    return {key: (s if s >= 0 else float("nan")) for key, s in zip(("AP", "AP50", "AP75"), stats, strict=True)}

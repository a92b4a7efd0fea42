"""Synthetic transfer benchmarks drawn from the corpus's own world: ImageFolder, COCO JSON and VOC layouts.

The classes are the corpus's most frequent concepts, so pretraining has seen them under noisy tags; the scenes
are new (seeded by the benchmark seed, benchmark, split and index). A known fraction of every test split is
planted with edited copies of corpus training images, annotations carried through the edit, so de-duplication
can be scored against ground truth (`near_duplicates.json`) and its effect on transfer metrics measured.

Layout under `bench.root`:
    classification/{train,val,test}/<class name>/<NNNNNN>.jpg
    detection/images/{train,val,test}/<NNNNNN>.jpg, detection/annotations/instances_{split}.json
    segmentation/JPEGImages/<NNNNNN>.jpg, segmentation/SegmentationClass/<NNNNNN>.png,
        segmentation/ImageSets/Segmentation/{train,val,test}.txt (names numbered on through the splits)
    near_duplicates.json, manifest.json (written last: its presence means the set is complete)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pretrain.atomic import atomic_write_json, atomic_write_text
from pretrain.config import SynthConfig
from pretrain.synthweb.corpus import MIN_VISIBLE_FRACTION, corpus_scene
from pretrain.synthweb.render import KEYPOINT_NAMES, KEYPOINT_SKELETON, ObjectSpec, Scene, render_scene
from pretrain.synthweb.world import World, make_world
from transfer.config import SynthBenchConfig
from transfer.edits import apply_edit, jpeg_recompress, random_edit

FORMAT = "webly-synthbench/1"
BENCHMARKS = ("classification", "detection", "segmentation")
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
PARTIAL = ".synthbench-partial"  # marks a root being (re)written by synthbench
MAX_TRIES = 50  # scene re-draws before settling for the last one (in practice a few at most)
MAIN_RADIUS = (0.22, 0.30)  # classification: the labelled object, as a fraction of the side
DISTRACTOR_RADIUS = (0.12, 0.18)  # classification: always smaller than the labelled object
DENSE_RADIUS = (0.12, 0.30)  # detection / segmentation objects
MAIN_MIN_VISIBLE = 0.6  # classification: the labelled object stays well visible


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark image to write: where it goes and, for a planted near-duplicate, its corpus source."""

    benchmark: str
    split: str
    index: int  # position in the split: seeds the scene
    name: str  # file stem
    label: int = -1  # classification: class position 0..C-1
    corpus_index: int = -1  # >= 0: an edited copy of corpus training image `corpus_index`


def benchmark_classes(world: World, num_classes: int) -> list[int]:
    """Concept indices of the `num_classes` most frequent concepts, most frequent first (ties: lower index)."""
    if not 1 <= num_classes <= world.num_concepts:
        raise ValueError(f"num_classes={num_classes}: the world has {world.num_concepts} concepts")
    return sorted(range(world.num_concepts), key=lambda i: (-world.frequencies[i], i))[:num_classes]


@functools.cache
def voc_palette() -> tuple[int, ...]:
    """The Pascal VOC colour map (256 RGB entries, flat): label k gets VOC's colour for class k."""
    palette = []
    for k in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((k >> 0) & 1) << (7 - bit)
            g |= ((k >> 1) & 1) << (7 - bit)
            b |= ((k >> 2) & 1) << (7 - bit)
            k >>= 3
        palette += [r, g, b]
    return tuple(palette)


def _code(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))  # stable across processes, unlike hash()


@functools.cache
def _world(num_concepts: int, seed: int, zipf: float) -> World:
    return make_world(num_concepts, seed, zipf)


class _Sampler:
    """Draws the benchmark scenes: class concepts as labels, the other concepts (by world frequency) as clutter."""

    def __init__(self, world: World, classes: list[int], size: int, rng: np.random.Generator) -> None:
        self.world, self.classes, self.size, self.rng = world, classes, size, rng
        others = [i for i in range(world.num_concepts) if i not in set(classes)]
        self.others = np.asarray(others, dtype=np.int64)
        weights = world.frequencies[self.others] if others else np.zeros(0)
        self.other_p = weights / weights.sum() if others else weights

    def spec(self, concept: int, radius: tuple[float, float], placed: list[ObjectSpec], lo: float = 0.15,
             hi: float = 0.85) -> ObjectSpec:
        rng, size = self.rng, self.size
        r = float(rng.uniform(*radius)) * size
        if rng.random() < 0.1:  # now and then anywhere, cut by the border
            lo, hi = 0.0, 1.0
        # Of a few candidate centres keep the one farthest from the others: occlusion, but rarely total.
        candidates = rng.uniform(lo * size, hi * size, (6, 2))
        gaps = [min((math.dist(p, (o.x, o.y)) - 0.6 * (r + o.radius) for o in placed), default=0.0)
                for p in candidates]
        x, y = candidates[int(np.argmax(gaps))]
        return ObjectSpec(int(concept), float(x), float(y), r, float(rng.uniform(0, 2 * math.pi)))

    def distractor(self) -> int:
        return int(self.rng.choice(self.others, p=self.other_p))

    def classification(self, label: int) -> Scene:
        """A scene whose largest, well visible object is class `label`."""
        rng, size = self.rng, self.size
        for _ in range(MAX_TRIES):
            main = self.spec(self.classes[label], MAIN_RADIUS, [], 0.3, 0.7)
            specs: list[ObjectSpec] = [main]
            for _ in range(int(rng.integers(0, 3)) if len(self.others) else 0):
                specs.append(self.spec(self.distractor(), DISTRACTOR_RADIUS, specs, 0.1, 0.9))
            order = rng.permutation(len(specs))  # the labelled object may be drawn under the clutter
            pos = int(np.flatnonzero(order == 0)[0])
            scene = render_scene(self.world, [specs[i] for i in order], size, rng)
            target = scene.objects[pos]
            rest = [o.area for i, o in enumerate(scene.objects) if i != pos]
            if target.visible_fraction >= MAIN_MIN_VISIBLE and all(target.area > a for a in rest):
                break
        return scene

    def dense(self, max_objects: int) -> tuple[Scene, list[tuple[int, int]]]:
        """1..max_objects class objects, each >= 25% visible, and 0-1 distractor; (scene, [(position, k)])."""
        rng = self.rng
        for _ in range(MAX_TRIES):
            labels = rng.integers(len(self.classes), size=int(rng.integers(1, max_objects + 1)))
            specs: list[ObjectSpec] = []
            for label in labels:
                specs.append(self.spec(self.classes[label], DENSE_RADIUS, specs))
            kinds = [int(k) + 1 for k in labels]
            if len(self.others) and rng.random() < 0.5:
                at = int(rng.integers(len(specs) + 1))
                specs.insert(at, self.spec(self.distractor(), DENSE_RADIUS, specs))
                kinds.insert(at, 0)
            scene = render_scene(self.world, specs, self.size, rng)
            annotated = [(i, k) for i, k in enumerate(kinds) if k]
            if all(scene.objects[i].visible_fraction >= MIN_VISIBLE_FRACTION for i, _ in annotated):
                break
        return scene, annotated


# ---------------------------------------------------------------------------------------------- near-duplicates


def _corpus_fit(world: World, corpus: SynthConfig, index: int, classes: list[int]) -> tuple[int, bool]:
    """(class position of the corpus image's clearly largest object or -1, whether it suits a dense benchmark:
    at least one class object, and every class object either hidden or >= 25% visible)."""
    objects = corpus_scene(world, corpus, "train", index).objects
    by_area = sorted(objects, key=lambda o: -o.area)
    top = by_area[0]
    second = by_area[1].area if len(by_area) > 1 else 0
    label = -1
    if top.concept in classes and top.visible_fraction >= 0.5 and top.area >= 1.2 * second:
        label = classes.index(top.concept)
    shown = [o for o in objects if o.concept in classes and o.area > 0]
    dense = bool(shown) and all(o.visible_fraction >= MIN_VISIBLE_FRACTION for o in shown)
    return label, dense


def plan(bench: SynthBenchConfig, corpus: SynthConfig) -> list[Task]:
    """Every image of every benchmark, in write order, with the planted near-duplicates placed (seeded)."""
    world = _world(corpus.num_concepts, corpus.seed, corpus.zipf)
    classes = benchmark_classes(world, bench.num_classes)
    counts = dict(zip(SPLITS, (bench.train_images, bench.val_images, bench.test_images), strict=True))
    planted = int(round(bench.near_duplicate_fraction * bench.test_images))
    if not 0 <= planted <= bench.test_images:
        raise ValueError(f"near_duplicate_fraction={bench.near_duplicate_fraction}: must be in [0, 1]")
    rng = np.random.default_rng([bench.seed, _code("near-duplicates")])
    order = rng.permutation(corpus.num_images)  # corpus images are tried in this order, each used once
    fits: dict[int, tuple[int, bool]] = {}
    used: set[int] = set()

    def find(benchmark: str, label: int) -> tuple[int, int]:
        """(corpus index, class position) of the first unused corpus image that suits `benchmark`."""
        fallback = None
        for index in map(int, order):
            if index in used:
                continue
            if index not in fits:
                fits[index] = _corpus_fit(world, corpus, index, classes)
            got, dense = fits[index]
            if benchmark != "classification" and dense or benchmark == "classification" and got == label:
                used.add(index)
                return index, got
            if benchmark == "classification" and got >= 0 and fallback is None:
                fallback = index
        if fallback is None:  # keep the classes balanced when we can; plant an unbalanced copy when we cannot
            raise ValueError(f"corpus of {corpus.num_images} images has too few suitable images to plant "
                             f"{planted} near-duplicates in {benchmark}; lower near_duplicate_fraction")
        used.add(fallback)
        return fallback, fits[fallback][0]

    tasks: list[Task] = []
    for benchmark in BENCHMARKS:
        offset = 0
        for split in SPLITS:
            chosen = set()
            if split == "test" and planted:  # spread through the split, not at its end
                chosen = {int(i) for i in rng.choice(counts[split], planted, replace=False)}
            for index in range(counts[split]):
                label = index % bench.num_classes if benchmark == "classification" else -1
                name = f"{offset + index if benchmark == 'segmentation' else index:06d}"
                source = -1
                if index in chosen:
                    source, label = find(benchmark, label)
                tasks.append(Task(benchmark, split, index, name, label, source))
            offset += counts[split]
    return tasks


def _retained(edited_area: int, area: float, box: tuple[float, ...], size: int) -> float:
    """Edited area over `area` scaled by the edit's zoom: how much of an object survived the edit."""
    zoom = (size / (box[2] - box[0])) * (size / (box[3] - box[1]))
    return edited_area / max(area * zoom, 1e-9)


def _near_duplicate(world: World, corpus: SynthConfig, task: Task, classes: list[int], size: int,
                    rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, np.ndarray, list]], str, dict]:
    """An edited copy of a corpus image: (image, [(k, mask, keypoints)] of its class objects, edit, parameters).
    Crops that would cut the labelled object (classification) or leave a class object < 25% visible (dense)
    are re-drawn; the last resort is the same edit without its crop, which cuts nothing."""
    scene = corpus_scene(world, corpus, "train", task.corpus_index)
    source = jpeg_recompress(scene.image, corpus.jpeg_quality)  # exactly the corpus sample's pixels
    masks, points = [o.mask for o in scene.objects], [o.keypoints for o in scene.objects]
    edit = random_edit(rng)
    main = max(range(len(scene.objects)), key=lambda i: scene.objects[i].area)
    for attempt in range(MAX_TRIES + 1):
        if attempt == MAX_TRIES:
            edit = "+".join(s for s in edit.split("+") if s != "crop") or "resize"
        out = apply_edit(source, edit, rng, masks, points, (size, size))
        areas = [int(m.sum()) for m in out.masks]
        if task.benchmark == "classification":
            ok = _retained(areas[main], scene.objects[main].area, out.source_box, size) >= 0.6 and all(
                areas[main] > a for i, a in enumerate(areas) if i != main)
        else:
            kept = [i for i, o in enumerate(scene.objects) if o.concept in classes and areas[i] > 0]
            ok = bool(kept) and all(
                _retained(areas[i], scene.objects[i].full_area, out.source_box, size) >= MIN_VISIBLE_FRACTION
                for i in kept)
        if ok or attempt == MAX_TRIES:
            break
    objects = [(classes.index(o.concept) + 1, out.masks[i], out.keypoints[i]) for i, o in enumerate(scene.objects)
               if o.concept in classes and areas[i] > 0]
    return out.image, objects, edit, out.params


def _annotation(k: int, mask: np.ndarray, keypoints: list) -> dict[str, Any]:
    """A COCO instance (without ids) of class k: visible-part box, RLE, COCO-coded keypoints."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    flat: list[float] = []
    for x, y, v in keypoints:  # synthweb's 0 outside / 1 occluded / 2 visible are COCO's codes already
        flat += [round(float(x), 2), round(float(y), 2), int(v)] if v else [0, 0, 0]
    return {"category_id": k, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()),
            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
            "keypoints": flat, "num_keypoints": sum(1 for v in flat[2::3] if v > 0), "iscrowd": 0}


@dataclasses.dataclass
class Rendered:
    image: Image.Image
    objects: list[tuple[int, np.ndarray, list]]  # dense: (class k in 1..C, visible mask, keypoints) to annotate
    edit: str = ""  # near-duplicates: the edit applied to the corpus image
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # and its drawn parameters


def render_task(bench: SynthBenchConfig, corpus: SynthConfig, task: Task) -> Rendered:
    """The image of one task and the class objects it annotates: a pure function of the configs and the task."""
    world = _world(corpus.num_concepts, corpus.seed, corpus.zipf)
    classes = benchmark_classes(world, bench.num_classes)
    rng = np.random.default_rng([bench.seed, _code(task.benchmark), _code(task.split), task.index])
    size = bench.cls_image_size if task.benchmark == "classification" else bench.dense_image_size
    if task.corpus_index >= 0:
        return Rendered(*_near_duplicate(world, corpus, task, classes, size, rng))
    if task.benchmark == "classification":
        return Rendered(_Sampler(world, classes, size, rng).classification(task.label).image, [])
    scene, annotated = _Sampler(world, classes, size, rng).dense(bench.max_objects)
    return Rendered(scene.image, [(k, scene.objects[i].mask, scene.objects[i].keypoints) for i, k in annotated])


def task_path(bench: SynthBenchConfig, corpus: SynthConfig, task: Task) -> str:
    """The task's image path relative to the benchmark root: its id in `near_duplicates.json` and dedup."""
    if task.benchmark == "classification":
        world = _world(corpus.num_concepts, corpus.seed, corpus.zipf)
        name = world.concepts[benchmark_classes(world, bench.num_classes)[task.label]].name
        return f"classification/{task.split}/{name}/{task.name}.jpg"
    if task.benchmark == "detection":
        return f"detection/images/{task.split}/{task.name}.jpg"
    return f"segmentation/JPEGImages/{task.name}.jpg"


def run_task(bench: SynthBenchConfig, corpus: SynthConfig, task: Task) -> dict[str, Any]:
    """Render and write one benchmark image; returns what the split's index files need."""
    rendered = render_task(bench, corpus, task)
    root, rel = Path(bench.root), task_path(bench, corpus, task)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    rendered.image.save(root / rel, format="JPEG", quality=JPEG_QUALITY)
    record: dict[str, Any] = {"task": task, "edit": rendered.edit, "params": rendered.params, "id": rel}
    if task.benchmark == "detection":
        record["annotations"] = [_annotation(k, m, p) for k, m, p in rendered.objects]
    elif task.benchmark == "segmentation":
        labels = np.zeros(rendered.image.size[::-1], dtype=np.uint8)
        for k, mask, _ in rendered.objects:  # visible masks never overlap; distractors stay background
            labels[mask] = k
        png = Image.fromarray(labels, "P")
        png.putpalette(voc_palette())
        out = root / "segmentation/SegmentationClass" / f"{task.name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        png.save(out, format="PNG")
    return record


# ---------------------------------------------------------------------------------------------------- writing


def _coco(split: str, records: list[dict[str, Any]], class_names: list[str], size: int) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": f"{record['task'].name}.jpg", "width": size, "height": size})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    skeleton = [[a + 1, b + 1] for a, b in KEYPOINT_SKELETON]
    categories = [{"id": k, "name": name, "supercategory": "shape", "keypoints": list(KEYPOINT_NAMES),
                   "skeleton": skeleton} for k, name in enumerate(class_names, start=1)]
    info = {"description": f"webly synthetic detection benchmark, {split} split", "version": FORMAT}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _clear(root: Path) -> None:
    """Remove what an earlier run wrote here, the manifest first; refuse to touch benchmarks it did not write."""
    ours = (root / PARTIAL).exists() or (root / "manifest.json").exists() and (
        json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("format") == FORMAT)
    if not ours and any((root / name).exists() for name in BENCHMARKS):
        raise ValueError(f"{root}: holds benchmarks that synthbench did not write; choose another root")
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL).touch()  # until the manifest is written: a crash leaves a root we may clear again
    for name in ("manifest.json", "near_duplicates.json"):
        (root / name).unlink(missing_ok=True)
    for name in BENCHMARKS:
        if (root / name).exists():
            shutil.rmtree(root / name)


def write_benchmarks(bench: SynthBenchConfig, corpus: SynthConfig, processes: int = 1) -> dict[str, Any]:
    """Write the classification, detection and segmentation benchmarks under `bench.root` from the world of
    `corpus`, with planted near-duplicates of its training images; returns the manifest.

    Every image is a pure function of (bench.seed, benchmark, split, index) and the plan, so the bytes written
    do not depend on `processes`."""
    if bench.max_objects < 1:
        raise ValueError(f"max_objects={bench.max_objects}: a detection image needs at least one object")
    root = Path(bench.root)
    _clear(root)
    tasks = plan(bench, corpus)
    world = _world(corpus.num_concepts, corpus.seed, corpus.zipf)
    classes = benchmark_classes(world, bench.num_classes)
    names = [world.concepts[c].name for c in classes]
    job = functools.partial(run_task, bench, corpus)
    records: list[dict[str, Any]] = []
    with tqdm(total=len(tasks), desc="synthbench", unit="img") as bar:
        if processes > 1 and len(tasks) > 1:
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                for record in pool.imap(job, tasks, chunksize=16):
                    records.append(record)
                    bar.update()
        else:
            for task in tasks:
                records.append(job(task))
                bar.update()

    counts: dict[str, dict[str, int]] = {b: dict.fromkeys(SPLITS, 0) for b in BENCHMARKS}
    planted: dict[str, int] = dict.fromkeys(BENCHMARKS, 0)
    truth = []
    for record in records:
        task = record["task"]
        counts[task.benchmark][task.split] += 1
        if task.corpus_index >= 0:
            planted[task.benchmark] += 1
            truth.append({"id": record["id"], "benchmark": task.benchmark, "split": task.split,
                          "corpus_key": f"train-{task.corpus_index:08d}", "edit": record["edit"],
                          "params": record["params"]})
    for split in SPLITS:
        chosen = [r for r in records if r["task"].benchmark == "detection" and r["task"].split == split]
        coco = _coco(split, chosen, names, bench.dense_image_size)
        atomic_write_text(root / f"detection/annotations/instances_{split}.json",
                          json.dumps(coco, separators=(",", ":")))
        listed = [r["task"].name for r in records if r["task"].benchmark == "segmentation" and r["task"].split == split]
        atomic_write_text(root / f"segmentation/ImageSets/Segmentation/{split}.txt", "".join(f"{n}\n" for n in listed))
    atomic_write_json(root / "near_duplicates.json", truth)

    manifest = {
        "format": FORMAT,
        "classes": [{"id": k, "name": name, "concept": int(c), "frequency": round(float(world.frequencies[c]), 6)}
                    for k, (name, c) in enumerate(zip(names, classes, strict=True), start=1)],
        "counts": counts,
        "near_duplicates": planted,
        "config": {"bench": dataclasses.asdict(bench), "corpus": dataclasses.asdict(corpus)},
    }
    atomic_write_json(root / "manifest.json", manifest)
    (root / PARTIAL).unlink()
    return manifest

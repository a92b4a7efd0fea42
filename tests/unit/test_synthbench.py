"""Synthetic benchmarks: layouts the readers expect, exact annotations, planted near-duplicates, determinism;
and the near-duplicate edits that carry annotations along."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pretrain.config import SynthConfig
from pretrain.synthweb import KEYPOINT_NAMES, KEYPOINT_SKELETON, corpus_sample, make_world
from pretrain.synthweb.corpus import corpus_scene
from transfer.coco import load_coco
from transfer.config import SynthBenchConfig
from transfer.edits import ALL_EDITS, EDITS, apply_edit, crop_resize, tight_box, transform_mask
from transfer.synthbench import (
    BENCHMARKS,
    SPLITS,
    benchmark_classes,
    plan,
    render_task,
    task_path,
    voc_palette,
    write_benchmarks,
)

CORPUS = SynthConfig(num_images=300, image_size=48, num_concepts=20)
BENCH = SynthBenchConfig(num_classes=4, cls_image_size=32, dense_image_size=48, max_objects=3, train_images=12,
                         val_images=4, test_images=20, near_duplicate_fraction=0.25)
PLANTED = 5  # round(0.25 * 20)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")  # numpy 2 vs annToMask


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> SynthBenchConfig:
    cfg = dataclasses.replace(BENCH, root=str(tmp_path_factory.mktemp("bench")))
    write_benchmarks(cfg, CORPUS, processes=1)
    return cfg


@pytest.fixture(scope="module")
def world():
    return make_world(CORPUS.num_concepts, CORPUS.seed, CORPUS.zipf)


@pytest.fixture(scope="module")
def class_names(world) -> list[str]:
    return [world.concepts[c].name for c in benchmark_classes(world, BENCH.num_classes)]


def _files(root: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _tasks(cfg: SynthBenchConfig, benchmark: str, split: str):
    return [t for t in plan(cfg, CORPUS) if t.benchmark == benchmark and t.split == split]


def test_layout_counts_and_manifest(bench, world, class_names):
    root = Path(bench.root)
    manifest = json.loads((root / "manifest.json").read_text())
    counts = {"train": 12, "val": 4, "test": 20}
    assert manifest["counts"] == {b: counts for b in BENCHMARKS}
    assert manifest["near_duplicates"] == dict.fromkeys(BENCHMARKS, PLANTED)
    assert [c["name"] for c in manifest["classes"]] == class_names
    frequencies = [world.frequencies[c["concept"]] for c in manifest["classes"]]
    assert frequencies == sorted(frequencies, reverse=True) and min(frequencies) >= np.sort(world.frequencies)[-4]
    assert manifest["config"]["corpus"]["num_images"] == CORPUS.num_images

    for split, n in counts.items():
        folders = sorted(p.name for p in (root / "classification" / split).iterdir())
        assert folders == sorted(class_names)  # ImageFolder classes are the concept names
        per_class = [len(list((root / "classification" / split / f).glob("*.jpg"))) for f in folders]
        assert sum(per_class) == n and max(per_class) - min(per_class) <= 1  # balanced
        assert len(list((root / "detection/images" / split).glob("*.jpg"))) == n
        listed = (root / f"segmentation/ImageSets/Segmentation/{split}.txt").read_text().split()
        assert len(listed) == n
        for name in listed:
            assert (root / f"segmentation/JPEGImages/{name}.jpg").is_file()
            assert (root / f"segmentation/SegmentationClass/{name}.png").is_file()
    assert len(list((root / "segmentation/JPEGImages").glob("*.jpg"))) == sum(counts.values())  # names unique
    with Image.open(next((root / "classification/train").glob("*/*.jpg"))) as image:
        assert image.size == (32, 32) and image.format == "JPEG"
    with Image.open(next((root / "detection/images/test").glob("*.jpg"))) as image:
        assert image.size == (48, 48)


def test_coco_annotations_are_exact(bench, class_names):
    root = Path(bench.root)
    for split in SPLITS:
        coco = load_coco(root / f"detection/annotations/instances_{split}.json")
        cats = [coco.cats[k] for k in sorted(coco.cats)]
        assert [c["id"] for c in cats] == [1, 2, 3, 4] and [c["name"] for c in cats] == class_names
        assert all(c["keypoints"] == list(KEYPOINT_NAMES) and c["supercategory"] == "shape" for c in cats)
        assert cats[0]["skeleton"] == [[a + 1, b + 1] for a, b in KEYPOINT_SKELETON]
        tasks = _tasks(bench, "detection", split)
        assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == [f"{t.name}.jpg" for t in tasks]
        for image_id, task in zip(sorted(coco.imgs), tasks, strict=True):
            assert (coco.imgs[image_id]["width"], coco.imgs[image_id]["height"]) == (48, 48)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            rendered = render_task(bench, CORPUS, task)
            assert len(anns) == len(rendered.objects) >= 1
            for ann, (k, mask, keypoints) in zip(anns, rendered.objects, strict=True):
                assert ann["category_id"] == k and ann["iscrowd"] == 0
                decoded = coco.annToMask(ann).astype(bool)
                assert np.array_equal(decoded, mask)  # the saved RLE is the rendered visible mask
                assert ann["area"] == int(mask.sum()) > 0
                x, y, w, h = ann["bbox"]
                assert (x, y, x + w, y + h) == tight_box(mask)
                rows, cols = np.flatnonzero(decoded.any(1)), np.flatnonzero(decoded.any(0))
                assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x, y, x + w, y + h)  # tight
                flat = ann["keypoints"]
                assert len(flat) == 3 * len(KEYPOINT_NAMES)
                assert ann["num_keypoints"] == sum(v > 0 for v in flat[2::3])
                for j, (kx, ky, v) in enumerate(keypoints):
                    assert flat[3 * j + 2] == v and v in (0, 1, 2)
                    if v == 0:  # COCO: unlabelled points sit at the origin
                        assert flat[3 * j : 3 * j + 2] == [0, 0]
                    else:
                        assert flat[3 * j : 3 * j + 2] == pytest.approx([kx, ky], abs=0.01)
                        assert 0 <= kx < 48 and 0 <= ky < 48


def test_keypoint_visibility_codes_occur(bench):
    coco = load_coco(Path(bench.root) / "detection/annotations/instances_train.json")
    codes = [v for ann in coco.dataset["annotations"] for v in ann["keypoints"][2::3]]
    assert set(codes) <= {0, 1, 2} and codes.count(2) > len(codes) / 2


def test_voc_masks_are_palette_pngs_of_class_indices(bench):
    root = Path(bench.root) / "segmentation"
    seen: set[int] = set()
    for split in SPLITS:
        for task in _tasks(bench, "segmentation", split):
            with Image.open(root / f"SegmentationClass/{task.name}.png") as png:
                assert png.mode == "P" and png.size == (48, 48)
                assert tuple(png.getpalette()[:9]) == voc_palette()[:9] == (0, 0, 0, 128, 0, 0, 0, 128, 0)
                labels = np.asarray(png)
            assert set(np.unique(labels)) <= set(range(BENCH.num_classes + 1))
            seen |= set(np.unique(labels).tolist())
            if split == "test":  # the labels are the class objects' masks (distractors are background)
                expected = np.zeros((48, 48), dtype=np.uint8)
                for k, mask, _ in render_task(bench, CORPUS, task).objects:
                    expected[mask] = k
                assert np.array_equal(labels, expected)
    assert seen == set(range(BENCH.num_classes + 1))


def _small(data: bytes | Path, box: list[float] | None = None) -> np.ndarray:
    """32 px thumbnail of `box` (default: all) of an image, each channel standardised: a pixel distance that
    a recolour (brightness, contrast) does not inflate."""
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB")
    pixels = np.asarray(image.resize((32, 32), Image.BILINEAR, box=box), dtype=np.float32)
    return (pixels - pixels.mean((0, 1))) / (pixels.std((0, 1)) + 1e-3)


def test_near_duplicates_are_planted_edited_copies(bench, world):
    root = Path(bench.root)
    truth = json.loads((root / "near_duplicates.json").read_text())
    assert len(truth) == 3 * PLANTED
    keys = [r["corpus_key"] for r in truth]
    assert len(set(keys)) == len(keys)  # each corpus image planted once
    corpus_images = {i: corpus_sample(world, CORPUS, "train", i)["jpg"] for i in range(0, 300, 10)}
    for benchmark in BENCHMARKS:
        records = [r for r in truth if r["benchmark"] == benchmark]
        assert len(records) == PLANTED
        tasks = _tasks(bench, benchmark, "test")
        ids = [task_path(bench, CORPUS, t) for t in tasks]
        positions = sorted(ids.index(r["id"]) for r in records)
        assert positions != list(range(20 - PLANTED, 20))  # spread through the split, not appended
        for record in records:
            assert record["split"] == "test" and record["edit"] in ALL_EDITS
            assert record["id"].startswith({"classification": "classification/test/",
                                            "detection": "detection/images/test/",
                                            "segmentation": "segmentation/JPEGImages/"}[benchmark])
            assert (root / record["id"]).is_file()
            key = record["corpus_key"]
            assert key.startswith("train-") and len(key) == 14 and 0 <= int(key[6:]) < CORPUS.num_images
            index, box = int(key[6:]), record["params"].get("crop")  # a crop is compared with its region
            assert ("crop" in record["edit"]) == (box is not None)
            copy = _small(root / record["id"])
            source = np.abs(copy - _small(corpus_sample(world, CORPUS, "train", index)["jpg"], box)).mean()
            others = [np.abs(copy - _small(jpg, box)).mean() for i, jpg in corpus_images.items() if i != index]
            assert source < 0.5 * min(others), (record, source, min(others))
        if benchmark == "detection":  # the corpus scene's class objects, carried through the edit
            coco = load_coco(root / "detection/annotations/instances_test.json")
            by_name = {img["file_name"]: i for i, img in coco.imgs.items()}
            classes = benchmark_classes(world, BENCH.num_classes)
            for record in records:
                box = record["params"].get("crop", (0, 0, CORPUS.image_size, CORPUS.image_size))
                objects = corpus_scene(world, CORPUS, "train", int(record["corpus_key"][6:])).objects
                moved = [(classes.index(o.concept) + 1, transform_mask(o.mask, box, (48, 48)))
                         for o in objects if o.concept in classes]
                moved = [(k, m) for k, m in moved if m.any()]
                anns = coco.loadAnns(coco.getAnnIds(imgIds=by_name[record["id"].rsplit("/", 1)[1]]))
                assert [a["category_id"] for a in anns] == [k for k, _ in moved] and anns
                for ann, (_, mask) in zip(anns, moved, strict=True):
                    assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
        if benchmark == "classification":  # filed under the class of the corpus image's largest object
            classes = benchmark_classes(world, BENCH.num_classes)
            for record in records:
                objects = corpus_scene(world, CORPUS, "train", int(record["corpus_key"][6:])).objects
                largest = max(objects, key=lambda o: o.area)
                assert record["id"].split("/")[2] == world.concepts[largest.concept].name
                assert largest.concept in classes


def test_deterministic_and_independent_of_processes(bench, tmp_path):
    again = dataclasses.replace(bench, root=str(tmp_path / "again"))
    write_benchmarks(again, CORPUS, processes=2)
    first, second = _files(bench.root), _files(again.root)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == ["manifest.json"]  # which names its own root
    m1, m2 = json.loads(first["manifest.json"]), json.loads(second["manifest.json"])
    m1["config"]["bench"].pop("root"), m2["config"]["bench"].pop("root")
    assert m1 == m2

    other = dataclasses.replace(bench, root=str(tmp_path / "other"), seed=bench.seed + 1, train_images=2,
                                val_images=1, test_images=4)
    write_benchmarks(other, CORPUS)
    images = [data for name, data in _files(other.root).items() if name.endswith(".jpg")]
    assert len(images) == 3 * 7 and not set(images) & set(first.values())  # another seed, other scenes


# ----------------------------------------------------------------------------------------------------------- edits


def _scene_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8), "RGB")


def test_crop_moves_masks_boxes_and_keypoints_exactly():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:40, 30:60] = True  # rows 20..39, columns 30..59
    keypoints = [(35.0, 25.0, 2), (5.0, 5.0, 2), (59.5, 59.5, 1), (30.0, 70.0, 0)]
    out = crop_resize(_scene_image(), (10, 10, 60, 60), (100, 100), [mask], [keypoints])
    assert out.image.size == (100, 100) and out.source_box == (10, 10, 60, 60)
    expected = np.zeros((100, 100), dtype=bool)
    expected[20:60, 40:100] = True  # (y - 10) * 2, (x - 10) * 2, clipped to the image
    assert np.array_equal(out.masks[0], expected)
    assert out.boxes == [(40.0, 20.0, 100.0, 60.0)]
    assert out.keypoints == [[(50.0, 30.0, 2), (-10.0, -10.0, 0), (99.0, 99.0, 1), (40.0, 120.0, 0)]]

    # Half size: every output pixel takes the source pixel under its centre.
    small = crop_resize(_scene_image(), (0, 0, 100, 100), (50, 50), [mask])
    assert small.boxes == [(15.0, 10.0, 30.0, 20.0)] and small.masks[0].sum() == 15 * 10


def test_every_edit_keeps_annotations_consistent():
    mask = np.zeros((100, 100), dtype=bool)
    mask[30:70, 20:50] = True
    image = _scene_image()
    for name in ALL_EDITS:
        out = apply_edit(image, name, np.random.default_rng(1), [mask], [[(35.0, 50.0, 2)]], size=(80, 80))
        again = apply_edit(image, name, np.random.default_rng(1), [mask], [[(35.0, 50.0, 2)]], size=(80, 80))
        assert out.edit == name and out.image.size == (80, 80) and out.image.mode == "RGB"
        assert np.array_equal(np.asarray(out.image), np.asarray(again.image)) and out.params == again.params
        assert np.array_equal(out.masks[0], transform_mask(mask, out.source_box, (80, 80)))
        assert out.boxes[0] == tight_box(out.masks[0])
        if "crop" in name:
            x0, y0, x1, y1 = out.source_box
            assert 0.6 - 0.02 <= (x1 - x0) * (y1 - y0) / 100**2 <= 0.9 + 0.02
        else:  # no crop: the frame is the whole image, only scaled
            assert out.source_box == (0, 0, 100, 100) and out.keypoints[0] == [(28.0, 40.0, 2)]
        if "jpeg" in name:
            assert 15 <= out.params["quality"] <= 40
        assert not np.array_equal(np.asarray(out.image), np.asarray(image.resize((80, 80), Image.BICUBIC)))
    names = {apply_edit(image, None, np.random.default_rng(seed)).edit for seed in range(40)}
    assert set(EDITS) <= names <= set(ALL_EDITS)
    with pytest.raises(ValueError, match="unknown step"):
        apply_edit(image, "crop+blur", np.random.default_rng(0))


def test_corpus_scene_recreates_the_corpus_image(world):
    for index in (0, 7, 123):
        scene = corpus_scene(world, CORPUS, "train", index)
        buffer = io.BytesIO()
        scene.image.save(buffer, format="JPEG", quality=CORPUS.jpeg_quality)
        sample = corpus_sample(world, CORPUS, "train", index)
        assert buffer.getvalue() == sample["jpg"]
        present = [o for o in scene.objects if o.visible_fraction >= 0.25]
        assert sample["json"]["meta"]["concepts"] == sorted({o.concept for o in present})
    rle = mask_utils.encode(np.asfortranarray(scene.objects[0].mask.astype(np.uint8)))
    assert mask_utils.area(rle) == scene.objects[0].area


def test_refuses_to_overwrite_benchmarks_it_did_not_write(tmp_path):
    (tmp_path / "detection/images").mkdir(parents=True)  # e.g. a real COCO copy
    with pytest.raises(ValueError, match="did not write"):
        write_benchmarks(dataclasses.replace(BENCH, root=str(tmp_path)), CORPUS)
    assert (tmp_path / "detection/images").is_dir()
    assert voc_palette()[3 * 255 : 3 * 256] == (224, 224, 192)  # VOC's colour of the ignore label

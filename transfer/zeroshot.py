"""Zero-shot classification of a benchmark's classes by an embedding-head run, as DeViSE did for ImageNet.

No benchmark label trains anything: each test image (ImageFolder layout, `classification/<split>/<class>/`) is
embedded by the run's trunk and projection and given the class whose name's tag vector is nearest. Top-1
accuracy is reported beside chance (1 / classes). A class whose name is not a tag of the corpus cannot be
predicted; it stays in the test set (its images count as errors) and is listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pretrain.atomic import atomic_write_json, read_json
from transfer.descriptors import describe
from transfer.embedder import Embedder
from transfer.views import FULL_VIEW

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RESULT_NAME = "zeroshot_classification.json"


def benchmark_class_names(bench_root: str | Path) -> list[str]:
    """Class names in label order: the benchmark manifest's, else the folder names of the training split."""
    root = Path(bench_root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        classes = read_json(manifest).get("classes")
        if classes:
            return [c["name"] for c in sorted(classes, key=lambda c: c["id"])]
    folders = sorted(p.name for p in (root / "classification" / "train").iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no manifest.json classes and no classification/train/<class> folders")
    return folders


def classify(run_dir: str | Path, bench_root: str | Path, split: str = "test", batch_size: int = 256) -> dict[str, Any]:
    """Zero-shot top-1 of the run on the benchmark's classification split, with chance and per-class recall."""
    embedder = Embedder.from_run(run_dir)
    names = benchmark_class_names(bench_root)
    vocab = embedder.index
    known = [n for n in names if n in vocab]
    unknown = [n for n in names if n not in vocab]
    if not known:
        raise ValueError(f"{bench_root}: none of the classes {names} is a tag of {run_dir}'s vocabulary")
    class_vectors = np.concatenate([embedder.embed_text([n]) for n in known])  # C' x D
    folder = Path(bench_root) / "classification" / split
    items, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((folder / name).glob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), path.read_bytes()))
                labels.append(label)
    if not items:
        raise ValueError(f"{folder}: no test images under <class>/ folders")
    found = describe(items, None, embedder.describer(), [FULL_VIEW], embedder.image_size, batch_size,
                     progress=False, strict=True)
    scores = found.vectors.astype(np.float32) @ class_vectors.T
    predicted = np.array([names.index(known[i]) for i in scores.argmax(axis=1)])
    truth = np.asarray(labels)
    per_class = {name: float(np.mean(predicted[truth == k] == k)) for k, name in enumerate(names) if (truth == k).any()}
    heldout = {embedder.tags[i] for i in embedder.heldout}
    return {"top1": float(np.mean(predicted == truth)), "chance": 1.0 / len(names), "classes": len(names),
            "images": len(items), "split": split, "unknown_classes": unknown,
            "heldout_classes": [n for n in names if n in heldout], "per_class": per_class}


def cached_classify(run_dir: str | Path, bench_root: str | Path) -> dict[str, Any]:
    """`classify`, kept in the run directory (keyed by the benchmark manifest) so a rebuilt report reuses it."""
    path = Path(run_dir) / RESULT_NAME
    manifest = Path(bench_root) / "manifest.json"
    stamp = {"benchmark": str(Path(bench_root).resolve()),
             "manifest_mtime_ns": manifest.stat().st_mtime_ns if manifest.exists() else 0}
    if path.is_file():
        saved = read_json(path)
        if saved.get("stamp") == stamp:
            return saved["result"]
    result = classify(run_dir, bench_root)
    atomic_write_json(path, {"stamp": stamp, "result": result})
    return result

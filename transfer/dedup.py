"""De-duplicate the transfer test sets against the pretraining corpus (Sun et al. 2017 removed such images).

A test image is flagged when its nearest corpus image is close in perceptual hash (Hamming distance, FAISS
`IndexBinaryFlat`) or in CNN embedding (cosine, FAISS `IndexFlatIP` on unit vectors). When the benchmark
ships `near_duplicates.json` (the planted edited copies), the flagged set is scored against it, for each
descriptor alone and together, with a threshold sweep. Source images and shards are only ever read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from pretrain.atomic import atomic_write_json, read_json
from pretrain.config import ModelConfig
from transfer.backbone import load_trunk, trunk_model_config
from transfer.config import DedupConfig
from transfer.descriptors import CACHE_NAME, Descriptors, Embedder, corpus_descriptors, decode_side, describe

FORMAT = "webly-dedup/1"
BENCHMARKS = ("classification", "detection", "segmentation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COSINE_SWEEP = [round(0.80 + 0.01 * i, 2) for i in range(20)]  # 0.80 .. 0.99
HASH_SWEEP = list(range(17))  # 0 .. 16 bits


def _images_in(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_test_images(benchmark_root: str | Path) -> list[tuple[str, Path]]:
    """(id, path) of every test image of the benchmarks present; id = path relative to the root (posix)."""
    root = Path(benchmark_root)
    paths = _images_in(root / "classification" / "test", "*/*") + _images_in(root / "detection/images/test", "*")
    listing = root / "segmentation/ImageSets/Segmentation/test.txt"
    if listing.exists():
        for name in listing.read_text(encoding="utf-8").split():
            path = root / "segmentation/JPEGImages" / f"{name}.jpg"
            if not path.is_file():  # the listing is the test set: a hole in it is a broken benchmark
                raise FileNotFoundError(f"{listing} lists {name!r} but {path} does not exist")
            paths.append(path)
    return [(p.relative_to(root).as_posix(), p) for p in paths]


def benchmark_of(image_id: str) -> str:
    return image_id.split("/", 1)[0]


def nearest_hash(queries: np.ndarray, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distance to, and index of, the nearest corpus code of each packed query code."""
    index = faiss.IndexBinaryFlat(corpus.shape[1] * 8)
    index.add(np.ascontiguousarray(corpus, dtype=np.uint8))
    distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.uint8), 1)
    return distances[:, 0].astype(np.int64), indices[:, 0]


def nearest_cosine(queries: np.ndarray, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity to, and index of, the nearest corpus embedding (inner product of unit vectors)."""
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    similarities, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return similarities[:, 0].astype(np.float64), indices[:, 0]


def scores(flagged: set[str], truth: set[str]) -> dict[str, Any]:
    """Precision, recall, F1 of a flagged set. Conventions: nothing flagged has precision 1 (no false
    positive); nothing to find has recall 1; F1 is 0 when precision + recall is 0."""
    tp, fp, fn = len(flagged & truth), len(flagged - truth), len(truth - flagged)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
            "tp": tp, "fp": fp, "fn": fn}


def _scored(ids: list[str], mask: np.ndarray, truth: set[str]) -> dict[str, Any]:
    """Scores overall and per benchmark of the ids selected by `mask`."""
    flagged = {i for i, m in zip(ids, mask, strict=True) if m}
    result: dict[str, Any] = {"overall": scores(flagged, truth), "per_benchmark": {}}
    for name in sorted({benchmark_of(i) for i in ids}):
        result["per_benchmark"][name] = scores({i for i in flagged if benchmark_of(i) == name},
                                               {i for i in truth if benchmark_of(i) == name})
    return result


def _sweep(ids: list[str], values: np.ndarray, thresholds: list, truth: set[str], below: bool) -> list[dict]:
    rows = []
    for threshold in thresholds:
        mask = values <= threshold if below else values >= threshold
        row = scores({i for i, m in zip(ids, mask, strict=True) if m}, truth)
        rows.append({"threshold": threshold, "flagged": int(mask.sum()), **row})
    return rows


def evaluate(
    ids: list[str], hash_distance: np.ndarray | None, cosine: np.ndarray | None, flagged: np.ndarray,
    cfg: DedupConfig, truth_records: list[dict[str, Any]], matched_keys: dict[str, str],
) -> dict[str, Any]:
    """Score the flagged set, each descriptor alone at its threshold, and threshold sweeps, against the
    planted near-duplicates. Ground-truth ids that are not test images are listed, not scored."""
    known = set(ids)
    truth = {r["id"] for r in truth_records if r["id"] in known}
    result: dict[str, Any] = {
        "ground_truth": len(truth),
        "missing_ids": sorted({r["id"] for r in truth_records} - known),
        **_scored(ids, flagged, truth),
        "hash_only": None, "cnn_only": None, "sweep": {},
    }
    if hash_distance is not None:
        result["hash_only"] = _scored(ids, hash_distance <= cfg.hash_threshold, truth)
        result["sweep"]["hash"] = _sweep(ids, hash_distance, HASH_SWEEP, truth, below=True)
    if cosine is not None:
        result["cnn_only"] = _scored(ids, cosine >= cfg.cnn_threshold, truth)
        result["sweep"]["cnn"] = _sweep(ids, cosine, COSINE_SWEEP, truth, below=False)
    # Did a correctly flagged copy match the very corpus image it was made from?
    true_keys = {r["id"]: r.get("corpus_key") for r in truth_records}
    hits = [i for i in matched_keys if i in truth and true_keys.get(i)]
    correct = sum(matched_keys[i] == true_keys[i] for i in hits)
    result["corpus_key_accuracy"] = round(correct / len(hits), 6) if hits else None
    return result


def run_dedup(
    corpus_root: str,
    benchmark_root: str,
    out_dir: str,
    cfg: DedupConfig,
    trunk_init: str,
    model_cfg: ModelConfig,
    seed: int = 0,
    progress: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    """Flag the benchmark test images that near-duplicate corpus images; write `out_dir/dedup.json`.

    The trunk is `trunk_init`'s pretrained trunk, or a random one (`model_cfg`, `seed`) when it is empty.
    Corpus descriptors are cached in `out_dir/corpus_descriptors.npz`. Returns the written JSON dict.
    `threads` > 0 sets torch's intra-op threads for the run (restored after); 0 leaves torch's default.
    """
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _run_dedup(corpus_root, benchmark_root, out_dir, cfg, trunk_init, model_cfg, seed, progress)
    finally:
        torch.set_num_threads(previous)


def _run_dedup(
    corpus_root: str, benchmark_root: str, out_dir: str, cfg: DedupConfig, trunk_init: str, model_cfg: ModelConfig,
    seed: int, progress: bool,
) -> dict[str, Any]:
    if not (cfg.use_hash or cfg.use_cnn):
        raise ValueError("dedup: use_hash and use_cnn are both false; nothing to compare")
    started = time.perf_counter()
    tests = find_test_images(benchmark_root)
    if not tests:
        raise ValueError(f"{benchmark_root}: no test images of {', '.join(BENCHMARKS)}")
    hash_size = cfg.hash_size if cfg.use_hash else None
    embedder = Embedder(load_trunk(trunk_init, model_cfg, seed), cfg.image_size) if cfg.use_cnn else None
    side = decode_side(cfg.hash_size, cfg.image_size)
    corpus, corpus_info = corpus_descriptors(corpus_root, Path(out_dir) / CACHE_NAME, hash_size, embedder, side,
                                             cfg.batch_size, progress)
    if not corpus.keys:
        raise ValueError(f"{corpus_root}: no decodable training image to compare against")
    items = ((image_id, path.read_bytes()) for image_id, path in tests)
    test: Descriptors = describe(items, hash_size, embedder, side, cfg.batch_size, total=len(tests),
                                 desc="test descriptors", progress=progress, strict=True)
    ids = test.keys

    search_started = time.perf_counter()
    hash_distance = cosine = None
    by_hash = by_cnn = np.zeros(len(ids), dtype=bool)  # a descriptor that is off flags nothing
    if test.hashes is not None:
        hash_distance, hash_index = nearest_hash(test.hashes, corpus.hashes)
        by_hash = hash_distance <= cfg.hash_threshold
    if test.embeddings is not None:
        cosine, cnn_index = nearest_cosine(test.embeddings, corpus.embeddings)
        by_cnn = cosine >= cfg.cnn_threshold
    flagged = by_hash | by_cnn
    search_seconds = time.perf_counter() - search_started

    records, matched_keys = [], {}
    for n in np.flatnonzero(flagged):
        # The hash match names the corpus image when the hash fired (the stricter evidence), else the CNN's.
        key = corpus.keys[hash_index[n]] if by_hash[n] else corpus.keys[cnn_index[n]]
        matched_keys[ids[n]] = key
        records.append({
            "id": ids[n], "benchmark": benchmark_of(ids[n]), "corpus_key": key,
            "hash_distance": None if hash_distance is None else int(hash_distance[n]),
            "hash_key": None if hash_distance is None else corpus.keys[hash_index[n]],
            "cosine": None if cosine is None else round(float(cosine[n]), 6),
            "cnn_key": None if cosine is None else corpus.keys[cnn_index[n]],
            "by": "both" if by_hash[n] and by_cnn[n] else "hash" if by_hash[n] else "cnn",
        })
    per_benchmark = {}
    for name in BENCHMARKS:
        members = [n for n, i in enumerate(ids) if benchmark_of(i) == name]
        if members:
            count = int(flagged[members].sum())
            per_benchmark[name] = {"test_images": len(members), "flagged": count,
                                   "overlap": round(count / len(members), 6)}

    truth_path = Path(benchmark_root) / "near_duplicates.json"
    evaluation: dict[str, Any] = {}
    if truth_path.exists():
        truth = read_json(truth_path)
        if not isinstance(truth, list) or not all(isinstance(r, dict) and "id" in r for r in truth):
            raise ValueError(f"{truth_path}: expected a list of {{'id', 'benchmark', 'corpus_key', 'edit'}} records")
        evaluation = evaluate(ids, hash_distance, cosine, flagged, cfg, truth, matched_keys)
    model = trunk_model_config(trunk_init, model_cfg)
    result = {
        "format": FORMAT,
        "corpus_root": str(corpus_root),
        "benchmark_root": str(benchmark_root),
        "trunk": {"init": trunk_init, "depth": model.depth, "width": model.width, "seed": seed} if cfg.use_cnn
        else None,
        "thresholds": {"use_hash": cfg.use_hash, "hash_size": cfg.hash_size, "hash_threshold": cfg.hash_threshold,
                       "use_cnn": cfg.use_cnn, "cnn_threshold": cfg.cnn_threshold, "image_size": cfg.image_size},
        "corpus": corpus_info,
        "test_images": len(ids),
        "flagged": records,
        "per_benchmark": per_benchmark,
        "evaluation": evaluation,
        "seconds": {"total": round(time.perf_counter() - started, 3), "search": round(search_seconds, 4)},
    }
    atomic_write_json(Path(out_dir) / "dedup.json", result)
    return result


def flagged_ids(dedup_json_path: str | Path) -> set[str]:
    """Ids (paths relative to the benchmark root) of the flagged test images of a dedup manifest."""
    manifest = read_json(dedup_json_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{dedup_json_path}: not a dedup manifest (format {FORMAT!r})")
    return {record["id"] for record in manifest["flagged"]}

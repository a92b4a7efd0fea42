"""De-duplicate the transfer test sets against the pretraining corpus (Sun et al. 2017 removed such images).

Absolute similarity does not separate edited copies from new renders of the same world (the hard negatives: a
test image of a brown disc on purple is close to every corpus image of a brown disc on purple). What does is a
*margin*: how much closer the test image is to its best corpus image than to the best *other* one, as in Lowe's
ratio test. Every corpus image is indexed by several views (the full image plus zoomed crops, so a cropped copy
meets a view showing its region); a test image is searched against all views (FAISS exact inner product), and
its best view of the best image gives s1, the best view of the best other image s2. A test image is flagged when
its perceptual hash is within `hash_threshold` bits of a corpus hash (exact and light copies, and copies of
images the corpus holds twice, where no margin exists) OR its margin reaches `margin_threshold`.

When the benchmark ships `near_duplicates.json` (the planted edited copies), the flagged set is scored against it,
overall, per benchmark and per edit, for each rule alone and with threshold sweeps. Sources are only ever read.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from pretrain.atomic import atomic_write_json, read_json
from pretrain.config import ModelConfig
from pretrain.shards import Dataset
from transfer import copydetect, descriptors
from transfer.backbone import load_trunk, trunk_model_config
from transfer.calibrate import run_calibration
from transfer.config import DedupConfig, IndexConfig
from transfer.descriptors import Describer, Descriptors, decode_side, describe
from transfer.index import ViewIndex, build_index, load_or_build
from transfer.scoring import benchmark_of, evaluate, scores  # noqa: F401  (scores: part of this module's API)
from transfer.views import FLIP_VIEW, FULL_VIEW, Box, hue_shifted, view_boxes

FORMAT = "webly-dedup/1"
BENCHMARKS = ("classification", "detection", "segmentation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DESCRIPTORS = ("tiny", "cnn", "copy")
MARGINS = ("ratio", "difference")
TWIN_CANDIDATES = 3  # distinct corpus images after the best one looked at for the second match
DESCRIBER_SETTINGS = {"tiny": ("tiny_size", "chroma_weight"), "cnn": ("image_size", "cnn_stage", "cnn_grid"),
                      "copy": ("copy",)}


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


def nearest_hash(queries: np.ndarray, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distance to, and index of, the nearest corpus code of each packed query code."""
    index = faiss.IndexBinaryFlat(corpus.shape[1] * 8)
    index.add(np.ascontiguousarray(corpus, dtype=np.uint8))
    distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.uint8), 1)
    return distances[:, 0].astype(np.int64), indices[:, 0]


@dataclass
class Matches:
    """Per query: cosine s1 to the best corpus image (through its view `view`) and s2 to the best other one."""

    s1: np.ndarray
    image1: np.ndarray
    view: np.ndarray
    s2: np.ndarray  # -1 when the corpus holds no other image
    image2: np.ndarray  # -1 when none was found among the candidates


def nearest_two(
    queries: np.ndarray, corpus: np.ndarray | ViewIndex, views: int = 1, twin_cosine: float = 1.0,
    chunk_images: int = 4096,
) -> Matches:
    """Best and second-best corpus *images* of each query, each by its best view.

    `corpus`: image-major views ((N * views) x D, searched exactly) or a ViewIndex (flat or IVF-PQ; its views).
    The top (1 + TWIN_CANDIDATES) * views + 1 views hold the best views of that many distinct images (exactly
    so for flat search). A candidate whose full view has cosine >= `twin_cosine` with the best image's is a
    twin of it (the corpus holds that photo twice) and is skipped: a copy must not be its own hard negative.
    When every candidate is a twin, s2 is the last candidate's cosine (an upper bound: the margin errs towards
    not flagging). Flat search goes through the corpus in chunks made float32 one at a time.
    """
    index = corpus if isinstance(corpus, ViewIndex) else build_index(corpus, views, IndexConfig(kind="flat"))
    views = index.views
    queries = index.reduce(queries)
    k = (1 + TWIN_CANDIDATES) * views + 1
    sim, idx = index.search(queries, k, chunk_images)
    image = np.where(idx >= 0, idx // views, -1)
    out = Matches(sim[:, 0].astype(np.float64), image[:, 0], np.where(idx[:, 0] >= 0, idx[:, 0] % views, 0),
                  np.full(len(queries), -1.0), np.full(len(queries), -1, dtype=np.int64))
    full = index.full
    for row in range(len(queries)):
        first = image[row, 0]
        twins: set[int] = set()
        for col in range(1, sim.shape[1]):
            other = int(image[row, col])
            if other < 0 or other == first or other in twins:
                continue
            if full[first].astype(np.float32) @ full[other].astype(np.float32) >= twin_cosine:
                twins.add(other)
                out.s2[row] = sim[row, col]  # the bound, should no non-twin follow
                continue
            out.s2[row], out.image2[row] = sim[row, col], other
            break
    return out


def margin_score(s1: np.ndarray, s2: np.ndarray, kind: str) -> np.ndarray:
    """ratio: 1 - d1 / d2 with d = |q - c| = sqrt(2 - 2 cos) (Lowe's ratio test; 1 for an exact copy whatever s2
    is, 0 when the best image is no closer than the next); difference: s1 - s2."""
    if kind == "difference":
        return s1 - s2
    d1, d2 = np.sqrt(np.maximum(2 - 2 * s1, 0.0)), np.sqrt(np.maximum(2 - 2 * s2, 0.0))
    return 1 - d1 / np.maximum(d2, 1e-6)


def _check(cfg: DedupConfig) -> None:
    if not (cfg.use_hash or cfg.descriptor):
        raise ValueError("dedup: use_hash is false and no descriptor is set; nothing to compare")
    if cfg.descriptor and cfg.descriptor not in DESCRIPTORS:
        raise ValueError(f"dedup.descriptor={cfg.descriptor!r}: expected one of {DESCRIPTORS} or ''")
    if cfg.margin not in MARGINS:
        raise ValueError(f"dedup.margin={cfg.margin!r}: expected one of {MARGINS}")
    if cfg.extract_jobs < 1:
        raise ValueError(f"dedup.extract_jobs={cfg.extract_jobs}: at least one job describes the corpus")
    if any(not 0 < abs(turn) < 0.5 for turn in cfg.query_hues):
        raise ValueError(f"dedup.query_hues={list(cfg.query_hues)}: hue shifts are non-zero fractions of the colour "
                         "circle between -0.5 and 0.5")


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

    With descriptor "cnn" the trunk is `trunk_init`'s pretrained trunk, or a random one (`model_cfg`, `seed`)
    when it is empty; "tiny" needs no trunk. Corpus descriptors are cached in `out_dir/corpus_descriptors.npz`.
    Returns the written JSON dict. `threads` > 0 sets torch's and FAISS's threads for the run (restored after).
    """
    previous, previous_omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    if threads > 0:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    try:
        return _run_dedup(corpus_root, benchmark_root, out_dir, cfg, trunk_init, model_cfg, seed, progress)
    finally:
        torch.set_num_threads(previous)
        faiss.omp_set_num_threads(previous_omp)


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


def _cache_dir(cfg: DedupConfig, corpus_root: str, out_dir: str) -> Path:
    """Where the corpus descriptors, trained copy net and indexes live: one folder per corpus under
    `index_dir` (shared by every benchmark de-duplicated against that corpus), else `out_dir`."""
    if not cfg.index_dir:
        return Path(out_dir)
    return Path(cfg.index_dir) / descriptors.corpus_fingerprint(Dataset.open(corpus_root))[:16]


def build_describer(cfg: DedupConfig, trunk_init: str, model_cfg: ModelConfig, seed: int, corpus_root: str,
               cache_dir: Path, progress: bool) -> tuple[Describer | None, dict[str, Any] | None]:
    """The vector describer of `cfg.descriptor` and, for the trained copy net, its training log."""
    if cfg.descriptor == "tiny":
        return descriptors.TinyImage(cfg.tiny_size, cfg.chroma_weight), None
    if cfg.descriptor == "cnn":
        trunk = load_trunk(trunk_init, model_cfg, seed)
        return descriptors.TrunkGrid(trunk, cfg.image_size, cfg.cnn_stage, cfg.cnn_grid, cfg.cnn_pool,
                                     cfg.gem_p), None
    if cfg.descriptor == "copy":
        dataset = Dataset.open(corpus_root)
        net, log = copydetect.load_or_train(cache_dir / "copynet.pt", cfg.copy, descriptors.corpus_fingerprint(dataset),
                                            descriptors.iter_shards(dataset.train_urls(0), Counter()), progress)
        return descriptors.CopyDescriber(net, cfg.copy.input_size), log
    return None, None


def corpus_setup(cfg: DedupConfig, trunk_init: str, model_cfg: ModelConfig, seed: int, corpus_root: str,
                 out_dir: str, progress: bool) -> tuple[Path, int | None, Describer | None, dict[str, Any] | None,
                                                        list[Box], int]:
    """(cache folder, hash size, describer, copy-net training log, corpus views, decode side) of `cfg`: what
    the corpus pass and each shard-range job (`describe_corpus_part`) describe the corpus with."""
    hash_size = cfg.hash_size if cfg.use_hash else None
    cache_dir = _cache_dir(cfg, corpus_root, out_dir)
    describer, training = build_describer(cfg, trunk_init, model_cfg, seed, corpus_root, cache_dir, progress)
    boxes = view_boxes(cfg.view_fractions, cfg.view_grid) if describer else [FULL_VIEW]
    # One decode side for every descriptor setting, so switching tiny <-> cnn keeps the cached hashes.
    side = decode_side(hash_size, max(cfg.tiny_size, cfg.image_size), min(cfg.view_fractions, default=1.0))
    return cache_dir, hash_size, describer, training, boxes, side


def describe_corpus_part(corpus_root: str, out_dir: str, cfg: DedupConfig, trunk_init: str, model_cfg: ModelConfig,
                         part: int, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Job `part` of `cfg.extract_jobs`: describe its range of corpus shards for a later `run_dedup`."""
    _check(cfg)
    cache_dir, hash_size, describer, _, boxes, side = corpus_setup(cfg, trunk_init, model_cfg, seed, corpus_root,
                                                                   out_dir, progress)
    return descriptors.describe_part(corpus_root, cache_dir / descriptors.CACHE_NAME, part, cfg.extract_jobs,
                                     hash_size, describer, boxes, side, cfg.batch_size, progress)


def query_views(cfg: DedupConfig) -> list[Box]:
    """The views a test image is searched by: the full image, and its mirror image with query_flip."""
    return [FULL_VIEW, FLIP_VIEW] if cfg.query_flip else [FULL_VIEW]


class HueVariants:
    """A describer of test images: each view as it is, then hue-shifted by each of `turns` (dedup.query_hues),
    so an image's rows stay together and `best_orientation` pools them with its orientations."""

    def __init__(self, describer: Describer, turns: list[float]) -> None:
        self.describer, self.turns, self.input_size = describer, list(turns), describer.input_size

    def __call__(self, views: np.ndarray) -> np.ndarray:
        return self.describer(hue_shifted(views, self.turns))


def query_rows(cfg: DedupConfig) -> int:
    """Query rows per test image: each of its views (query_views) as is and at each hue shift."""
    return len(query_views(cfg)) * (1 + len(cfg.query_hues))


def query_setup(cfg: DedupConfig, describer: Describer) -> tuple[list[Box], Describer | HueVariants, int]:
    """The views a test image is described by, the describer of its query rows, and the rows per image."""
    query_describer = HueVariants(describer, cfg.query_hues) if cfg.query_hues else describer
    return query_views(cfg), query_describer, query_rows(cfg)


def best_orientation(vectors: np.ndarray, index: ViewIndex, orientations: int, cfg: DedupConfig
                     ) -> tuple[Matches, np.ndarray]:
    """Matches and margins of image-major query rows (`orientations` per image: as is, mirrored, each with its
    hue shifts; see query_setup), pooled over them as a corpus image's views are: s1 is the best image of any
    orientation and s2 the best *other* image of any orientation. A new render that happens to resemble one
    corpus image when mirrored is then held back by what it resembles the right way round; taking the
    orientation of highest margin instead gave every test image two chances at a lucky margin (most false
    positives on the planted set were mirrored matches)."""
    matches = nearest_two(vectors, index, twin_cosine=cfg.twin_cosine)
    images = len(vectors) // orientations
    best = np.arange(images) * orientations + matches.s1.reshape(images, orientations).argmax(axis=1)
    pooled = Matches(*(getattr(matches, f.name)[best].copy() for f in fields(Matches)))
    full = index.full
    for image in range(images):
        first = int(pooled.image1[image])
        for row in range(image * orientations, (image + 1) * orientations):
            if row == best[image]:
                continue
            other, similarity = int(matches.image1[row]), matches.s1[row]
            twin = other >= 0 and full[first].astype(np.float32) @ full[other].astype(np.float32) >= cfg.twin_cosine
            if other == first or twin:  # the same corpus image (or its twin): this orientation's runner-up
                other, similarity = int(matches.image2[row]), matches.s2[row]
            if similarity > pooled.s2[image]:
                pooled.s2[image], pooled.image2[image] = similarity, other
    return pooled, margin_score(pooled.s1, pooled.s2, cfg.margin)


def _record(n: int, image_id: str, hash_distance, hash_index, matches, margin, boxes, keys) -> dict[str, Any]:
    record: dict[str, Any] = {"id": image_id, "benchmark": benchmark_of(image_id)}
    if hash_distance is not None:
        record.update(hash_distance=int(hash_distance[n]), hash_key=keys[hash_index[n]])
    if matches is not None:
        record.update(margin=round(float(margin[n]), 6), similarity=round(float(matches.s1[n]), 6),
                      second_similarity=round(float(matches.s2[n]), 6),
                      margin_key=keys[matches.image1[n]], view=list(boxes[matches.view[n]]),
                      second_key=keys[matches.image2[n]] if matches.image2[n] >= 0 else None)
    return record


def _run_dedup(
    corpus_root: str, benchmark_root: str, out_dir: str, cfg: DedupConfig, trunk_init: str, model_cfg: ModelConfig,
    seed: int, progress: bool,
) -> dict[str, Any]:
    _check(cfg)
    started = time.perf_counter()
    tests = find_test_images(benchmark_root)
    if not tests:
        raise ValueError(f"{benchmark_root}: no test images of {', '.join(BENCHMARKS)}")
    setup = corpus_setup(cfg, trunk_init, model_cfg, seed, corpus_root, out_dir, progress)
    cache_dir, hash_size, describer, training, boxes, side = setup
    queries, query_describer, rows = query_setup(cfg, describer) if describer else ([FULL_VIEW], None, 1)
    corpus, corpus_info = descriptors.corpus_descriptors(corpus_root, cache_dir / descriptors.CACHE_NAME, hash_size,
                                                         describer, boxes, side, cfg.batch_size, progress)
    if not corpus.keys:
        raise ValueError(f"{corpus_root}: no decodable training image to compare against")
    index = index_info = None
    if corpus.vectors is not None:
        meta = {"corpus": corpus_info.get("fingerprint"), "describer": describer.spec, "boxes": boxes, "side": side}
        index, index_info = load_or_build(cache_dir, meta, corpus.vectors, corpus.views, cfg.index)
    margin_threshold, calibration = cfg.margin_threshold, None
    if index is not None and cfg.calibration.target_precision > 0:
        calibration = run_calibration(corpus_root, cfg.calibration, cfg.margin_threshold, progress,
                                      lambda items: describe(items, None, query_describer, queries, side,
                                                             cfg.batch_size, progress=False).vectors,
                                      lambda vectors: best_orientation(vectors, index, rows, cfg)[1])
        atomic_write_json(Path(out_dir) / "calibration.json", calibration)
        margin_threshold = calibration["threshold"]
    test_started = time.perf_counter()
    items = ((image_id, path.read_bytes()) for image_id, path in tests)
    test: Descriptors = describe(items, hash_size, query_describer, queries, side, cfg.batch_size, total=len(tests),
                                 desc="test descriptors", progress=progress, strict=True)
    ids = test.keys

    search_started = time.perf_counter()
    hash_distance = hash_index = margin = matches = None
    by_hash = by_margin = np.zeros(len(ids), dtype=bool)  # a rule that is off flags nothing
    if test.hashes is not None:
        hash_distance, hash_index = nearest_hash(test.hashes, corpus.hashes)
        by_hash = hash_distance <= cfg.hash_threshold
    if test.vectors is not None:
        matches, margin = best_orientation(test.vectors, index, rows, cfg)
        by_margin = margin >= margin_threshold
    flagged = by_hash | by_margin
    search_seconds = time.perf_counter() - search_started

    records, matched_keys = [], {}
    for n in np.flatnonzero(flagged):
        record = _record(n, ids[n], hash_distance, hash_index, matches, margin, boxes, corpus.keys)
        # The hash match names the corpus image when the hash fired (the stricter evidence), else the margin's.
        record["corpus_key"] = record["hash_key"] if by_hash[n] else record["margin_key"]
        record["by"] = "both" if by_hash[n] and by_margin[n] else "hash" if by_hash[n] else "margin"
        matched_keys[ids[n]] = record["corpus_key"]
        records.append(record)
    near_misses = []
    if margin is not None:  # the unflagged images closest to the threshold: what the audit shows just below it
        below = [n for n in np.argsort(-margin, kind="stable") if not flagged[n]][:cfg.near_misses]
        near_misses = [_record(n, ids[n], hash_distance, hash_index, matches, margin, boxes, corpus.keys)
                       for n in below]
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
        evaluation = evaluate(ids, hash_distance, margin, None if matches is None else matches.s1, flagged,
                              replace(cfg, margin_threshold=margin_threshold), truth, matched_keys)
    trunk = None
    if cfg.descriptor == "cnn":
        model = trunk_model_config(trunk_init, model_cfg)
        trunk = {"init": trunk_init, "depth": model.depth, "width": model.width, "seed": seed}
    names = ["use_hash", "hash_size", "hash_threshold", "descriptor", "margin", "view_fractions",
             "view_grid", "twin_cosine", *DESCRIBER_SETTINGS.get(cfg.descriptor, ())]
    thresholds = {**{name: _plain(getattr(cfg, name)) for name in names}, "margin_threshold": margin_threshold,
                  "views": len(boxes)}
    if cfg.query_flip or cfg.query_hues or calibration:
        thresholds.update(query_flip=cfg.query_flip, query_hues=_plain(cfg.query_hues),
                          calibrated=calibration is not None)
    result = {
        "format": FORMAT,
        "corpus_root": str(corpus_root),
        "benchmark_root": str(benchmark_root),
        "trunk": trunk,
        "thresholds": thresholds,
        "corpus": {k: v for k, v in corpus_info.items() if k != "fingerprint"},
        "test_images": len(ids),
        "flagged": records,
        "near_misses": near_misses,
        "per_benchmark": per_benchmark,
        "evaluation": evaluation,
        "seconds": {"total": round(time.perf_counter() - started, 3),
                    "corpus": round(test_started - started, 3),
                    "test": round(search_started - test_started, 3), "search": round(search_seconds, 4)},
    }
    if index_info and index_info["kind"] != "flat" or cfg.index_dir:
        result["index"] = index_info
    if calibration:
        result["calibration"] = {k: v for k, v in calibration.items() if k != "curve"}
    if training:
        result["descriptor_training"] = training
    atomic_write_json(Path(out_dir) / "dedup.json", result)
    return result


def flagged_ids(dedup_json_path: str | Path) -> set[str]:
    """Ids (paths relative to the benchmark root) of the flagged test images of a dedup manifest."""
    manifest = read_json(dedup_json_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{dedup_json_path}: not a dedup manifest (format {FORMAT!r})")
    return {record["id"] for record in manifest["flagged"]}

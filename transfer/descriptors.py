"""Near-duplicate descriptors: perceptual hashes (packed bits) and unit vectors of views of each image.

A view is a box of the image (in fractions of its width and height) resized to a small square. Corpus images are
described by several views (the full image and zoomed crops, `transfer.views`) so that a cropped copy in a test set
meets a view that shows about the same region; test images are described by their full view only. Two vector
descriptors exist: a standardised tiny image (`TinyImage`) and grid-pooled features of a trunk stage (`TrunkGrid`).

Corpus descriptors are computed in one streaming pass over the training shards (only the descriptors are kept,
never the decoded images) and cached in `corpus_descriptors.npz` next to the dedup output. Each part of the
cache (hashes, tiny, cnn) carries the fingerprint of what it depends on, views included, so a second run with
the same settings reuses it and a run with, say, a new trunk recomputes only that part.

A large corpus is described by several jobs (`dedup.extract_jobs`): `describe_part` describes one contiguous
range of shards into `parts/` next to the cache; when every range is there with the wanted settings,
`corpus_descriptors` assembles them (in shard order) instead of making its own pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pretrain.atomic import atomic_write
from pretrain.dupes import phash_code
from pretrain.images import decode_rgb, to_float
from pretrain.loader import IMAGE_KEYS
from pretrain.shards import Dataset, stamp_files
from transfer.copydetect import describe_batch, gem
from transfer.index import unit_rows
from transfer.views import Box, ViewSampler

VERSION = 2  # bump when a descriptor's definition changes, so old caches are not reused
CACHE_NAME = "corpus_descriptors.npz"
PARTS_DIR = "parts"  # next to the cache: one file per shard range described by its own job
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" conversion
LUMA_FLOOR = 1.0  # grey levels added to the luma RMS: a flat view is not blown up into noise
CHROMA_FLOOR = 4.0  # grey levels added to the chroma RMS: a near-grey view's JPEG colour noise stays small


def hash_bits(hash_size: int) -> int:
    """Bits of a packed pHash: hash_size**2 rounded up to whole bytes (FAISS binary codes are bytes)."""
    return -(-hash_size * hash_size // 8) * 8


def decode_side(hash_size: int | None, view_size: int, min_fraction: float) -> int:
    """The smallest side JPEG draft decoding may reduce to: the smallest view still gets >= view_size pixels
    and pHash its 4 * hash_size. It fixes the pixels every descriptor sees, so it is part of the fingerprints:
    corpus and test images must be decoded the same way."""
    return math.ceil(max(view_size, 4 * (hash_size or 0)) / min_fraction)


def trunk_fingerprint(trunk: torch.nn.Module) -> str:
    """sha256 over the trunk's state (names, shapes, values): equal exactly when the features would be."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes())
    return digest.hexdigest()


def corpus_fingerprint(dataset: Dataset) -> str:
    """The manifest plus every training shard's name, size and mtime: any rewrite of the corpus changes it."""
    digest = hashlib.sha256((dataset.root / "manifest.json").read_bytes())
    return stamp_files(digest, dataset.train_urls(0)).hexdigest()


class TinyImage:
    """A view at size x size as luma and chroma, made blind to recolouring but not to the scene's colours.

    Luma is standardised (zero mean, unit RMS), which cancels brightness and contrast. Chroma (B - Y, R - Y) is
    divided by its RMS but not centred: saturation changes cancel while the background's hue, the strongest cue
    between different renders of one synthetic world (per-channel standardisation would erase it), stays.
    The two parts are weighted 1 : chroma_weight and the vector L2-normalised."""

    kind = "tiny"

    def __init__(self, size: int, chroma_weight: float) -> None:
        self.input_size = size
        self.chroma_weight = chroma_weight
        self.spec = {"kind": self.kind, "size": size, "chroma_weight": chroma_weight}

    def __call__(self, views: np.ndarray) -> np.ndarray:
        rgb = views.astype(np.float32)  # B x s x s x 3
        luma = rgb @ np.asarray(LUMA, np.float32)
        chroma = np.stack([rgb[..., 2] - luma, rgb[..., 0] - luma], axis=-1)
        luma -= luma.mean(axis=(1, 2), keepdims=True)
        luma /= np.sqrt((luma**2).mean(axis=(1, 2), keepdims=True)) + LUMA_FLOOR
        chroma /= np.sqrt((chroma**2).mean(axis=(1, 2, 3), keepdims=True)) + CHROMA_FLOOR
        n = len(views)
        # Per-element scaling by the part's size: with weight 1 both parts weigh the same in the vector.
        parts = [luma.reshape(n, -1) / math.sqrt(luma[0].size),
                 self.chroma_weight * chroma.reshape(n, -1) / math.sqrt(chroma[0].size)]
        return unit_rows(np.concatenate(parts, axis=1))


class TrunkGrid:
    """Features of trunk stage `stage` (1..4) pooled and L2-normalised. pool "grid": average-pooled to a
    grid x grid layout (spatial layout kept: global pooling maps different renders of one world to nearly the
    same vector); pool "gem": one global generalised mean (exponent `gem_p`; Radenović et al.'s retrieval
    pooling), compact and blind to crops and flips, for pretrained trunks of real photos."""

    kind = "cnn"

    def __init__(self, trunk: torch.nn.Module, image_size: int, stage: int, grid: int, pool: str = "grid",
                 gem_p: float = 3.0) -> None:
        if not 1 <= stage <= 4:
            raise ValueError(f"cnn_stage={stage}: the trunk has stages 1..4")
        if pool not in ("grid", "gem"):
            raise ValueError(f"cnn_pool={pool!r}: expected 'grid' or 'gem'")
        self.trunk = trunk.eval()
        self.input_size = image_size
        self.stage, self.grid, self.pool, self.gem_p = stage, grid, pool, gem_p
        self.spec = {"kind": self.kind, "trunk": trunk_fingerprint(trunk), "image_size": image_size,
                     "stage": stage, "grid": grid, "pool": pool, "gem_p": gem_p}

    def __call__(self, views: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            features = self.trunk.stages(to_float(batch))[self.stage - 1].float()
            if self.pool == "gem":
                pooled = gem(features, self.gem_p)
            else:
                pooled = torch.nn.functional.adaptive_avg_pool2d(features, self.grid).flatten(1)
        return unit_rows(pooled.numpy())


class CopyDescriber:
    """The copy-detection net trained on the corpus (transfer/copydetect.py): invariant to heavy edits."""

    kind = "copy"

    def __init__(self, net: torch.nn.Module, input_size: int) -> None:
        self.net, self.input_size = net.eval(), input_size
        self.spec = {"kind": self.kind, "net": trunk_fingerprint(net), "input_size": input_size}

    def __call__(self, views: np.ndarray) -> np.ndarray:
        return unit_rows(describe_batch(self.net, views))


Describer = TinyImage | TrunkGrid | CopyDescriber


@dataclass
class Descriptors:
    keys: list[str]
    hashes: np.ndarray | None = None  # N x bytes uint8: pHash of the full image
    vectors: np.ndarray | None = None  # (N * views) x D float16 unit vectors, image-major (views of image 0 first)
    views: int = 1
    skipped: Counter[str] = field(default_factory=Counter)


def describe(
    items: Iterable[tuple[str, bytes]],
    hash_size: int | None,
    describer: Describer | None,
    boxes: Sequence[Box],
    side: int,
    batch_size: int,
    total: int | None = None,
    desc: str = "descriptors",
    progress: bool = True,
    strict: bool = False,
) -> Descriptors:
    """Descriptors of encoded images, streamed: each image is decoded once, hashed at once, and its views kept
    only until their batch (`batch_size` views) is described. Undecodable images raise when `strict`, else are
    counted and skipped."""
    keys: list[str] = []
    hashes: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
    sampler = ViewSampler(boxes, describer.input_size) if describer is not None else None

    def flush() -> None:
        if pending:
            # float16 halves the memory and the cache; cosine scores need only ~1e-3 precision
            vectors.append(describer(np.stack(pending)).astype(np.float16))
            pending.clear()

    with threadpool_limits(1, user_api="blas"):  # numpy's small per-image products: see ViewSampler
        for key, data in tqdm(items, total=total, desc=desc, unit="img", disable=not progress, mininterval=1.0):
            try:
                image = decode_rgb(data, side)
            except (OSError, ValueError, SyntaxError) as err:
                if strict:
                    raise ValueError(f"{key}: cannot decode image ({err})") from None
                skipped["bad_image"] += 1
                continue
            keys.append(key)
            if hash_size is not None:
                hashes.append(phash_code(image, hash_size))
            if sampler is not None:
                pending.extend(sampler(np.asarray(image)))
                if len(pending) >= batch_size:
                    flush()
        if describer is not None:
            flush()
    out = Descriptors(keys, views=len(boxes), skipped=skipped)
    if hash_size is not None:
        out.hashes = np.stack(hashes) if hashes else np.zeros((0, hash_bits(hash_size) // 8), np.uint8)
    if describer is not None:
        out.vectors = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float16)
    return out


def iter_shards(urls: list[str], skipped: Counter[str]) -> Iterator[tuple[str, bytes]]:
    """(key, encoded image) of every sample; unreadable shards and samples without an image are counted."""

    def bad_shard(exn: Exception) -> bool:
        skipped["bad_shard"] += 1
        return True  # go on with the next shard, as the training loader does

    for sample in wds.tarfile_to_samples(handler=bad_shard)({"url": u} for u in urls):
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None:
            skipped["missing_image"] += 1
            continue
        yield sample["__key__"], data


def _load_cache(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, arrays) of a cache file, or None when there is none or it is unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _save_cache(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    arrays = {"meta": np.array(json.dumps(meta, sort_keys=True)), **arrays}
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def corpus_descriptors(
    corpus_root: str | Path,
    cache_path: str | Path,
    hash_size: int | None,
    describer: Describer | None,
    boxes: Sequence[Box],
    side: int,
    batch_size: int,
    progress: bool = True,
) -> tuple[Descriptors, dict[str, Any]]:
    """Descriptors of every training-shard image, from the cache when its fingerprints match; the parts that
    do not match (or are missing) are computed in one pass and the cache is rewritten atomically.

    `hash_size` / `describer` None: that part is not wanted. `boxes`: the views; `side`: see `decode_side`.
    Returns the descriptors and a summary: images, views, skipped counts, cache = hit | partial | miss, and
    for a pass over the corpus its seconds and images per second.
    """
    dataset = Dataset.open(corpus_root)
    cache_path = Path(cache_path)
    want = _wanted(hash_size, describer, boxes, side)
    wanted = [part for part, spec in want.items() if spec is not None]
    fresh: dict[str, Any] = {"version": VERSION, "corpus": corpus_fingerprint(dataset), "parts": {}, "skipped": {}}
    meta, have = fresh, {}
    cached = _load_cache(cache_path)
    if cached and cached[0].get("version") == VERSION and cached[0].get("corpus") == fresh["corpus"]:
        meta, have = cached
    # A part is reused only when it was computed with exactly the wanted settings.
    todo = [part for part in wanted if meta["parts"].get(part) != want[part] or part not in have]
    info: dict[str, Any] = {}
    if todo:
        skipped: Counter[str] = Counter()
        started = time.perf_counter()
        computed = _assemble_parts(cache_path, fresh["corpus"], want, len(dataset.train_urls(0)), len(boxes))
        info["assembled_parts"] = computed is not None
        if computed is None:
            computed = describe(
                iter_shards(dataset.train_urls(0), skipped),
                hash_size if "hashes" in todo else None,
                describer if describer is not None and describer.kind in todo else None,
                boxes, side, batch_size, total=dataset.train_samples(0), desc="corpus descriptors",
                progress=progress,
            )
        seconds = time.perf_counter() - started
        if "keys" in have and have["keys"].tolist() != computed.keys:
            # Same fingerprint but other images decoded: distrust the cache and describe everything afresh.
            cache_path.unlink()
            return corpus_descriptors(corpus_root, cache_path, hash_size, describer, boxes, side, batch_size, progress)
        skipped.update(computed.skipped)
        have["keys"] = np.array(computed.keys, dtype=str)
        for part in todo:
            have[part] = computed.hashes if part == "hashes" else computed.vectors
            meta["parts"][part] = want[part]
        meta["skipped"] = dict(skipped)
        _save_cache(cache_path, meta, have)
        info.update(seconds=round(seconds, 3), images_per_second=round(len(computed.keys) / max(seconds, 1e-9), 1))
    result = Descriptors(have["keys"].tolist(), have["hashes"] if want["hashes"] else None,
                         have[describer.kind] if describer is not None else None, len(boxes),
                         Counter(meta["skipped"]))
    status = "miss" if len(todo) == len(wanted) else "partial" if todo else "hit"
    return result, {"images": len(result.keys), "views": len(boxes), "skipped": dict(meta["skipped"]),
                    "cache": status, "fingerprint": meta["corpus"], **info}


def _wanted(hash_size: int | None, describer: Describer | None, boxes: Sequence[Box], side: int) -> dict[str, Any]:
    """The settings each cache part (hashes, and the describer's kind) must have been computed with."""
    want: dict[str, Any] = {"hashes": None if hash_size is None else {"hash_size": hash_size, "side": side}}
    if describer is not None:
        # JSON round trip: the spec compares equal to the one read back from the cache (tuples become lists)
        want[describer.kind] = json.loads(json.dumps({**describer.spec, "side": side, "views": len(boxes),
                                                      "boxes": [list(b) for b in boxes]}))
    return want


def shard_range(num_shards: int, part: int, parts: int) -> tuple[int, int]:
    """Shards [start, stop) of job `part` of `parts`: contiguous ranges, sizes differing by at most one."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: must be in 0..{parts - 1}")
    return num_shards * part // parts, num_shards * (part + 1) // parts


def _part_path(cache_path: Path, start: int, stop: int) -> Path:
    return cache_path.parent / PARTS_DIR / f"{cache_path.stem}-{start:06d}-{stop:06d}.npz"


def describe_part(corpus_root: str | Path, cache_path: str | Path, part: int, parts: int, hash_size: int | None,
                  describer: Describer | None, boxes: Sequence[Box], side: int, batch_size: int,
                  progress: bool = True) -> dict[str, Any]:
    """Describe job `part` of `parts`'s range of training shards into its part file (kept if already there with
    the same settings); returns the range, its images and whether the file was reused."""
    dataset = Dataset.open(corpus_root)
    urls = dataset.train_urls(0)
    start, stop = shard_range(len(urls), part, parts)
    path = _part_path(Path(cache_path), start, stop)
    want = _wanted(hash_size, describer, boxes, side)
    meta = {"version": VERSION, "corpus": corpus_fingerprint(dataset), "want": want, "range": [start, stop]}
    cached = _load_cache(path)
    if cached is not None and {k: v for k, v in cached[0].items() if k != "skipped"} == meta:
        return {"range": [start, stop], "images": len(cached[1]["keys"]), "cache": "hit"}
    skipped: Counter[str] = Counter()
    computed = describe(iter_shards(urls[start:stop], skipped), hash_size, describer, boxes, side, batch_size,
                        desc=f"corpus descriptors, shards {start}-{stop}", progress=progress)
    skipped.update(computed.skipped)
    arrays = {"keys": np.array(computed.keys, dtype=str)}
    if computed.hashes is not None:
        arrays["hashes"] = computed.hashes
    if computed.vectors is not None:
        arrays["vectors"] = computed.vectors
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_cache(path, {**meta, "skipped": dict(skipped)}, arrays)
    return {"range": [start, stop], "images": len(computed.keys), "cache": "miss"}


def _assemble_parts(cache_path: Path, corpus: str, want: dict[str, Any], num_shards: int,
                    views: int) -> Descriptors | None:
    """The descriptors of the whole corpus from part files that tile [0, num_shards) with the wanted settings;
    None when they do not (missing, stale, or none at all)."""
    by_start: dict[int, list[tuple[int, dict[str, int], dict[str, np.ndarray]]]] = {}
    for path in sorted((cache_path.parent / PARTS_DIR).glob(f"{cache_path.stem}-*.npz")):
        cached = _load_cache(path)
        if cached is None:
            continue
        meta, arrays = cached
        if meta.get("version") == VERSION and meta.get("corpus") == corpus and meta.get("want") == want:
            start, stop = meta["range"]
            by_start.setdefault(start, []).append((stop, meta.get("skipped", {}), arrays))
    # walk from shard 0, each step taking the longest part that starts where the last one stopped (parts left
    # from an earlier run with another job count may overlap; any contiguous chain is the same data)
    found, position = [], 0
    while position < num_shards:
        if position not in by_start:
            return None
        stop, counts, arrays = max(by_start[position], key=lambda item: item[0])
        found.append((stop, counts, arrays))
        position = stop
    skipped: Counter[str] = Counter()
    for _, counts, _ in found:
        skipped.update(counts)
    keys = [key for _, _, arrays in found for key in arrays["keys"].tolist()]
    out = Descriptors(keys, views=views, skipped=skipped)
    if want["hashes"] is not None:
        out.hashes = np.concatenate([arrays["hashes"] for _, _, arrays in found])
    if len(want) > 1:
        out.vectors = np.concatenate([arrays["vectors"] for _, _, arrays in found])
    return out

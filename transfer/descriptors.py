"""Near-duplicate descriptors: perceptual hashes (packed bits) and L2-normalised CNN embeddings.

Corpus descriptors are computed in one streaming pass over the training shards (only the descriptors are kept,
never the decoded images) and cached in `corpus_descriptors.npz` next to the dedup output. Each part of the
cache (hashes, embeddings) carries the fingerprint of what it depends on, so a second run with the same
corpus and trunk reuses it, and a run with a new trunk recomputes only the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from pretrain.atomic import atomic_write
from pretrain.images import center_crop, decode_rgb, to_float
from pretrain.loader import IMAGE_KEYS
from pretrain.shards import Dataset

VERSION = 1  # bump when a descriptor's definition changes, so old caches are not reused
CACHE_NAME = "corpus_descriptors.npz"


def hash_bits(hash_size: int) -> int:
    """Bits of a packed pHash: hash_size**2 rounded up to whole bytes (FAISS binary codes are bytes)."""
    return -(-hash_size * hash_size // 8) * 8


def phash_code(image: Image.Image, hash_size: int) -> np.ndarray:
    """imagehash's pHash packed into uint8; zero padding to whole bytes leaves Hamming distances unchanged."""
    bits = imagehash.phash(image, hash_size=hash_size).hash.reshape(-1)
    return np.packbits(bits)


def decode_side(hash_size: int, image_size: int) -> int:
    """The smallest side JPEG draft decoding may reduce to. It fixes the pixels both descriptors see, so it
    is part of both fingerprints: corpus and test images must be decoded the same way."""
    return max(image_size, 4 * hash_size)  # pHash resizes to 4 * hash_size before its DCT


def trunk_fingerprint(trunk: torch.nn.Module) -> str:
    """sha256 over the trunk's state (names, shapes, values): equal exactly when the embeddings would be."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes())
    return digest.hexdigest()


def corpus_fingerprint(dataset: Dataset) -> str:
    """The manifest plus every training shard's name, size and mtime: any rewrite of the corpus changes it."""
    digest = hashlib.sha256((dataset.root / "manifest.json").read_bytes())
    for url in dataset.train_urls(0):
        stat = Path(url).stat()
        digest.update(f"{Path(url).name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class Embedder:
    """Pooled trunk features of center crops, L2-normalised, in inference mode (no autograd state)."""

    def __init__(self, trunk: torch.nn.Module, image_size: int) -> None:
        self.trunk = trunk.eval()
        self.image_size = image_size
        self.fingerprint = trunk_fingerprint(trunk)

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            features = self.trunk(to_float(batch)).float()
        return torch.nn.functional.normalize(features, dim=1).numpy().astype(np.float32)


@dataclass
class Descriptors:
    keys: list[str]
    hashes: np.ndarray | None = None  # N x bytes uint8
    embeddings: np.ndarray | None = None  # N x D float32, unit norm
    skipped: Counter[str] = field(default_factory=Counter)


def describe(
    items: Iterable[tuple[str, bytes]],
    hash_size: int | None,
    embedder: Embedder | None,
    side: int,
    batch_size: int,
    total: int | None = None,
    desc: str = "descriptors",
    progress: bool = True,
    strict: bool = False,
) -> Descriptors:
    """Descriptors of encoded images, streamed: each image is decoded once, hashed at once, and its crop kept
    only until its batch is embedded. Undecodable images raise when `strict`, else are counted and skipped."""
    keys: list[str] = []
    hashes: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
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
        if embedder is not None:
            crops.append(center_crop(image, embedder.image_size))
            if len(crops) >= batch_size:
                embeddings.append(embedder(crops))
                crops = []
    if embedder is not None and crops:
        embeddings.append(embedder(crops))
    out = Descriptors(keys, skipped=skipped)
    if hash_size is not None:
        out.hashes = np.stack(hashes) if hashes else np.zeros((0, hash_bits(hash_size) // 8), np.uint8)
    if embedder is not None:
        out.embeddings = np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)
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


def _save_cache(path: Path, meta: dict[str, Any], desc: Descriptors) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True)),
                                     "keys": np.array(desc.keys, dtype=str)}
    if desc.hashes is not None:
        arrays["hashes"] = desc.hashes
    if desc.embeddings is not None:
        arrays["embeddings"] = desc.embeddings
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def corpus_descriptors(
    corpus_root: str | Path,
    cache_path: str | Path,
    hash_size: int | None,
    embedder: Embedder | None,
    side: int,
    batch_size: int,
    progress: bool = True,
) -> tuple[Descriptors, dict[str, Any]]:
    """Descriptors of every training-shard image, from the cache when its fingerprints match; the parts that
    do not match (or are missing) are computed in one pass and the cache is rewritten atomically.

    `hash_size` / `embedder` None: that part is not wanted. `side`: see `decode_side`.
    Returns the descriptors and a summary: images, skipped counts, cache = hit | partial | miss.
    """
    dataset = Dataset.open(corpus_root)
    cache_path = Path(cache_path)
    want = {
        "hashes": None if hash_size is None else {"hash_size": hash_size, "side": side},
        "embeddings": None if embedder is None else {"trunk": embedder.fingerprint,
                                                     "image_size": embedder.image_size, "side": side},
    }
    wanted = [part for part, spec in want.items() if spec is not None]
    fresh: dict[str, Any] = {"version": VERSION, "corpus": corpus_fingerprint(dataset), "parts": {}, "skipped": {}}
    meta, have = fresh, {}
    cached = _load_cache(cache_path)
    if cached and cached[0].get("version") == VERSION and cached[0].get("corpus") == fresh["corpus"]:
        meta, have = cached
    # A part is reused only when it was computed with exactly the wanted settings.
    todo = [part for part in wanted if meta["parts"].get(part) != want[part] or part not in have]
    if todo:
        skipped: Counter[str] = Counter()
        computed = describe(
            iter_shards(dataset.train_urls(0), skipped),
            hash_size if "hashes" in todo else None,
            embedder if "embeddings" in todo else None,
            side, batch_size, total=dataset.train_samples(0), desc="corpus descriptors", progress=progress,
        )
        if "keys" in have and have["keys"].tolist() != computed.keys:
            # Same fingerprint but other images decoded: distrust the cache and describe everything afresh.
            cache_path.unlink()
            return corpus_descriptors(corpus_root, cache_path, hash_size, embedder, side, batch_size, progress)
        skipped.update(computed.skipped)
        have["keys"] = np.array(computed.keys, dtype=str)
        for part in todo:
            have[part] = getattr(computed, part)
            meta["parts"][part] = want[part]
        meta["skipped"] = dict(skipped)
        _save_cache(cache_path, meta, Descriptors(computed.keys, have.get("hashes"), have.get("embeddings")))
    result = Descriptors(have["keys"].tolist(), have["hashes"] if want["hashes"] else None,
                         have["embeddings"] if want["embeddings"] else None, Counter(meta["skipped"]))
    status = "miss" if len(todo) == len(wanted) else "partial" if todo else "hit"
    return result, {"images": len(result.keys), "skipped": dict(meta["skipped"]), "cache": status}

"""Duplicate images inside the pretraining corpus, by image hash (the "filter duplicate images with image
hashes" step of web-data pipelines): the same photo re-uploaded, re-encoded or resized gets the same pHash.

A cluster is a set of images with identical hashes; `webly shards` counts them and, with
`data.shards.drop_duplicates=true`, keeps only the first image of each. The dedup of test sets against the
corpus reuses `phash_code`, so both halves hash images the same way.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 8  # 64-bit pHash


def phash_code(image: Image.Image, hash_size: int = HASH_SIZE) -> np.ndarray:
    """imagehash's pHash packed into uint8; zero padding to whole bytes leaves Hamming distances unchanged."""
    return np.packbits(imagehash.phash(image, hash_size=hash_size).hash.reshape(-1))


def hash_bytes(data: bytes, hash_size: int = HASH_SIZE) -> np.ndarray | None:
    """The packed pHash of an encoded image, or None when it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return phash_code(image.convert("RGB"), hash_size)
    except (OSError, ValueError, SyntaxError):
        return None


def duplicate_clusters(codes: np.ndarray) -> list[list[int]]:
    """Indices of the rows of `codes` (N x bytes) grouped by identical hash, only groups of two or more,
    each in input order, ordered by their first member."""
    if len(codes) == 0:
        return []
    _, inverse, counts = np.unique(np.ascontiguousarray(codes), axis=0, return_inverse=True, return_counts=True)
    groups: dict[int, list[int]] = {}
    for row, group in enumerate(inverse.reshape(-1)):
        if counts[group] > 1:
            groups.setdefault(int(group), []).append(row)
    return sorted(groups.values(), key=lambda members: members[0])


def summarise(clusters: list[list[int]], images: int) -> dict[str, Any]:
    """Counts for a manifest: clusters, images in them, and how many would go when keeping one per cluster."""
    inside = sum(len(c) for c in clusters)
    return {"images": images, "clusters": len(clusters), "images_in_clusters": inside,
            "redundant": inside - len(clusters), "largest": max((len(c) for c in clusters), default=0)}


def keep_mask(clusters: list[list[int]], images: int) -> np.ndarray:
    """True for every image except the second and later members of each cluster."""
    keep = np.ones(images, dtype=bool)
    for members in clusters:
        keep[members[1:]] = False
    return keep


def hash_all(datas: Iterable[bytes], hash_size: int = HASH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Packed hashes of encoded images (zeros where undecodable) and the mask of the decodable ones."""
    width = -(-hash_size * hash_size // 8)
    codes, ok = [], []
    for data in datas:
        code = hash_bytes(data, hash_size)
        ok.append(code is not None)
        codes.append(code if code is not None else np.zeros(width, np.uint8))
    return (np.stack(codes) if codes else np.zeros((0, width), np.uint8)), np.array(ok, dtype=bool)


def clusters_of(codes: np.ndarray, ok: np.ndarray) -> list[list[int]]:
    """Duplicate clusters among the decodable rows (`ok`), as indices into all rows."""
    rows = np.flatnonzero(ok)
    return [[int(rows[i]) for i in members] for members in duplicate_clusters(codes[rows])]

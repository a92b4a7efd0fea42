"""Search over the corpus views at any scale: exact flat search, or a compact IVF-PQ index beyond a size.

Flat: FAISS exact inner product over the float16 view descriptors, searched in chunks made float32 one at a time
(bounded memory; exact up to ~10M corpus images on one machine). Beyond `flat_max_images` the views go into an
IVF-PQ index (`pq_bytes` bytes per view instead of 2 x dims): trained on a sample, filled in chunks, searched
with `nprobe` lists. Either may first reduce the descriptors with PCA (optionally whitened, which spreads the
variance evenly over the kept dimensions, as in retrieval practice), fitted on a sample of the corpus views.

The twin check of the margin search needs each corpus image's full view; the index keeps those (reduced,
float16: N x dims) besides the searchable structure. A built index is saved next to the corpus descriptors,
named by the fingerprint of the descriptors and the index settings, and loaded by every later benchmark.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from pretrain.atomic import atomic_write
from transfer.config import IndexConfig

SAMPLE = 200_000  # views used to fit PCA and train IVF-PQ


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero), as float32: inner products are cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _sample(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= count:
        return np.asarray(vectors, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), count, replace=False))
    return np.asarray(vectors[pick], dtype=np.float32)


class ViewIndex:
    """The corpus views, searchable by inner product; `full` holds each image's full view (image-major)."""

    def __init__(self, views: int, full: np.ndarray, vectors: np.ndarray | None = None,
                 ivf: faiss.Index | None = None, pca: tuple[np.ndarray, np.ndarray] | None = None,
                 nprobe: int = 16) -> None:
        self.views, self.full, self.vectors, self.ivf, self.pca = views, full, vectors, ivf, pca
        if ivf is not None:
            faiss.extract_index_ivf(ivf).nprobe = nprobe
        self.kind = "ivfpq" if ivf is not None else "flat"

    @property
    def images(self) -> int:
        return len(self.full)

    def reduce(self, queries: np.ndarray) -> np.ndarray:
        """Queries in the index's space: PCA-projected (when fitted) and L2-normalised."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return project(queries, self.pca)

    def search(self, queries: np.ndarray, k: int, chunk_images: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-k views (inner product, best first) of reduced queries; ids are global view indices, -1 = none."""
        if self.ivf is not None:
            sims, ids = self.ivf.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return sims, ids
        sims, ids = [], []
        step = chunk_images * self.views
        for start in range(0, len(self.vectors), step):
            block = np.ascontiguousarray(self.vectors[start:start + step], dtype=np.float32)
            s, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            sims.append(s)
            ids.append(np.where(i >= 0, i + start, -1))
        sim, idx = np.concatenate(sims, axis=1), np.concatenate(ids, axis=1)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sim, order, 1), np.take_along_axis(idx, order, 1)

    def bytes_per_image(self) -> float:
        """Memory of the searchable structure per corpus image (the full views for the twin check included)."""
        search = self.vectors.nbytes if self.vectors is not None else faiss.serialize_index(self.ivf).nbytes
        return (search + self.full.nbytes) / max(self.images, 1)


def fingerprint(descriptor_meta: dict[str, Any], settings: IndexConfig, kind: str) -> str:
    text = json.dumps({"descriptors": descriptor_meta, "settings": asdict(settings), "kind": kind}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def project(vectors: np.ndarray, pca: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Vectors through the PCA (matrix, bias) when there is one, L2-normalised, float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return unit_rows(vectors @ pca[0].T + pca[1]) if pca is not None else vectors


def fit_pca(vectors: np.ndarray, dims: int, whiten: bool) -> tuple[np.ndarray, np.ndarray]:
    """(matrix dims x D, bias) of FAISS's PCA fitted on a sample; whitened: eigenvalue power -1/2."""
    pca = faiss.PCAMatrix(vectors.shape[1], dims, -0.5 if whiten else 0.0)
    pca.train(_sample(vectors, SAMPLE))
    matrix = faiss.vector_to_array(pca.A).reshape(dims, vectors.shape[1])
    return matrix.astype(np.float32), faiss.vector_to_array(pca.b).astype(np.float32)


def _pq_bits(n_views: int) -> int:
    """Bits per PQ sub-code: 8, fewer for small corpora (k-means wants ~39 points per centroid)."""
    return int(max(4, min(8, np.log2(max(n_views, 1) / 39))))


def _ivf_lists(settings: IndexConfig, n_views: int) -> int:
    lists = settings.ivf_lists or int(4 * np.sqrt(n_views))
    return int(max(1, min(lists, min(n_views, SAMPLE) // 39)))  # k-means wants >= 39 training points per list


def build_index(vectors: np.ndarray, views: int, settings: IndexConfig, chunk: int = 262_144) -> ViewIndex:
    """A ViewIndex over image-major unit `vectors` ((N * views) x D, any float dtype), as `settings` say."""
    images = len(vectors) // views
    kind = settings.kind if settings.kind != "auto" else ("flat" if images <= settings.flat_max_images else "ivfpq")
    if kind not in ("flat", "ivfpq"):
        raise ValueError(f"dedup.index={settings.kind!r}: expected auto, flat or ivfpq")
    dims = vectors.shape[1]
    pca = None
    if settings.pca_dims and settings.pca_dims < dims:
        pca = fit_pca(vectors, settings.pca_dims, settings.whiten)
        dims = settings.pca_dims

    def reduced(block: np.ndarray) -> np.ndarray:
        return project(block, pca)

    full = np.concatenate([reduced(vectors[s:s + chunk * views:views]) for s in range(0, len(vectors), chunk * views)]
                          ).astype(np.float16) if len(vectors) else np.zeros((0, dims), np.float16)
    if kind == "flat":
        flat = vectors if pca is None else np.concatenate(
            [reduced(vectors[s:s + chunk]).astype(np.float16) for s in range(0, len(vectors), chunk)])
        return ViewIndex(views, full, vectors=np.asarray(flat, dtype=np.float16))
    if dims % settings.pq_bytes:
        raise ValueError(f"dedup.pq_bytes={settings.pq_bytes} must divide the descriptor dimensions ({dims})")
    spec = f"IVF{_ivf_lists(settings, len(vectors))},PQ{settings.pq_bytes}x{_pq_bits(len(vectors))}"
    ivf = faiss.index_factory(dims, spec, faiss.METRIC_INNER_PRODUCT)
    ivf.train(reduced(_sample(vectors, SAMPLE)))
    for start in range(0, len(vectors), chunk):
        ivf.add(reduced(vectors[start:start + chunk]))
    return ViewIndex(views, full, ivf=ivf, pca=pca, nprobe=settings.nprobe)


def save_index(index: ViewIndex, path: str | Path) -> Path:
    """Write the index as one .npz (FAISS structures serialised to bytes), atomically."""
    arrays: dict[str, np.ndarray] = {"full": index.full, "views": np.array(index.views)}
    if index.vectors is not None:
        arrays["vectors"] = index.vectors
    if index.ivf is not None:
        arrays["ivf"] = faiss.serialize_index(index.ivf)
    if index.pca is not None:
        arrays["pca_matrix"], arrays["pca_bias"] = index.pca
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_index(path: str | Path, nprobe: int = 16) -> ViewIndex | None:
    """The index saved at `path`, or None when there is none or it is unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            parts = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    ivf = faiss.deserialize_index(parts["ivf"]) if "ivf" in parts else None
    pca = (parts["pca_matrix"], parts["pca_bias"]) if "pca_matrix" in parts else None
    return ViewIndex(int(parts["views"]), parts["full"], parts.get("vectors"), ivf, pca, nprobe)


def load_or_build(directory: str | Path, descriptor_meta: dict[str, Any], vectors: np.ndarray, views: int,
                  settings: IndexConfig) -> tuple[ViewIndex, dict[str, Any]]:
    """The index of these descriptors and settings from `directory` when built before, else built and saved;
    with a summary (kind, file, cache hit | miss, bytes per image)."""
    images = len(vectors) // views
    kind = settings.kind if settings.kind != "auto" else ("flat" if images <= settings.flat_max_images else "ivfpq")
    path = Path(directory) / f"index-{kind}-{fingerprint(descriptor_meta, settings, kind)}.npz"
    if kind == "flat" and not settings.pca_dims:  # the index is the cached descriptors: nothing to build or save
        return build_index(vectors, views, settings), {"kind": "flat", "file": None, "cache": "descriptors",
                                                       "bytes_per_image": round(vectors.nbytes / max(images, 1), 1)}
    index = load_index(path, settings.nprobe) if path.exists() else None
    status = "hit" if index is not None else "miss"
    if index is None:
        index = build_index(vectors, views, settings)
        save_index(index, path)
    return index, {"kind": index.kind, "file": str(path), "cache": status,
                   "bytes_per_image": round(index.bytes_per_image(), 1)}

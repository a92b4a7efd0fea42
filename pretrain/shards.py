"""Webdataset shards on disk: writing them atomically, and the dataset manifest with its nested subsets.

A dataset root holds `shards/` (train-NNNNNN.tar in a fixed order, heldout-NNNNNN.tar), `vocab.tsv` and
`manifest.json`. Subset k is the first n_k training shards, so every smaller data size is inside every larger
one, as Sun et al.'s 10M ⊂ 30M ⊂ 100M ⊂ 300M.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from pretrain.atomic import atomic_write, atomic_write_json, read_json
from pretrain.config import ShardsConfig
from pretrain.tags import normalize_tags
from pretrain.vocab import build_vocabulary, coverage

FORMAT = "webly-shards/1"
SampleSource = Callable[[], Iterable[dict[str, Any]]]


@dataclass
class ShardStats:
    name: str
    samples: int = 0
    tag_counts: Counter[str] = field(default_factory=Counter)


@dataclass
class ShardJob:
    """One shard to write: its file name and a picklable callable that yields its samples."""

    name: str
    samples: SampleSource


def _encode_json(meta: dict[str, Any] | bytes) -> bytes:
    """Sidecars arrive as dicts (ours) or as already-encoded bytes (re-sharding), which are kept verbatim."""
    return meta if isinstance(meta, bytes) else json.dumps(meta).encode("utf-8")


def _tags_of(encoded: bytes) -> list[str]:
    """Normalised tags of an encoded sidecar; none when it does not parse (the loader counts those)."""
    try:
        meta = json.loads(encoded)
    except (ValueError, UnicodeDecodeError):
        return []
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return normalize_tags(tags) if isinstance(tags, list) else []


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> ShardStats:
    """Write one tar shard atomically and count the normalised tags of its samples."""
    stats = ShardStats(path.name)

    def write(handle) -> None:
        with wds.TarWriter(handle) as sink:
            for sample in samples:
                encoded = _encode_json(sample["json"])
                stats.tag_counts.update(_tags_of(encoded))
                sink.write({**sample, "json": encoded})
                stats.samples += 1

    atomic_write(path, write)
    return stats


def _run_job(job_and_dir: tuple[ShardJob, Path]) -> ShardStats:
    job, shard_dir = job_and_dir
    return write_shard(shard_dir / job.name, job.samples())


def write_shards(
    shard_dir: Path, jobs: Sequence[ShardJob], processes: int = 1, desc: str = "shards"
) -> list[ShardStats]:
    """Write every job's shard, in parallel over processes, with a progress bar; results in job order."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    work = [(job, shard_dir) for job in jobs]
    bar = tqdm(total=len(jobs), desc=desc, unit="shard")
    try:
        if processes > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                results = []
                for stats in pool.imap(_run_job, work):
                    results.append(stats)
                    bar.update()
                return results
        results = []
        for item in work:
            results.append(_run_job(item))
            bar.update()
        return results
    finally:
        bar.close()


def subset_sizes(num_shards: int, fractions: Sequence[float]) -> list[int]:
    """Shard counts of the nested subsets: increasing, at least one shard each, the last one all of them."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"shards.subsets must be fractions in (0, 1], got {list(fractions)}")
    counts = {max(1, math.ceil(f * num_shards - 1e-9)) for f in fractions}
    return sorted(counts | {num_shards})


def finalize_dataset(
    root: Path,
    train: list[ShardStats],
    heldout: list[ShardStats],
    cfg: ShardsConfig,
    source: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the vocabulary from the training shards and write `vocab.tsv` and `manifest.json`."""
    tag_counts: Counter[str] = Counter()
    for stats in train:
        tag_counts.update(stats.tag_counts)
    vocab = build_vocabulary(tag_counts, cfg.vocab.min_count, cfg.vocab.top_k)
    vocab.save(root / "vocab.tsv")
    subsets = []
    for k, n in enumerate(subset_sizes(len(train), cfg.subsets), start=1):
        subsets.append({"index": k, "shards": n, "samples": sum(s.samples for s in train[:n])})
    manifest = {
        "format": FORMAT,
        "source": source,
        "num_samples": sum(s.samples for s in train),
        "num_shards": len(train),
        "shards": [{"name": s.name, "samples": s.samples} for s in train],
        "heldout": [{"name": s.name, "samples": s.samples} for s in heldout],
        "subsets": subsets,
        "vocab": {
            "size": len(vocab),
            "distinct_tags": len(tag_counts),
            "coverage": round(coverage(vocab, tag_counts), 6),
            "min_count": cfg.vocab.min_count,
            "top_k": cfg.vocab.top_k,
        },
        **(extra or {}),
    }
    atomic_write_json(root / "manifest.json", manifest)
    return manifest


@dataclass
class Dataset:
    """A dataset root as the loader sees it."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        manifest = read_json(root / "manifest.json")
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{root / 'manifest.json'}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(root, manifest)

    def train_urls(self, subset: int = 0) -> list[str]:
        """Shard paths of nested subset `subset` (1-based), or of all training shards for 0."""
        names = [s["name"] for s in self.manifest["shards"]]
        if subset:
            subsets = self.manifest["subsets"]
            if not 1 <= subset <= len(subsets):
                raise ValueError(f"data.subset={subset}: {self.root} has subsets 1..{len(subsets)} (0 = all)")
            names = names[: subsets[subset - 1]["shards"]]
        return [str(self.root / "shards" / n) for n in names]

    def train_samples(self, subset: int = 0) -> int:
        if not subset:
            return int(self.manifest["num_samples"])
        return int(self.manifest["subsets"][subset - 1]["samples"])

    def heldout_urls(self) -> list[str]:
        return [str(self.root / "shards" / s["name"]) for s in self.manifest["heldout"]]

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
from pretrain.tagcount import TagCounter, tag_counter
from pretrain.tags import normalize_tags
from pretrain.vocab import build_vocabulary, coverage
from pretrain.vocabstats import write_vocab_stats

FORMAT = "webly-shards/1"
STATS_DIR = "_stats"  # per-shard counts of resumable shards, next to the shards
SHARD_MTIME = 1_700_000_000  # the modification time of every tar member
SampleSource = Callable[[], Iterable[dict[str, Any]]]


SKIP_KEY = "__skip__"  # a sample source yields {SKIP_KEY: reason} for an input it could not use


@dataclass
class ShardStats:
    name: str
    samples: int = 0
    tag_counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # inputs left out of this shard, by reason
    resumed: bool = False  # True when the shard was already there from an earlier run and kept

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "tag_counts": dict(self.tag_counts),
                "skipped": dict(self.skipped)}


@dataclass
class ShardJob:
    """One shard to write: its file name and a picklable callable that yields its samples.

    A non-empty `fingerprint` (what went into the shard: input list, source file, options) makes the shard
    resumable: a later run with the same fingerprint keeps the finished shard and its counts instead of
    writing it again.
    """

    name: str
    samples: SampleSource
    fingerprint: str = ""


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


def stamp_files(digest: Any, paths: Iterable[str | Path]) -> Any:
    """Feed each file's name, size and mtime to a hashlib `digest` (a cache key that changes when a shard is
    rewritten, without reading the shards); returns the digest."""
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> ShardStats:
    """Write one tar shard atomically and count the normalised tags of its samples (and the skipped inputs)."""
    stats = ShardStats(path.name)

    def write(handle) -> None:
        # an integer mtime: no PAX header per member (a float one doubles the headers every reader parses), and
        # the same samples give the same bytes
        with wds.TarWriter(handle, mtime=SHARD_MTIME) as sink:
            for sample in samples:
                if SKIP_KEY in sample:
                    stats.skipped[sample[SKIP_KEY]] += 1
                    continue
                encoded = _encode_json(sample["json"])
                stats.tag_counts.update(_tags_of(encoded))
                sink.write({**sample, "json": encoded})
                stats.samples += 1

    atomic_write(path, write)
    return stats


def _stats_path(shard_dir: Path, name: str) -> Path:
    return shard_dir / STATS_DIR / f"{name}.json"


def finished_shard(shard_dir: Path, job: ShardJob) -> ShardStats | None:
    """The counts of `job`'s shard when an earlier run finished it with the same fingerprint, else None."""
    if not job.fingerprint or not (shard_dir / job.name).is_file():
        return None
    try:
        saved = read_json(_stats_path(shard_dir, job.name))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != job.fingerprint:
        return None
    return ShardStats(job.name, int(saved["samples"]), Counter(saved["tag_counts"]), Counter(saved["skipped"]),
                      resumed=True)


def _run_job(job_and_dir: tuple[ShardJob, Path]) -> ShardStats:
    job, shard_dir = job_and_dir
    kept = finished_shard(shard_dir, job)
    if kept is not None:
        return kept
    stats = write_shard(shard_dir / job.name, job.samples())
    if job.fingerprint:  # written after the shard: a shard without its counts is rewritten on resume
        atomic_write_json(_stats_path(shard_dir, job.name), {**stats.as_dict(), "fingerprint": job.fingerprint})
    return stats


def map_with_progress(
    fn: Callable[[Any], ShardStats], items: Sequence[Any], processes: int = 1, desc: str = "shards",
    counter: TagCounter | None = None,
) -> list[ShardStats]:
    """fn over items, in parallel over (spawned) processes, with a progress bar of running totals; in order.

    With a `counter`, every result's tag counts are moved into it as the result arrives.
    """
    bar = tqdm(total=len(items), desc=desc, unit="shard")
    totals: Counter[str] = Counter()
    results: list[ShardStats] = []

    def done(stats: ShardStats) -> None:
        if counter is not None:
            counter.update(stats.tag_counts)
            stats.tag_counts = Counter()
        results.append(stats)
        totals.update(samples=stats.samples, skipped=sum(stats.skipped.values()), kept=int(stats.resumed))
        bar.set_postfix(totals, refresh=False)
        bar.update()

    try:
        if processes > 1 and len(items) > 1:
            with multiprocessing.get_context("spawn").Pool(min(processes, len(items))) as pool:
                for stats in pool.imap(fn, items):
                    done(stats)
        else:
            for item in items:
                done(fn(item))
        return results
    finally:
        bar.close()


def write_shards(
    shard_dir: Path, jobs: Sequence[ShardJob], processes: int = 1, desc: str = "shards",
    counter: TagCounter | None = None,
) -> list[ShardStats]:
    """Write every job's shard (keeping finished resumable ones), in parallel over processes; in job order.

    With a `counter`, each shard's tag counts go into it as the shard finishes and are not kept in its stats,
    so memory stays bounded by the counter whatever the number of shards.
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    return map_with_progress(_run_job, [(job, shard_dir) for job in jobs], processes, desc, counter)


def count_totals(stats: Sequence[ShardStats]) -> dict[str, Any]:
    """Totals over shards: samples, skipped inputs by reason, and how many shards an earlier run had finished."""
    skipped: Counter[str] = Counter()
    for s in stats:
        skipped.update(s.skipped)
    return {"shards": len(stats), "samples": sum(s.samples for s in stats), "skipped": dict(sorted(skipped.items())),
            "kept_from_earlier_run": sum(s.resumed for s in stats)}


def subset_sizes(num_shards: int, fractions: Sequence[float]) -> list[int]:
    """Shard counts of the nested subsets: increasing, at least one shard each, the last one all of them."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"shards.subsets must be fractions in (0, 1], got {list(fractions)}")
    counts = {max(1, math.ceil(f * num_shards - 1e-9)) for f in fractions}
    return sorted(counts | {num_shards})


def _shard_entry(stats: ShardStats) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": stats.name, "samples": stats.samples}
    if stats.skipped:
        entry["skipped"] = dict(sorted(stats.skipped.items()))
    return entry


def finalize_dataset(
    root: Path,
    train: list[ShardStats],
    heldout: list[ShardStats],
    cfg: ShardsConfig,
    source: str,
    extra: dict[str, Any] | None = None,
    counter: TagCounter | None = None,
) -> dict[str, Any]:
    """Build the vocabulary from the training shards and write `vocab.tsv`, its statistics and `manifest.json`.

    `counter` holds the training shards' tag counts when `write_shards` already folded them in as they came.
    """
    if counter is None:
        counter = tag_counter(cfg.vocab)
        for stats in train:
            counter.update(stats.tag_counts)
    vocab = build_vocabulary(counter.counts, cfg.vocab.min_count, cfg.vocab.top_k, cfg.vocab.oov, counter.total,
                             counter.synonyms)
    vocab.save(root / "vocab.tsv")
    counting = {"max_tracked": counter.max_tracked, "max_undercount": counter.max_undercount,
                "prunes": counter.prunes}
    stats_summary = write_vocab_stats(root, counter.counts, counter.total, len(vocab), extra={"counting": counting})
    subsets = []
    for k, n in enumerate(subset_sizes(len(train), cfg.subsets), start=1):
        subsets.append({"index": k, "shards": n, "samples": sum(s.samples for s in train[:n])})
    manifest = {
        "format": FORMAT,
        "source": source,
        "num_samples": sum(s.samples for s in train),
        "num_shards": len(train),
        "shards": [_shard_entry(s) for s in train],
        "heldout": [_shard_entry(s) for s in heldout],
        "counts": {"train": count_totals(train), "heldout": count_totals(heldout)},
        "subsets": subsets,
        "vocab": {
            "size": len(vocab),
            "distinct_tags": len(counter),
            "coverage": round(coverage(vocab, counter.counts, counter.total), 6),
            "coverage_at_k": stats_summary["coverage_at_k"],
            "min_count": cfg.vocab.min_count,
            "top_k": cfg.vocab.top_k,
            "oov": cfg.vocab.oov,
            "synonyms": len(counter.synonyms),
            **counting,
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

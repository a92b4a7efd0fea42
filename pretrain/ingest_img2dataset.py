"""`webly shards data.shards.source=img2dataset`: shards written by img2dataset, read as they are.

img2dataset's webdataset output is a folder of `NNNNN.tar` shards holding `{key}.jpg`, `{key}.txt` (the
caption) and `{key}.json` (url, caption, size, status and any extra columns). Nothing is copied: one pass
over the shards counts the tags (the json's `tags` list when a crawl saved one, else the caption's
comma-separated pieces or words, as the loader reads them), and the manifest points at the tar files where
they are. Whole shards are held out, chosen by a hash of their name (the last shard when the hash picks
none). Samples without an image or without tags are counted (the loader skips them too); unreadable tar
files are counted and left out.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import webdataset as wds

from pretrain.config import ShardsConfig
from pretrain.ingest import is_heldout
from pretrain.loader import IMAGE_KEYS
from pretrain.shards import ShardStats, count_totals, finalize_dataset, map_with_progress
from pretrain.tagcount import tag_counter
from pretrain.tags import normalize_tags, raw_sample_tags


def scan_shard(path: str) -> ShardStats:
    """Count the usable samples of one img2dataset tar and their normalised tags (the image is not decoded)."""
    stats = ShardStats(path)
    try:
        for sample in wds.tarfile_to_samples()([{"url": path}]):
            if not any(k in sample for k in IMAGE_KEYS):
                stats.skipped["no_image"] += 1
                continue
            raw = raw_sample_tags(sample)
            tags = normalize_tags(raw) if raw is not None else []
            if not tags:
                stats.skipped["no_tags"] += 1
                continue
            stats.samples += 1
            stats.tag_counts.update(tags)
    except (OSError, tarfile.TarError, ValueError):
        stats.skipped["unreadable_shard"] += 1
    return stats


def ingest_img2dataset(root: str | Path, cfg: ShardsConfig, processes: int = 1) -> dict[str, Any]:
    """Index img2dataset's shards in `cfg.input` as dataset root `root` (vocab, manifest); returns the manifest."""
    folder, root = Path(cfg.input), Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"shards.input={cfg.input!r}: not a folder (img2dataset's output_folder)")
    tars = sorted(str(p.resolve()) for p in folder.glob("*.tar"))
    if not tars:
        raise ValueError(f"shards.input={cfg.input!r}: no .tar shard (run img2dataset with output_format=webdataset)")
    held = [t for t in tars if is_heldout(Path(t).name, cfg.heldout_fraction)]
    if len(held) == len(tars):  # keep at least one shard to train on
        held = held[1:]
    elif not held and cfg.heldout_fraction > 0 and len(tars) > 1:  # a few shards: evaluation still needs one
        held = tars[-1:]
    train = [t for t in tars if t not in set(held)]
    counter = tag_counter(cfg.vocab)
    train_stats = [s for s in map_with_progress(scan_shard, train, processes, "img2dataset shards", counter)
                   if "unreadable_shard" not in s.skipped or s.samples]
    held_stats = map_with_progress(scan_shard, held, processes, "held-out shards") if held else []
    if not any(s.samples for s in train_stats):
        raise ValueError(f"{folder}: no sample with an image and tags in {len(train)} shard(s)")
    totals = count_totals([*train_stats, *held_stats])
    report = {"tar_files": len(tars), "samples": totals["samples"], "skipped": totals["skipped"]}
    root.mkdir(parents=True, exist_ok=True)
    # absolute shard paths: Dataset joins them under root/shards, which leaves an absolute path as it is
    return finalize_dataset(root, train_stats, [s for s in held_stats if s.samples], cfg,
                            source=f"img2dataset:{folder.resolve()}", extra={"ingest": report}, counter=counter)

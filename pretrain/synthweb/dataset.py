"""`webly synth`: the synthetic web corpus written straight into a sharded dataset root.

Each shard is generated and written by its own job (image indices [i * per_shard, (i + 1) * per_shard)), so
shards are written in parallel over processes and the result does not depend on the number of processes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.config import DataConfig, SynthConfig
from pretrain.shards import ShardJob, finalize_dataset, write_shards
from pretrain.synthweb.corpus import iter_corpus
from pretrain.synthweb.world import make_world


def _shard_samples(cfg: SynthConfig, split: str, start: int, count: int) -> Iterator[dict[str, Any]]:
    world = make_world(cfg.num_concepts, cfg.seed, cfg.zipf)
    yield from iter_corpus(world, cfg, split, start, count)


def _jobs(cfg: SynthConfig, split: str, total: int, per_shard: int) -> list[ShardJob]:
    return [
        ShardJob(f"{split}-{i // per_shard:06d}.tar",
                 functools.partial(_shard_samples, cfg, split, i, min(per_shard, total - i)))
        for i in range(0, total, per_shard)
    ]


def write_synthweb(data: DataConfig, processes: int = 1) -> dict[str, Any]:
    """Generate `data.synth` into `data.root` (shards/, vocab.tsv, manifest.json); returns the manifest."""
    cfg, root = data.synth, Path(data.root)
    per_shard = data.shards.samples_per_shard
    train_jobs = _jobs(cfg, "train", cfg.num_images, per_shard)
    # one pool for both splits: its spawned workers take seconds to start (they import the shard writer)
    written = write_shards(root / "shards", train_jobs + _jobs(cfg, "heldout", cfg.heldout_images, per_shard),
                           processes, desc="synthweb shards")
    train, heldout = written[: len(train_jobs)], written[len(train_jobs):]
    world = make_world(cfg.num_concepts, cfg.seed, cfg.zipf)
    concepts = [{"index": c.index, "name": c.name, "synonyms": list(c.synonyms), "shape": c.shape,
                 "colour": c.colour, "texture": c.texture} for c in world.concepts]
    return finalize_dataset(root, train, heldout, data.shards, source="synthweb",
                            extra={"synth": {**vars(cfg), "concepts": concepts}})

"""Corrupt samples in real shards are skipped, training runs on, and the logged skip counts are exact."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pretrain.config import ShardsConfig, SynthConfig
from pretrain.runlog import read_jsonl
from pretrain.shards import ShardJob, finalize_dataset, write_shards
from pretrain.synthweb.corpus import corpus_sample
from pretrain.synthweb.world import make_world
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir

SYNTH = SynthConfig(num_concepts=12, image_size=40)


def _good(split: str, index: int) -> dict[str, Any]:
    """A synthweb image with tags that are surely in the vocabulary (each seen many times)."""
    sample = corpus_sample(make_world(SYNTH.num_concepts, SYNTH.seed, SYNTH.zipf), SYNTH, split, index)
    sample["json"]["tags"] = ["Web Photo", f"group {index % 3}"]
    return sample


def _shard_with_bad_samples(shard: int, good: int) -> Iterator[dict[str, Any]]:
    """`good` usable samples with three bad ones in the middle: truncated JPEG, non-JSON sidecar, unknown tags."""
    samples = [_good("train", shard * 100 + i) for i in range(good)]
    truncated = _good("train", shard * 100 + 90)
    truncated["jpg"] = truncated["jpg"][: len(truncated["jpg"]) // 2]
    not_json = _good("train", shard * 100 + 91)
    not_json["json"] = b'{"tags": ["never closed"'
    unknown = _good("train", shard * 100 + 92)
    unknown["json"] = {"tags": [f"one-off tag {shard}a", f"one-off tag {shard}b"], "meta": {}}
    for offset, bad in enumerate([truncated, not_json, unknown]):
        bad["__key__"] = f"bad-{shard}-{offset}"
    yield from samples[: good // 2] + [truncated, not_json, unknown] + samples[good // 2 :]


def _heldout(count: int) -> Iterator[dict[str, Any]]:
    yield from (_good("heldout", i) for i in range(count))


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_are_exactly_the_planted_ones(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "data"
    shards = 2
    train = write_shards(root / "shards", [
        ShardJob(f"train-{i:06d}.tar", functools.partial(_shard_with_bad_samples, i, 20)) for i in range(shards)
    ])
    heldout = write_shards(root / "shards", [ShardJob("heldout-000000.tar", functools.partial(_heldout, 20))])
    finalize_dataset(root, train, heldout, ShardsConfig(subsets=[1.0]), source="test")

    # no shuffling and batches that end exactly on the last good sample of each shard: every sample is
    # met exactly once, so the counts must equal what was planted (one of each kind per shard)
    cfg = tiny_config(tmp_path / "runs", root, "data.shuffle_buffer=1", f"data.num_workers={workers}",
                      "train.batch_size=10", "train.steps=4", "train.steps_per_epoch=4", "train.log_every=1")
    summary = pretrain_job(cfg)

    expected = {"skipped/bad_image": shards, "skipped/bad_json": shards, "skipped/no_known_tag": shards,
                "skipped/missing_image": 0, "skipped/bad_shard": 0}
    assert {k: summary[k] for k in expected} == expected
    rows = [r for r in read_jsonl(pretrain_run_dir(cfg) / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {k: rows[-1][k] for k in expected} == expected
    assert summary["images_seen"] == 40

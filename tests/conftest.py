"""Shared fixtures: a small synthetic-web dataset made once per session, and configs that point at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import DataConfig, ShardsConfig, SynthConfig
from pretrain.synthweb.dataset import write_synthweb
from webly.config import WeblyConfig, compose


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # everything under tests/integration/ is an integration test
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """480 training images in 4 shards (subsets of 1, 2, 4 shards) and 96 held-out images, 48 px."""
    root = tmp_path_factory.mktemp("synthweb")
    data = DataConfig(
        root=str(root),
        synth=SynthConfig(num_images=480, heldout_images=96, image_size=48, num_concepts=20),
        shards=ShardsConfig(samples_per_shard=120, subsets=[0.25, 0.5, 1.0]),
    )
    write_synthweb(data, processes=1)
    return root


def tiny_config(work_dir: Path, data_root: Path, *overrides: str) -> WeblyConfig:
    """The tiny profile, quiet and offline, shrunk further for unit-test speed; overrides win."""
    return compose([
        f"data.root={data_root}", f"work_dir={work_dir}", "logging.wandb.mode=disabled", "logging.progress=false",
        "data.image_size=40", "data.num_workers=0", "train.batch_size=16", "train.steps=20",
        "train.steps_per_epoch=8", "train.checkpoint_every=10", "train.log_every=5", "train.threads=1",
        "optim.warmup_steps=4", *overrides,
    ])

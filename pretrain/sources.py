"""`webly shards`: which reader turns `data.shards.input` into a dataset root, by `data.shards.source`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.config import ShardsConfig
from pretrain.ingest import ingest_folder
from pretrain.ingest_img2dataset import ingest_img2dataset
from pretrain.ingest_yfcc import ingest_yfcc

SOURCES = {"folder": ingest_folder, "yfcc": ingest_yfcc, "img2dataset": ingest_img2dataset}


def ingest(root: str | Path, cfg: ShardsConfig, processes: int = 1) -> dict[str, Any]:
    """Build dataset root `root` from `cfg.input` as `cfg.source` says; returns the manifest."""
    if cfg.source not in SOURCES:
        raise ValueError(f"shards.source={cfg.source!r}: choose one of {', '.join(SOURCES)}")
    return SOURCES[cfg.source](root, cfg, processes)

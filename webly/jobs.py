"""The functions a job runs. Each takes the whole typed config, is importable, and is tested directly.

submitit pickles these calls and runs them in a local process or a Slurm allocation; nothing here depends
on where it runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pretrain.atomic import read_json
from pretrain.ingest import ingest_folder
from pretrain.stage import is_done
from pretrain.synthweb.dataset import write_synthweb
from pretrain.train import pretrain
from webly.config import WeblyConfig, pretrain_config, run_name


def _processes() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def synth_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Generate the synthetic web into `data.root`; returns the dataset manifest (without its shard list)."""
    manifest = write_synthweb(cfg.data, processes=_processes())
    return {k: v for k, v in manifest.items() if k not in ("shards", "synth")}


def shards_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Shard the folder `data.shards.input` into `data.root`; returns the dataset manifest summary."""
    if not cfg.data.shards.input:
        raise ValueError("data.shards.input is empty: name the folder of images with sidecar tag files")
    manifest = ingest_folder(cfg.data.root, cfg.data.shards, processes=_processes())
    return {k: v for k, v in manifest.items() if k != "shards"}


def pretrain_run_dir(cfg: WeblyConfig) -> Path:
    return Path(cfg.work_dir) / "pretrain" / run_name(cfg)


def pretrain_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Pretrain in the run directory the config names; a run already done with this config is not redone."""
    stage_cfg = pretrain_config(cfg)
    stage_cfg = dataclasses.replace(stage_cfg, run_dir=str(pretrain_run_dir(cfg)))
    if is_done(stage_cfg.run_dir, dataclasses.asdict(stage_cfg)):
        summary = read_json(Path(stage_cfg.run_dir) / "manifest.json")["summary"]
        return {**summary, "run_dir": stage_cfg.run_dir, "skipped": "already done"}
    return {**pretrain(stage_cfg), "run_dir": stage_cfg.run_dir}

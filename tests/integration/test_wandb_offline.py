"""W&B in offline mode writes a real run file; a resumed run keeps the same W&B run id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pretrain.checkpoint import list_checkpoints
from pretrain.runlog import resolve_wandb_mode
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir


def test_auto_mode_is_offline_without_a_key(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"


def test_offline_run_and_resume_keep_one_run_id(tmp_path: Path, synth_root: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = tiny_config(tmp_path, synth_root, "logging.wandb.mode=auto", "train.steps=10", "train.checkpoint_every=5")
    pretrain_job(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_after=5)))
    run_dir = pretrain_run_dir(cfg)
    first_id = torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)["state"]["wandb_id"]
    assert first_id

    pretrain_job(cfg)
    final = torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)
    assert final["state"]["step"] == 10
    assert final["state"]["wandb_id"] == first_id
    run_files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert run_files, "no offline W&B run file was written"
    assert {p.name for p in run_files} == {f"run-{first_id}.wandb"}
    assert all(p.stat().st_size > 0 for p in run_files)

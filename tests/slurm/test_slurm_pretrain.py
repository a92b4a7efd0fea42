"""Pretraining jobs on a real Slurm: preempted by USR2 they checkpoint, requeue and resume to the same weights."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import list_checkpoints
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir
from webly.launch import submit

pytestmark = pytest.mark.timeout(1200)
SLURM = ("launcher=slurm", "launcher.cpus_per_task=1", "launcher.time_min=20")  # >= 15: see the Slurm notes


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _trunk(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "trunk.pt", weights_only=True)


def test_usr2_checkpoints_requeues_and_resumes_to_the_same_weights(tmp_path: Path, synth_root: Path) -> None:
    common = ("train.steps=600", "train.steps_per_epoch=50", "train.checkpoint_every=25", "train.log_every=25")
    cfg = tiny_config(tmp_path / "slurm", synth_root, *common, *SLURM, "logging.wandb.mode=offline")
    job = submit(cfg.launcher, tmp_path / "jobs", "preempt", pretrain_job, cfg)
    checkpoints = pretrain_run_dir(cfg) / "checkpoints"
    _wait_for(lambda: bool(list_checkpoints(checkpoints)), 600, "the first checkpoint")
    subprocess.run(["scancel", "-s", "USR2", str(job.job_id)], check=True)
    result = job.result()
    assert result["step"] == 600

    log = Path(job.paths.stdout).read_text()
    assert "SIGUSR2" in log
    resumed_at = [int(step) for step in re.findall(r"resuming from \S+ \(step (\d+)\)", log)]
    assert len(resumed_at) == 1 and 0 < resumed_at[0] < 600, log[-2000:]
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", str(job.job_id)],
                             capture_output=True, text=True, check=True).stdout.split()
    assert history[0] == "REQUEUED", history  # the first allocation ended requeued; the second ran to the end
    # the same W&B run continues: both offline run folders carry one run id
    run_ids = {p.name.rsplit("-", 1)[1] for p in (pretrain_run_dir(cfg) / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1

    straight = tiny_config(tmp_path / "straight", synth_root, *common)
    pretrain_job(straight)
    weights, reference = _trunk(pretrain_run_dir(cfg)), _trunk(pretrain_run_dir(straight))
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_two_task_job_trains_with_ddp(tmp_path: Path, synth_root: Path) -> None:
    """`launcher.tasks_per_node=2`: submitit starts two tasks, which join one gloo group through its environment."""
    cfg = tiny_config(tmp_path, synth_root, "train.steps=12", *SLURM, "launcher.tasks_per_node=2")
    job = submit(cfg.launcher, tmp_path / "jobs", "ddp", pretrain_job, cfg)
    results = job.results()
    assert len(results) == 2
    main = next(r for r in results if "processes" in r)
    assert main["processes"] == 2 and main["step"] == 12
    assert main["images_seen"] == 12 * 2 * cfg.train.batch_size
    assert (pretrain_run_dir(cfg) / "trunk.pt").exists()

"""Exact resume: N steps straight through == N/2 steps, stop, resume to N (bitwise, on the CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pretrain.atomic import read_json
from pretrain.checkpoint import list_checkpoints
from pretrain.runlog import read_jsonl
from pretrain.train import pretrain
from tests.conftest import tiny_config
from webly.jobs import pretrain_job, pretrain_run_dir, pretrain_stage


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_and_resume_gives_bitwise_equal_weights(tmp_path: Path, synth_root: Path, workers: int) -> None:
    # 24 steps, 9 per epoch: the stop at 12 falls mid-epoch (epoch 1, batch 3), off the checkpoint grid
    common = ("train.steps=24", "train.steps_per_epoch=9", "train.checkpoint_every=10", f"data.num_workers={workers}")
    straight = tiny_config(tmp_path / "a", synth_root, *common)
    resumed = tiny_config(tmp_path / "b", synth_root, *common)

    pretrain_job(straight)
    first_half = pretrain_job(dataclasses.replace(resumed, train=dataclasses.replace(resumed.train, stop_after=12)))
    assert first_half["status"] == "stopped" and first_half["step"] == 12
    run_b = pretrain_run_dir(resumed)
    assert [p.name for p in list_checkpoints(run_b / "checkpoints")] == ["step_00000010.pt", "step_00000012.pt"]
    pretrain_job(resumed)

    run_a = pretrain_run_dir(straight)
    final_a = torch.load(run_a / "checkpoints" / "step_00000024.pt", weights_only=True)
    final_b = torch.load(run_b / "checkpoints" / "step_00000024.pt", weights_only=True)
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key
    for group_a, group_b in zip(final_a["optimizer"]["state"].values(), final_b["optimizer"]["state"].values(),
                                strict=True):
        assert torch.equal(group_a["momentum_buffer"], group_b["momentum_buffer"])
    assert final_a["state"] == final_b["state"]

    # the resumed run's log has each step once, and the same losses as the straight run
    losses_a = [(r["step"], r["loss"]) for r in read_jsonl(run_a / "metrics.jsonl") if "loss" in r]
    losses_b = [(r["step"], r["loss"]) for r in read_jsonl(run_b / "metrics.jsonl") if "loss" in r]
    assert losses_a == losses_b
    assert [s for s, _ in losses_b] == [5, 10, 15, 20, 24]


def test_finished_run_is_not_redone(tmp_path: Path, synth_root: Path) -> None:
    cfg = tiny_config(tmp_path, synth_root, "train.steps=6")
    first = pretrain_job(cfg)
    trunk = pretrain_run_dir(cfg) / "trunk.pt"
    stamp = trunk.stat().st_mtime_ns
    again = pretrain_job(cfg)
    assert again["skipped"] == "already done"
    assert again["eval/precision_at_1"] == first["eval/precision_at_1"]
    assert trunk.stat().st_mtime_ns == stamp


def test_preemption_checkpoints_at_the_step_it_is_noticed(tmp_path: Path, synth_root: Path) -> None:
    """A stop request (Slurm's USR2, seen through the job's flag) saves a checkpoint at once, off the checkpoint
    grid; the resumed run ends with the straight run's weights."""
    common = ("train.steps=16", "train.steps_per_epoch=9", "train.checkpoint_every=10")
    straight = pretrain_stage(tiny_config(tmp_path / "a", synth_root, *common))
    preempted = pretrain_stage(tiny_config(tmp_path / "b", synth_root, *common))
    pretrain(straight)
    asked = []
    first = pretrain(preempted, should_stop=lambda: asked.append(1) or len(asked) >= 7)
    assert first == {"step": 7, "status": "preempted"}
    ckpts = Path(preempted.run_dir) / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000007.pt"]
    assert read_json(Path(preempted.run_dir) / "manifest.json")["status"] == "preempted"
    pretrain(preempted)
    final_a = torch.load(Path(straight.run_dir) / "trunk.pt", weights_only=True)
    final_b = torch.load(Path(preempted.run_dir) / "trunk.pt", weights_only=True)
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path: Path, synth_root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    common = ("train.steps=16", "train.checkpoint_every=4", "train.keep_last=0", "head=sampled_softmax",
              "head.num_sampled=8")
    straight = tiny_config(tmp_path / "a", synth_root, *common)
    broken = tiny_config(tmp_path / "b", synth_root, *common)
    pretrain_job(straight)
    pretrain_job(dataclasses.replace(broken, train=dataclasses.replace(broken.train, stop_after=10)))
    ckpt_dir = pretrain_run_dir(broken) / "checkpoints"
    newest = ckpt_dir / "step_00000010.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn, as by a crash of the storage

    with pytest.warns(UserWarning, match=r"step_00000010\.pt: cannot be loaded"):
        pretrain_job(broken)
    assert "step_00000008.pt (step 8)" in capsys.readouterr().out  # from the previous one, not from scratch
    rows = read_jsonl(pretrain_run_dir(broken) / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 16]  # steps 9.. were redone, logged once
    final_a = torch.load(pretrain_run_dir(straight) / "checkpoints" / "step_00000016.pt", weights_only=True)
    final_b = torch.load(ckpt_dir / "step_00000016.pt", weights_only=True)
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key

"""Checkpoints: the newest k kept, atomic writes, fallback past a corrupt file, RNG states, weights_only loading."""

from __future__ import annotations

import random
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pretrain.config import OptimConfig
from pretrain.optim import build_optimizer, build_scheduler


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_checkpoint_path_format(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, 42) == tmp_path / "step_00000042.pt"
    assert checkpoint_path(tmp_path, 123456789) == tmp_path / "step_123456789.pt"


def test_save_keeps_the_newest_keep_last(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    for step in (10, 20, 30, 40, 50):
        path = save_checkpoint(directory, step, {"step": step}, keep_last=2)
        assert path == directory / f"step_{step:08d}.pt"
    assert names(directory) == ["step_00000040.pt", "step_00000050.pt"]
    assert torch.load(directory / "step_00000050.pt", weights_only=True) == {"step": 50}


def test_keep_last_zero_keeps_everything(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=0)
    assert names(tmp_path) == ["step_00000001.pt", "step_00000002.pt", "step_00000003.pt"]


def test_pruning_orders_steps_numerically_not_by_name(tmp_path: Path) -> None:
    # 'step_100000000.pt' sorts before 'step_99999999.pt' as a string
    save_checkpoint(tmp_path, 99_999_999, {"step": 1}, keep_last=1)
    save_checkpoint(tmp_path, 100_000_000, {"step": 2}, keep_last=1)
    assert names(tmp_path) == ["step_100000000.pt"]
    assert load_latest(tmp_path)[1] == {"step": 2}


def test_list_checkpoints_ignores_other_files(tmp_path: Path) -> None:
    for name in ["step_00000003.pt", "step_00000001.pt", "step_1.pt", ".step_00000009.pt.123.tmp", "notes.txt",
                 "step_00000002.pt.bak", "trunk.pt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt", "step_00000003.pt"]
    assert list_checkpoints(tmp_path / "missing") == []
    assert load_latest(tmp_path / "missing") is None


def test_a_failing_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 1, {"weights": torch.arange(4)}, keep_last=1)
    before = (tmp_path / "step_00000001.pt").read_bytes()
    real_save = torch.save

    def torn_save(obj, handle, *args, **kwargs) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(tmp_path, 2, {"weights": torch.arange(8)}, keep_last=1)
    monkeypatch.setattr(torch, "save", real_save)

    assert names(tmp_path) == ["step_00000001.pt"]  # no step 2, no temp file, step 1 not pruned
    assert (tmp_path / "step_00000001.pt").read_bytes() == before
    path, state = load_latest(tmp_path)
    assert path == tmp_path / "step_00000001.pt"
    assert torch.equal(state["weights"], torch.arange(4))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_falls_back_to_the_previous_one_with_a_warning(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)}, keep_last=3)
    newest = save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(300)}, keep_last=3)
    data = newest.read_bytes()
    newest.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])

    with pytest.warns(UserWarning, match=r"(?s)step_00000002\.pt: cannot be loaded .*trying an older checkpoint"):
        found = load_latest(tmp_path)
    assert found is not None
    path, state = found
    assert path == tmp_path / "step_00000001.pt"
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_no_loadable_checkpoint_gives_none_after_one_warning_each(tmp_path: Path) -> None:
    for step in (1, 2):
        (tmp_path / f"step_{step:08d}.pt").write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_latest(tmp_path) is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "step_00000002.pt" in messages[0] and "step_00000001.pt" in messages[1]


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.getrandbits(64),
        np.random.rand(3).tolist(),
        float(np.random.randn()),  # uses numpy's cached Gaussian when one is pending
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (2,)).tolist(),
    )


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    np.random.randn()  # leave a cached Gaussian in numpy's state
    save_checkpoint(tmp_path, 1, {"rng": rng_state()}, keep_last=1)
    expected = _draws()

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert _draws() != expected  # the streams really moved elsewhere

    _, loaded = load_latest(tmp_path)
    set_rng_state(loaded["rng"])
    assert _draws() == expected


def test_rng_state_round_trip_in_memory() -> None:
    state = rng_state()
    expected = _draws()
    set_rng_state(state)
    assert _draws() == expected
    assert set(state) >= {"python", "numpy", "torch"}
    assert state["numpy"][0] == "MT19937"
    assert isinstance(state["numpy"][1], torch.Tensor) and state["numpy"][1].numel() == 624


def test_a_training_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    cfg = OptimConfig(warmup_steps=2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "state": {"step": 1, "epoch": 0, "skipped": {"bad_image": 2}, "wandb_id": None},
             "rng": rng_state(), "config": {"optim": {"betas": [0.9, 0.999], "lr": 0.1}}}
    path = save_checkpoint(tmp_path, 1, state, keep_last=1)
    loaded = torch.load(path, weights_only=True)
    assert loaded["state"] == state["state"]
    assert loaded["config"] == state["config"]
    assert loaded["scheduler"]["last_epoch"] == 1
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor), key
    momentum = [s["momentum_buffer"] for s in loaded["optimizer"]["state"].values()]
    assert len(momentum) == len(list(model.parameters()))


def test_a_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"fraction": Fraction(1, 3)}, keep_last=1)
    with pytest.warns(UserWarning, match=r"step_00000001\.pt: cannot be loaded"):
        assert load_latest(tmp_path) is None

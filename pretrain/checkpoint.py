"""Step-based training checkpoints: atomic writes, the last k kept, and a fallback when the newest is bad.

A checkpoint holds plain containers and tensors only, so it is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.atomic import atomic_write

_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in the directory, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write `state` as the checkpoint of `step`, then delete all but the newest `keep_last`."""
    directory = Path(directory)
    path = atomic_write(checkpoint_path(directory, step), lambda handle: torch.save(state, handle))
    if keep_last > 0:
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, falling back to older ones with a warning; None when there is none."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # a torn or corrupt file: any unpickling error means "not usable"
            warnings.warn(f"{path}: cannot be loaded ({type(err).__name__}: {err}); trying an older checkpoint",
                          stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """Every random number generator a training step can touch."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

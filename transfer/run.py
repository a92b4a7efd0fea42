"""`run_transfer(cfg)`: the function a transfer job runs — one task, one mode, one initialisation.

It reads the de-duplication manifest (when given) to know which test images to leave out of the
de-duplicated metrics, runs the task, and writes `result.json` and the stage manifest atomically. A run
whose manifest says done for the same config is not redone. With `repeats` > 1 the task is trained once per
seed and the metrics are averaged (the dense tasks' short runs vary by seed about as much as between trunks).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.atomic import atomic_write_json, read_json
from pretrain.stage import is_done, write_manifest
from transfer.backbone import trunk_model_config
from transfer.config import MODES, TASKS, TransferConfig


def _task_module(task: str):
    """The module that trains and evaluates `task` (imported on demand: detection pulls in more)."""
    if task == "classification":
        from transfer import classification as module
    elif task == "semantic":
        from transfer import segmentation as module
    else:
        from transfer import detection as module
    return module


def excluded_ids(dedup_path: str) -> set[str]:
    """Test ids flagged as near-duplicates of pretraining images by a dedup manifest."""
    if not dedup_path:
        return set()
    return {entry["id"] for entry in read_json(dedup_path)["flagged"]}


def repeated_runs(cfg: TransferConfig, excluded_test_ids: set[str]) -> dict[str, Any]:
    """`cfg.repeats` trainings with seeds `seed`, `seed + 1`, ...: the metrics are their means, `metrics_std` their
    standard deviations over seeds, and `runs` keeps each seed's metrics and times."""
    module = _task_module(cfg.task)
    runs = [module.train_and_evaluate(dataclasses.replace(cfg, seed=cfg.seed + i), excluded_test_ids)
            for i in range(cfg.repeats)]
    if len(runs) == 1:
        return runs[0]
    result = dict(runs[0])
    result["metrics"], result["metrics_std"] = {}, {}
    for test_set, first in runs[0]["metrics"].items():
        values = {name: np.array([run["metrics"][test_set][name] for run in runs]) for name in first}
        result["metrics"][test_set] = {name: float(v.mean()) for name, v in values.items()}
        result["metrics_std"][test_set] = {name: float(v.std(ddof=1)) for name, v in values.items()}
    for key in ("train_seconds", "eval_seconds"):
        if key in result:
            result[key] = sum(run[key] for run in runs)
    result["runs"] = [{"seed": cfg.seed + i, "metrics": run["metrics"]} for i, run in enumerate(runs)]
    return result


def run_transfer(cfg: TransferConfig) -> dict[str, Any]:
    if cfg.task not in TASKS:
        raise ValueError(f"transfer.task={cfg.task!r}: choose one of {', '.join(TASKS)}")
    if cfg.mode not in MODES:
        raise ValueError(f"transfer.mode={cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.repeats < 1:
        raise ValueError(f"transfer.repeats={cfg.repeats}: must be at least 1")
    if not cfg.run_dir:
        raise ValueError("transfer run_dir is empty")
    run_dir = Path(cfg.run_dir)
    config = dataclasses.asdict(cfg)
    if is_done(run_dir, config):
        return read_json(run_dir / "result.json")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    write_manifest(run_dir, "transfer", "running", config, inputs={"init": cfg.init or "random",
                                                                   "benchmark": cfg.benchmark, "dedup": cfg.dedup})
    try:
        model = trunk_model_config(cfg.init, cfg.model)
        result = repeated_runs(cfg, excluded_ids(cfg.dedup))
    except Exception as err:  # the manifest must not keep saying "running" for a run that died
        write_manifest(run_dir, "transfer", "failed", config, error=repr(err))
        raise
    result.update({"mode": cfg.mode, "init": cfg.init or "random", "depth": model.depth, "width": model.width,
                   "model": model.name})
    atomic_write_json(run_dir / "result.json", result)
    write_manifest(run_dir, "transfer", "done", config, outputs={"result": str(run_dir / "result.json")},
                   summary=result["metrics"])
    return result

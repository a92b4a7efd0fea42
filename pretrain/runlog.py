"""Where a run's metrics go: a JSONL file in the run directory (the source of truth) and Weights & Biases.

W&B mode `auto` is `online` when an API key is set and `offline` otherwise (no network needed; the run can be
synced later with `wandb sync`). A resumed run continues the same W&B run id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text
from pretrain.config import WandbConfig

WANDB_MODES = ("online", "offline", "disabled", "auto")


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise ValueError(f"logging.wandb.mode={mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({err.msg})") from None
    return rows


class RunLogger:
    """Appends metric rows to `metrics.jsonl` and mirrors them to W&B."""

    def __init__(
        self,
        run_dir: str | Path,
        wandb_cfg: WandbConfig,
        config: dict[str, Any],
        name: str,
        run_id: str | None = None,
        resume_step: int = 0,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # rows written after the checkpoint we resume from will be logged again: drop them
        kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self.mode = resolve_wandb_mode(wandb_cfg.mode)
        self.wandb_run = None
        if self.mode != "disabled":
            import wandb  # imported only when used: it takes a second or two

            self.wandb_run = wandb.init(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity or None,
                tags=list(wandb_cfg.tags),
                name=name,
                id=run_id,
                resume="allow",
                dir=str(self.path.parent),
                mode=self.mode,
                config=config,
                settings=wandb.Settings(silent=True, console="off"),
            )
        self.run_id = self.wandb_run.id if self.wandb_run is not None else run_id

    def log(self, row: dict[str, Any], mirror: bool = True) -> None:
        """Append `row`; `mirror=False` keeps it out of W&B (e.g. per-tag counts: thousands of series)."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if mirror and self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(summary)
            self.wandb_run.finish()
            self.wandb_run = None

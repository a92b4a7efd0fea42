"""The results store: every finished run of an experiment directory, read back as flat rows.

Rows are long-format: one per (pretraining cell or random init) x task x mode x metric, with the metric on
the full and on the de-duplicated test set. The run directories are the source of truth; nothing else is kept.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text, read_json

# the metric each task is judged by in plots and fits (instance: mask AP; pose: keypoint AP)
PRIMARY = {"classification": "top1", "detection": "AP", "instance": "AP", "semantic": "mIoU", "pose": "AP"}


@dataclass
class PretrainRow:
    run: str
    data_size: int
    subset: int
    model: str
    depth: int
    width: int
    head: str
    seed: int
    precision_at_1: float
    mAP: float
    # embedding head with held-out tags: zero-shot F1@5 on them and a random ranking's (nan otherwise)
    zeroshot_tags: int = 0
    zeroshot_f1: float = float("nan")
    zeroshot_chance_f1: float = float("nan")
    zeroshot_precision: float = float("nan")
    zeroshot_recall: float = float("nan")


@dataclass
class TransferRow:
    init: str  # "pretrained" or "random"
    run: str  # the pretraining run, or random-<model>
    data_size: int  # pretraining images; 0 for a random init
    model: str
    depth: int
    head: str
    seed: int
    task: str
    mode: str
    metric: str
    full: float
    dedup: float
    repeats: int = 1  # transfer seeds averaged into `full` and `dedup`
    full_std: float = float("nan")  # their standard deviation over seeds (full test set)


def pretrain_rows(exp_dir: Path) -> list[PretrainRow]:
    rows = []
    for manifest_path in sorted((exp_dir / "pretrain").glob("*/manifest.json")):
        manifest = read_json(manifest_path)
        if manifest.get("status") != "done":
            continue
        config, summary = manifest["config"], manifest["summary"]
        rows.append(
            PretrainRow(
                run=manifest_path.parent.name,
                data_size=int(summary["train_samples"]),
                subset=config["data"]["subset"],
                model=config["model"]["name"],
                depth=config["model"]["depth"],
                width=config["model"]["width"],
                head=config["head"]["name"],
                seed=config["train"]["seed"],
                precision_at_1=summary["eval/precision_at_1"],
                mAP=summary["eval/mAP"],
                zeroshot_tags=int(summary.get("zeroshot/tags", 0)),
                zeroshot_f1=float(summary.get("zeroshot/f1_at_5", "nan")),
                zeroshot_chance_f1=float(summary.get("zeroshot/chance_f1_at_5", "nan")),
                zeroshot_precision=float(summary.get("zeroshot/precision_at_5", "nan")),
                zeroshot_recall=float(summary.get("zeroshot/recall_at_5", "nan")),
            )
        )
    return rows


def transfer_rows(exp_dir: Path, pretrained: list[PretrainRow]) -> list[TransferRow]:
    by_run = {row.run: row for row in pretrained}
    rows = []
    for result_path in sorted((exp_dir / "transfer").glob("*/result.json")):
        result = read_json(result_path)
        init_run = Path(result["init"]).name if result["init"] != "random" else ""
        source = by_run.get(init_run)
        if result["init"] != "random" and source is None:
            continue  # its pretraining run is gone or unfinished
        spread = result.get("metrics_std", {}).get("full", {})
        for metric, full in result["metrics"]["full"].items():
            rows.append(
                TransferRow(
                    init="random" if source is None else "pretrained",
                    run=source.run if source else f"random-{result['model']}",
                    data_size=source.data_size if source else 0,
                    model=result["model"],
                    depth=result["depth"],
                    head=source.head if source else "-",
                    seed=source.seed if source else 0,
                    task=result["task"],
                    mode=result["mode"],
                    metric=metric,
                    full=float(full),
                    dedup=float(result["metrics"]["dedup"].get(metric, float("nan"))),
                    repeats=len(result.get("runs", [])) or 1,
                    full_std=float(spread.get(metric, float("nan"))),
                )
            )
    return rows


def markdown_table(header: list[str], body: list[list[Any]]) -> list[str]:
    """A Markdown table's lines: floats to 3 decimals (nan as "–"), anything else as text."""
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else ("–" if isinstance(v, float) else str(v))

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in body)]


def write_csv(path: Path, rows: list[Any]) -> Path:
    """Rows of one dataclass type as CSV (written whole; a crash leaves the previous file)."""
    if not rows:
        return atomic_write_text(path, "")
    fields = list(asdict(rows[0]))
    lines = [",".join(fields)]
    for row in rows:
        values = asdict(row)
        lines.append(",".join(_cell(values[f]) for f in fields))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if "," in text else text


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

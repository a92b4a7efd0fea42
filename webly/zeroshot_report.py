"""The report's zero-shot section: embedding-head runs on their held-out tags and on the benchmark's classes.

Held-out tags: precision / recall / F1 at 5 from the run's summary, a random ranking's F1 beside it. Benchmark
classes: zero-shot top-1 (transfer/zeroshot.py: the nearest class-name tag vector, no benchmark label used)
beside chance, computed once per run and benchmark and kept in the run directory.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from transfer.zeroshot import cached_classify
from webly.results import PretrainRow, markdown_table, write_csv


@dataclass
class ZeroshotRow:
    """One embedding run in report/zeroshot.csv: held-out tags at 5 and benchmark classes, each beside chance."""

    run: str
    model: str
    images: int
    seed: int
    heldout_tags: int
    precision_at_5: float
    recall_at_5: float
    f1_at_5: float
    chance_f1_at_5: float
    classes_top1: float
    chance_top1: float


def benchmark_zeroshot(exp_dir: Path, rows: list[PretrainRow], bench_root: str) -> dict[str, dict[str, Any]]:
    """Zero-shot classification of every embedding run (by run name); a run that cannot be scored is left out."""
    if not bench_root or not (Path(bench_root) / "manifest.json").is_file():
        return {}
    results = {}
    for row in rows:
        if row.head == "embedding":
            try:
                results[row.run] = cached_classify(exp_dir / "pretrain" / row.run, bench_root)
            except (ValueError, OSError) as err:
                results[row.run] = {"error": str(err)}
    return results


def zeroshot_section(exp_dir: Path, rows: list[PretrainRow], bench_root: str = "") -> list[str]:
    """Markdown lines (and report/zeroshot.csv) for the embedding runs; none when there are none."""
    runs = sorted((r for r in rows if r.head == "embedding"), key=lambda r: (r.depth, r.data_size, r.seed))
    if not runs:
        return []
    classified = benchmark_zeroshot(exp_dir, runs, bench_root)
    csv_rows = []
    for r in runs:
        bench = classified.get(r.run, {})
        csv_rows.append(ZeroshotRow(r.run, r.model, r.data_size, r.seed, r.zeroshot_tags, r.zeroshot_precision,
                                    r.zeroshot_recall, r.zeroshot_f1, r.zeroshot_chance_f1,
                                    float(bench.get("top1", math.nan)), float(bench.get("chance", math.nan))))
    write_csv(exp_dir / "report" / "zeroshot.csv", csv_rows)
    header = ["model", "images", "seed", "held-out tags", "P@5", "R@5", "F1@5", "chance F1@5", "classes top-1",
              "chance top-1"]
    table = markdown_table(header, [list(astuple(row))[1:] for row in csv_rows])
    errors = [f"- {run}: {res['error']}" for run, res in classified.items() if "error" in res]
    return ["## Zero-shot (embedding head)", "",
            "Tags held out of training, ranked among themselves for every held-out image carrying one (F1 of the "
            "mean precision and recall at 5; chance: a random ranking); benchmark classes named by their tag "
            "vectors, no benchmark label used (chance: 1 / classes).", "", *table, "", *errors, *([""] if errors
                                                                                                  else [])]

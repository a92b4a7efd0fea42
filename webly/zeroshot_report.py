"""The report's zero-shot section: embedding-head runs on their held-out tags and on the benchmark's classes.

Held-out tags: precision / recall / F1 at 5 from the run's summary, a random ranking's F1 beside it. Benchmark
classes: zero-shot top-1 (transfer/zeroshot.py: the nearest class-name tag vector, no benchmark label used)
beside chance, computed once per run and benchmark and kept in the run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text
from transfer.zeroshot import cached_classify
from webly.results import PretrainRow


def _fmt(value: float) -> str:
    return "–" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


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
    header = ["model", "images", "seed", "held-out tags", "P@5", "R@5", "F1@5", "chance F1@5", "classes top-1",
              "chance top-1"]
    body, csv_lines = [], [",".join(["run", "model", "images", "seed", "heldout_tags", "precision_at_5",
                                     "recall_at_5", "f1_at_5", "chance_f1_at_5", "classes_top1", "chance_top1"])]
    for r in runs:
        bench = classified.get(r.run, {})
        top1, chance = float(bench.get("top1", math.nan)), float(bench.get("chance", math.nan))
        values = [r.zeroshot_precision, r.zeroshot_recall, r.zeroshot_f1, r.zeroshot_chance_f1, top1, chance]
        body.append([r.model, str(r.data_size), str(r.seed), str(r.zeroshot_tags), *map(_fmt, values)])
        csv_lines.append(",".join([r.run, r.model, str(r.data_size), str(r.seed), str(r.zeroshot_tags),
                                   *(f"{v:.6g}" for v in values)]))
    atomic_write_text(exp_dir / "report" / "zeroshot.csv", "\n".join(csv_lines) + "\n")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in body]
    errors = [f"- {run}: {res['error']}" for run, res in classified.items() if "error" in res]
    return ["## Zero-shot (embedding head)", "",
            "Tags held out of training, ranked among themselves for every held-out image carrying one (F1 of the "
            "mean precision and recall at 5; chance: a random ranking); benchmark classes named by their tag "
            "vectors, no benchmark label used (chance: 1 / classes).", "", *table, "", *errors, *([""] if errors
                                                                                                  else [])]

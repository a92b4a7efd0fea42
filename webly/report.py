"""The scaling report: tables, log-linear fits with bootstrap intervals, plots, `report.md`, and W&B.

For every task the primary metric is fitted against log10(pretraining images) per depth (Sun et al. found
it log-linear with no saturation up to 300M), on the full and on the de-duplicated test set.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.atomic import atomic_write, atomic_write_text, read_json
from pretrain.config import WandbConfig
from pretrain.runlog import resolve_wandb_mode
from webly.results import (
    PRIMARY,
    PretrainRow,
    TransferRow,
    markdown_table,
    pretrain_rows,
    transfer_rows,
    write_csv,
)
from webly.zeroshot_report import zeroshot_section


@dataclass
class Fit:
    task: str
    mode: str
    model: str
    depth: int
    head: str
    test_set: str  # full | dedup
    slope: float  # metric gained per tenfold more pretraining data
    low: float  # 95% bootstrap interval of the slope
    high: float
    points: int


def fit_log_linear(
    sizes: list[float], values: list[float], resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Least-squares slope of value against log10(size), with a 95% percentile bootstrap interval."""
    x, y = np.log10(np.asarray(sizes, dtype=float)), np.asarray(values, dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(set(x)) > 1 else float("nan")
    picks = np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))
    xs, ys = x[picks], y[picks]  # every resample at once: the slope is cov(x, y) / var(x) per row
    dx = xs - xs.mean(axis=1, keepdims=True)
    sxx = (dx * dx).sum(axis=1)
    has_slope = np.ptp(xs, axis=1) > 0  # a resample on one data size has no slope
    draws = (dx * (ys - ys.mean(axis=1, keepdims=True))).sum(axis=1)[has_slope] / sxx[has_slope]
    if not len(draws):
        return slope, float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return slope, float(low), float(high)


def scaling_fits(rows: list[TransferRow]) -> list[Fit]:
    groups: dict[tuple[str, str, str, int, str], list[TransferRow]] = defaultdict(list)
    for row in rows:
        if row.init == "pretrained" and row.metric == PRIMARY.get(row.task):
            groups[(row.task, row.mode, row.model, row.depth, row.head)].append(row)
    fits = []
    for (task, mode, model, depth, head), group in sorted(groups.items()):
        for test_set in ("full", "dedup"):
            sizes = [r.data_size for r in group]
            values = [getattr(r, test_set) for r in group]
            slope, low, high = fit_log_linear(sizes, values)
            fits.append(Fit(task, mode, model, depth, head, test_set, slope, low, high, len(group)))
    return fits


def _mean_by(rows: list[Any], key, value) -> dict:
    sums: dict[Any, list[float]] = defaultdict(list)
    for row in rows:
        sums[key(row)].append(value(row))
    return {k: float(np.mean(v)) for k, v in sums.items()}


def plot_task(task: str, rows: list[TransferRow], path: Path) -> Path:
    """Primary metric against pretraining images (log x), a line per model; dashed: its random init."""
    import matplotlib

    matplotlib.use("Agg")  # files only: clusters have no display
    import matplotlib.pyplot as plt

    metric = PRIMARY[task]
    mine = [r for r in rows if r.task == task and r.metric == metric]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    models = sorted({r.model for r in mine}, key=lambda m: min(r.depth for r in mine if r.model == m))
    several_heads = len({r.head for r in mine if r.init == "pretrained"}) > 1
    lines = [(m, h) for m in models for h in sorted({r.head for r in mine if r.model == m and r.init == "pretrained"})]
    for i, (model, head) in enumerate(lines):
        colour = f"C{i}"
        name = f"{model} {head}" if several_heads else model
        for test_set, style in (("full", "-o"), ("dedup", ":x")):
            points = _mean_by(
                [r for r in mine if r.model == model and r.head == head and r.init == "pretrained"],
                lambda r: r.data_size,
                lambda r, t=test_set: getattr(r, t),
            )
            if points:
                sizes = sorted(points)
                label = f"{name} ({'de-duplicated test' if test_set == 'dedup' else 'full test'})"
                ax.plot(sizes, [points[s] for s in sizes], style, color=colour, label=label)
    for i, model in enumerate(models):
        random = [r.full for r in mine if r.model == model and r.init == "random"]
        if random:
            ax.axhline(float(np.mean(random)), color=f"C{len(lines) + i}", linestyle="--", linewidth=1,
                       label=f"{model} random init")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining images")
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)
    return path


def _table(header: list[str], body: list[list[Any]]) -> str:
    return "\n".join(markdown_table(header, body))


def _dedup_section(exp_dir: Path, rows: list[TransferRow], corpus_root: str, out: Path) -> list[str]:
    path = exp_dir / "dedup" / "dedup.json"
    if not path.exists():
        return ["## De-duplication", "", "No dedup manifest was found.", ""]
    dedup = read_json(path)
    audit_link: list[str] = []
    if corpus_root and Path(corpus_root, "manifest.json").exists():
        from webly.audit import build_audit  # the audit: gallery, sweep plot, transfer full vs dedup

        audit = Path(build_audit(path.parent, corpus_root, dedup["benchmark_root"], rows)["audit"])
        audit_link = ["", f"Audit report (gallery of matched pairs, threshold sweep, full vs de-duplicated metrics): "
                          f"[{audit.name}]({os.path.relpath(audit, out)})"]
    lines = [
        "## De-duplication",
        "",
        "Test images that near-duplicate pretraining images (perceptual hash, multi-view descriptors, FAISS).",
        "",
    ]
    per = dedup.get("per_benchmark", {})
    lines.append(
        _table(
            ["benchmark", "test images", "flagged", "overlap"],
            [[b, v["test_images"], v["flagged"], v["overlap"]] for b, v in sorted(per.items())],
        )
    )
    evaluation = dedup.get("evaluation") or {}
    overall = evaluation.get("overall") or evaluation
    if "precision" in overall:
        lines += [
            "",
            f"Against the planted near-duplicates: precision **{overall['precision']:.3f}**, "
            f"recall **{overall['recall']:.3f}** (thresholds {dedup.get('thresholds', {})}).",
        ]
    return lines + audit_link + [""]


def build_report(exp_dir: str | Path, wandb_cfg: WandbConfig, corpus_root: str = "",
                 bench_root: str = "") -> dict[str, Any]:
    """Write `report/` under the experiment directory: results.csv, pretrain.csv, fits.csv, plots, report.md.
    With `bench_root`, embedding-head runs also classify its classes zero-shot."""
    exp_dir = Path(exp_dir)
    out = exp_dir / "report"
    pretrained = pretrain_rows(exp_dir)
    rows = transfer_rows(exp_dir, pretrained)
    fits = scaling_fits(rows)
    write_csv(out / "pretrain.csv", pretrained)
    write_csv(out / "results.csv", rows)
    write_csv(out / "fits.csv", fits)
    tasks = [t for t in PRIMARY if any(r.task == t for r in rows)]
    plots = {task: plot_task(task, rows, out / f"{task}.png") for task in tasks}

    lines = [
        f"# Scaling report: {exp_dir.name}",
        "",
        f"{len(pretrained)} pretraining runs, {len({(r.run, r.task, r.mode) for r in rows})} transfer runs.",
        "",
    ]
    lines += _pretrain_section(pretrained)
    lines += zeroshot_section(exp_dir, pretrained, bench_root)
    lines += _dedup_section(exp_dir, rows, corpus_root, out)
    lines += _task_sections(rows, fits, plots, out)
    report_md = atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    _log_wandb(wandb_cfg, exp_dir.name, out, rows, plots)
    return {"report": str(report_md), "plots": {t: str(p) for t, p in plots.items()}, "csv": str(out / "results.csv")}


def _pretrain_section(rows: list[PretrainRow]) -> list[str]:
    body = [
        [r.model, r.depth, r.head, r.data_size, r.seed, r.precision_at_1, r.mAP]
        for r in sorted(rows, key=lambda r: (r.depth, r.head, r.data_size, r.seed))
    ]
    return [
        "## Pretraining (held-out tags)",
        "",
        _table(["model", "depth", "head", "images", "seed", "precision@1", "mAP"], body),
        "",
    ]


def _cell(hits: list[TransferRow]) -> str:
    """"full / dedup" means over the cell's runs, with the spread over transfer seeds when they were repeated."""
    full, dedup = np.mean([r.full for r in hits]), np.mean([r.dedup for r in hits])
    spread = [r.full_std for r in hits if r.repeats > 1]
    return f"{full:.3f} ± {np.mean(spread):.3f} / {dedup:.3f}" if spread else f"{full:.3f} / {dedup:.3f}"


def _task_sections(rows: list[TransferRow], fits: list[Fit], plots: dict[str, Path], out: Path) -> list[str]:
    lines = []
    for task, plot in plots.items():
        metric = PRIMARY[task]
        mine = [r for r in rows if r.task == task and r.metric == metric]
        lines += [f"## {task} ({metric})", "", f"![{task}]({plot.relative_to(out)})", ""]
        for mode in sorted({r.mode for r in mine}):
            subset = [r for r in mine if r.mode == mode]
            # a column per pretrained (model, head); a model with only random-init runs gets one of its own
            columns = sorted({(r.depth, r.model, r.head) for r in subset if r.init == "pretrained"})
            pretrained_models = {m for _, m, _ in columns}
            columns += sorted({(r.depth, r.model, "-") for r in subset if r.model not in pretrained_models})
            sizes = sorted({r.data_size for r in subset if r.init == "pretrained"})
            header = ["images"] + [f"{m} {h} full / dedup" if h != "-" else f"{m} full / dedup" for _, m, h in columns]
            body = []
            for size in sizes + [0]:
                cells = []
                for _, model, head in columns:
                    hits = [r for r in subset if r.model == model and r.data_size == size
                            and (r.head == head or size == 0)]
                    cells.append(_cell(hits) if hits else "–")
                body.append(["random init" if size == 0 else size] + cells)
            lines += [f"Mode `{mode}`:", "", _table(header, body), ""]
            repeats = max(r.repeats for r in subset)
            if repeats > 1:
                lines += [f"Each cell is the mean of {repeats} transfer seeds; ± is their standard deviation.", ""]
            mode_fits = [f for f in fits if f.task == task and f.mode == mode]
            lines += [
                "Gain per tenfold more pretraining data (log-linear fit, 95% bootstrap interval):",
                "",
                _table(
                    ["model", "head", "test set", "slope", "interval", "points"],
                    [[f.model, f.head, f.test_set, f.slope, f"[{f.low:.3f}, {f.high:.3f}]", f.points]
                     for f in mode_fits],
                ),
                "",
            ]
    return lines


def _log_wandb(wandb_cfg: WandbConfig, name: str, out: Path, rows: list[TransferRow], plots: dict[str, Path]) -> None:
    mode = resolve_wandb_mode(wandb_cfg.mode)
    if mode == "disabled" or not rows:
        return
    import wandb

    run = wandb.init(
        project=wandb_cfg.project,
        entity=wandb_cfg.entity or None,
        name=f"report-{name}",
        job_type="report",
        dir=str(out),
        mode=mode,
        settings=wandb.Settings(silent=True, console="off"),
    )
    columns = list(TransferRow.__dataclass_fields__)
    run.log(
        {
            "results": wandb.Table(columns=columns, data=[[getattr(r, c) for c in columns] for r in rows]),
            **{f"plots/{task}": wandb.Image(str(path)) for task, path in plots.items()},
        }
    )
    run.finish()

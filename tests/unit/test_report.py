"""The scaling report from hand-made run directories: rows, fits with known slopes, plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.atomic import atomic_write_json
from pretrain.config import WandbConfig
from webly.report import build_report, fit_log_linear
from webly.results import read_csv


def test_fit_recovers_an_exact_log_linear_law() -> None:
    sizes = [1e3, 1e4, 1e5, 1e6]
    values = [0.2 + 0.05 * np.log10(s) for s in sizes]
    slope, low, high = fit_log_linear(sizes, values)
    assert slope == pytest.approx(0.05)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)  # no noise: every resample agrees


def test_fit_interval_contains_the_slope_of_noisy_data() -> None:
    rng = np.random.default_rng(3)
    sizes = np.repeat([1e3, 1e4, 1e5], 4)
    values = 0.1 * np.log10(sizes) + rng.normal(0, 0.02, len(sizes))
    slope, low, high = fit_log_linear(list(sizes), list(values))
    assert low < slope < high
    assert low < 0.1 < high
    assert all(math.isnan(v) for v in fit_log_linear([100, 100], [0.1, 0.2]))  # one data size: no slope


def _pretrain_run(exp: Path, name: str, size: int, depth: int, model: str) -> None:
    config = {"data": {"subset": 1}, "model": {"name": model, "depth": depth, "width": 16},
              "head": {"name": "sigmoid"}, "train": {"seed": 0}}
    summary = {"train_samples": size, "eval/precision_at_1": 0.3, "eval/mAP": 0.1}
    atomic_write_json(exp / "pretrain" / name / "manifest.json", {"status": "done", "config": config,
                                                                  "summary": summary})


def _transfer_run(exp: Path, init: str, model: str, depth: int, ap: float) -> None:
    name = f"{Path(init).name or 'random-' + model}-detection-frozen"
    result = {"task": "detection", "mode": "frozen", "init": init or "random", "model": model, "depth": depth,
              "width": 16, "metrics": {"full": {"AP": ap, "AP50": 2 * ap}, "dedup": {"AP": ap - 0.01, "AP50": 2 * ap}}}
    atomic_write_json(exp / "transfer" / name / "result.json", result)


def test_report_from_run_directories(tmp_path: Path) -> None:
    exp = tmp_path / "experiments" / "study"
    for model, depth, base in (("tiny", 10, 0.10), ("tiny18", 18, 0.12)):
        for size in (500, 5000, 50000):
            name = f"d-{size}-{model}"
            _pretrain_run(exp, name, size, depth, model)
            _transfer_run(exp, str(exp / "pretrain" / name), model, depth, base + 0.02 * np.log10(size / 500))
        _transfer_run(exp, "", model, depth, 0.05)
    atomic_write_json(exp / "dedup" / "dedup.json", {
        "flagged": [], "per_benchmark": {"detection": {"test_images": 100, "flagged": 8, "overlap": 0.08}},
        "evaluation": {"overall": {"precision": 1.0, "recall": 0.9}}, "thresholds": {"cnn": 0.9}})

    report = build_report(exp, WandbConfig(mode="disabled"))

    rows = read_csv(exp / "report" / "results.csv")
    assert len(rows) == 2 * (3 + 1) * 2  # models x (data sizes + random init) x metrics
    fits = read_csv(exp / "report" / "fits.csv")
    by_key = {(f["model"], f["test_set"]): float(f["slope"]) for f in fits}
    assert by_key[("tiny", "full")] == pytest.approx(0.02, abs=1e-6)
    assert by_key[("tiny18", "dedup")] == pytest.approx(0.02, abs=1e-6)
    plot = Path(report["plots"]["detection"])
    assert Image.open(plot).size[0] > 300
    text = Path(report["report"]).read_text()
    assert "## detection (AP)" in text and "random init" in text
    assert "| detection | 100 | 8 | 0.080 |" in text
    assert "precision **1.000**, recall **0.900**" in text


def test_report_goes_to_an_offline_wandb_run(tmp_path: Path) -> None:
    exp = tmp_path / "experiments" / "study"
    for size in (500, 5000):
        _pretrain_run(exp, f"d-{size}", size, 10, "tiny")
        _transfer_run(exp, str(exp / "pretrain" / f"d-{size}"), "tiny", 10, 0.1)
    build_report(exp, WandbConfig(mode="offline"))
    run_files = list((exp / "report").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1 and run_files[0].stat().st_size > 0

"""A tiny study over the sigmoid, softmax and embedding heads: the report shows all three side by side, and the
embedding run's zero-shot results (held-out tags and benchmark classes) beside their chance levels."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from webly.config import compose
from webly.experiment import experiment_dir, run_experiment

HEADS = ("sigmoid", "softmax", "embedding")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("heads")
    cfg = compose([f"work_dir={root / 'runs'}", f"data.root={root / 'data'}", f"experiment.bench.root={root / 'bench'}",
                   "experiment=tiny", "logging.wandb.mode=disabled",
                   "experiment.grid.heads=[sigmoid,softmax,embedding]", "experiment.grid.subsets=[1]",
                   "experiment.grid.tasks=[classification]", "train.steps=60"])
    result = run_experiment(cfg)
    return {"result": result, "exp": experiment_dir(cfg)}


def test_report_has_a_row_and_a_column_per_head(study: dict) -> None:
    exp, result = study["exp"], study["result"]
    assert result["failures"] == {}
    with open(exp / "report" / "pretrain.csv", newline="") as handle:
        pretrained = list(csv.DictReader(handle))
    assert sorted(r["head"] for r in pretrained) == sorted(HEADS)
    with open(exp / "report" / "results.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["init"] == "pretrained" and r["metric"] == "top1"]
    assert sorted(r["head"] for r in rows) == sorted(HEADS)
    assert all((exp / "pretrain" / r["run"] / "trunk.pt").is_file() for r in rows)
    assert (exp / "pretrain" / next(r["run"] for r in rows if r["head"] == "embedding") / "embedding.pt").is_file()
    text = Path(result["report"]).read_text()
    for head in HEADS:
        assert f"| {head} |" in text  # the pretraining table
        assert f"tiny {head} full / dedup" in text  # the classification table's columns
    with open(exp / "report" / "fits.csv", newline="") as handle:
        assert {r["head"] for r in csv.DictReader(handle)} == set(HEADS)


def test_report_shows_zero_shot_results_beside_chance(study: dict) -> None:
    exp = study["exp"]
    text = Path(study["result"]["report"]).read_text()
    assert "## Zero-shot (embedding head)" in text
    with open(exp / "report" / "zeroshot.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["heldout_tags"]) >= 4
    for key in ("f1_at_5", "chance_f1_at_5", "classes_top1", "chance_top1"):
        assert 0.0 <= float(row[key]) <= 1.0, row
    assert float(row["chance_top1"]) == pytest.approx(1 / 4)  # the tiny benchmark's 4 classes

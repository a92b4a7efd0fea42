"""The whole study on the tiny profile, through submitit's local executor: interrupted after pretraining,
re-run to the end without redoing finished stages; pretraining beats random init in the linear probe."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pretrain.atomic import read_json
from webly.config import compose
from webly.control import JOBS_FILE, status_text
from webly.experiment import experiment_dir, run_experiment


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.pt"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study")
    overrides = [f"work_dir={root / 'runs'}", f"data.root={root / 'data'}", f"experiment.bench.root={root / 'bench'}",
                 "experiment=tiny", "logging.wandb.mode=disabled",
                 "experiment.dedup.extract_jobs=2"]  # the corpus described by 2 jobs, assembled by the dedup job
    first = run_experiment(compose([*overrides, "experiment.stages=[data,pretrain]"]))
    exp = experiment_dir(compose(overrides))
    pretrain_files = _mtimes(exp / "pretrain")
    jobs_after_first = len(read_json(exp / JOBS_FILE))
    transfer_after_first = (exp / "transfer").exists()
    second = run_experiment(compose(overrides))
    second_jobs = read_json(exp / JOBS_FILE)[jobs_after_first:]
    return {"first": first, "second": second, "exp": exp, "pretrain_files": pretrain_files,
            "transfer_after_first": transfer_after_first, "second_jobs": second_jobs}


def test_interrupted_study_resumes_without_redoing_stages(study: dict) -> None:
    first, second, exp = study["first"], study["second"], study["exp"]
    assert set(first["stages"]["pretrain"]) == {p.name for p in (exp / "pretrain").iterdir()}
    assert not study["transfer_after_first"]
    # the second run found data and pretraining done: nothing resubmitted, no checkpoint rewritten
    stages_submitted = [job["stage"] for job in study["second_jobs"]]
    assert "pretrain" not in stages_submitted and "data" not in stages_submitted
    assert {"dedup", "transfer", "report"} <= set(stages_submitted)
    assert stages_submitted.count("describe") == 2
    assert read_json(exp / "dedup" / "dedup.json")["corpus"]["assembled_parts"] is True
    assert _mtimes(exp / "pretrain") == study["pretrain_files"]
    assert second["failures"] == {}


def test_report_has_every_task_and_the_probe_beats_random_init(study: dict) -> None:
    exp = study["exp"]
    report = Path(study["second"]["report"])
    assert report.exists()
    for task in ("classification", "detection", "instance", "semantic", "pose"):
        assert (exp / "report" / f"{task}.png").exists()
    with open(exp / "report" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["task"] for r in rows} == {"classification", "detection", "instance", "semantic", "pose"}
    top1 = {(r["init"], int(r["data_size"])): float(r["full"]) for r in rows
            if r["task"] == "classification" and r["metric"] == "top1"}
    largest = max(size for init, size in top1 if init == "pretrained")
    assert top1[("pretrained", largest)] >= top1[("random", 0)] + 0.1, top1
    text = report.read_text()
    assert "## De-duplication" in text and "precision" in text
    # the report links the dedup audit, which holds the gallery, the sweep plot and full vs dedup metrics
    assert "(../dedup/audit/audit.md)" in text
    audit = (exp / "dedup" / "audit" / "audit.md").read_text()
    assert (exp / "dedup" / "audit" / "gallery.png").stat().st_size > 0
    assert (exp / "dedup" / "audit" / "sweep.png").stat().st_size > 0
    assert "| classification | frozen |" in audit


def test_status_lists_every_job_with_its_state_and_log(study: dict) -> None:
    text = status_text(study["exp"])
    history = read_json(study["exp"] / JOBS_FILE)
    latest = {(j["stage"], j["name"]): j for j in history}
    for job in latest.values():
        line = next(row for row in text.splitlines() if f" {job['job_id']} " in row)
        assert "COMPLETED" in line and job["stdout"] in line
    assert f"{len(latest)} completed" in text

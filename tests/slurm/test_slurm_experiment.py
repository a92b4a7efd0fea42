"""The tiny study on a real Slurm: stages as job arrays with dependencies, a failing transfer task shown by
`status` with its log and resubmitted alone, and the same report tables as the local launcher gives."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from pretrain.atomic import read_json
from webly.config import compose
from webly.control import FINAL_STATES, JOBS_FILE, job_states, latest_jobs, status_text
from webly.experiment import experiment_dir, run_experiment

pytestmark = pytest.mark.timeout(2400)  # two and a half studies: minutes, more on a loaded machine
SLURM = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.time_min=20", "experiment.group_transfers=false"]


def _table(exp: Path) -> dict[tuple[str, ...], float]:
    with open(exp / "report" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = ("init", "data_size", "model", "depth", "task", "mode", "metric")
    return {tuple(r[k] for k in keys): float(r["full"]) for r in rows}


def _wait_until_accounted(exp: Path, timeout_s: float = 120) -> None:
    """A job's result file is written a moment before Slurm's accounting calls the job ended."""
    deadline = time.time() + timeout_s
    while any(s["state"] not in FINAL_STATES for s in job_states(latest_jobs(exp))):
        assert time.time() < deadline, status_text(exp)
        time.sleep(1)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("slurm-study")
    shared = [f"data.root={root / 'data'}", f"experiment.bench.root={root / 'bench'}", "experiment=tiny",
              "logging.wandb.mode=disabled"]
    local_cfg = compose([*shared, f"work_dir={root / 'local'}"])
    run_experiment(local_cfg)

    slurm_cfg = compose([*shared, f"work_dir={root / 'slurm'}", *SLURM])
    labels = root / "bench" / "segmentation" / "SegmentationClass"
    labels.rename(labels.with_name("SegmentationClass.hidden"))  # every semantic-segmentation transfer fails
    broken = run_experiment(slurm_cfg)
    exp = experiment_dir(slurm_cfg)
    _wait_until_accounted(exp)
    status_broken, states_broken = status_text(exp), job_states(latest_jobs(exp))
    submitted_before = len(read_json(exp / JOBS_FILE))
    labels.with_name("SegmentationClass.hidden").rename(labels)
    fixed = run_experiment(slurm_cfg)
    return {
        "local": experiment_dir(local_cfg), "slurm": exp, "broken": broken, "fixed": fixed,
        "status_broken": status_broken, "states_broken": states_broken,
        "resubmitted": read_json(exp / JOBS_FILE)[submitted_before:],
    }


def test_stages_ran_as_job_arrays(studies: dict) -> None:
    jobs = read_json(studies["slurm"] / JOBS_FILE)
    by_stage: dict[str, set[str]] = {}
    for job in jobs[: len(jobs) - len(studies["resubmitted"])]:
        by_stage.setdefault(job["stage"], set()).add(job["job_id"].split("_")[0])
    assert set(by_stage) == {"pretrain", "dedup", "transfer", "report"}  # the data was there from the local run
    pretrain_tasks = [j for j in jobs if j["stage"] == "pretrain"]
    assert len(pretrain_tasks) == 2 and len(by_stage["pretrain"]) == 1  # two cells, one array
    assert len(by_stage["transfer"]) == 1  # 15 transfer runs, one array
    assert all(j["launcher"] == "slurm" for j in jobs)


def test_failed_task_is_shown_with_its_log_and_the_rest_is_kept(studies: dict) -> None:
    failed = {s["name"] for s in studies["states_broken"] if s["state"] == "FAILED"}
    assert failed and all(name.endswith("-semantic-frozen") for name in failed), failed
    completed = {s["name"] for s in studies["states_broken"] if s["state"] == "COMPLETED"}
    assert {"report", "dedup"} <= completed and any(n.endswith("-detection-frozen") for n in completed)
    assert set(studies["broken"]["failures"]) == failed
    text = studies["status_broken"]
    assert "FAILED" in text and "SegmentationClass" in text  # the stderr tail names the missing labels
    for name in failed:
        assert (studies["slurm"] / "transfer" / name / "manifest.json").exists()


def test_rerun_resubmits_only_the_failed_task(studies: dict) -> None:
    failed = {s["name"] for s in studies["states_broken"] if s["state"] == "FAILED"}
    resubmitted = studies["resubmitted"]
    assert {j["name"] for j in resubmitted if j["stage"] == "transfer"} == failed
    assert {j["stage"] for j in resubmitted} == {"transfer", "report"}
    assert studies["fixed"]["failures"] == {}


def test_slurm_and_local_give_the_same_report_tables(studies: dict) -> None:
    local, slurm = _table(studies["local"]), _table(studies["slurm"])
    assert set(local) == set(slurm) and len(local) > 20
    for key, value in local.items():
        assert slurm[key] == pytest.approx(value, abs=1e-6), key

"""Local runs as a dependency graph: real submitit local jobs start when what they need is done, a failure skips
only what needs it, a failure in a critical stage stops new starts and raises; the experiment's plan."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import submitit

from webly.schedule import Spec, run_graph  # the jobs unpickle this module: keep its imports light (no torch)

STAGES = ("data", "pretrain", "dedup", "transfer", "report")


def _stamp(arg: tuple[str, float]) -> str:
    """Sleep, then record start and end times in a file named after the job."""
    path, seconds = arg
    start = time.time()
    time.sleep(seconds)
    Path(path).write_text(f"{start} {time.time()}")
    return Path(path).name


def _wait_for(arg: tuple[str, str]) -> bool:
    """Run until the file `other` appears (True) or 60 s pass (False): it can only appear if its job starts
    while this one runs."""
    path, other = arg
    deadline = time.time() + 60
    while not Path(other).exists() and time.time() < deadline:
        time.sleep(0.1)
    Path(path).write_text("")
    return Path(other).exists()


def _fail(_: object) -> None:
    raise ValueError("planned failure")


def _times(path: Path) -> tuple[float, float]:
    start, end = path.read_text().split()
    return float(start), float(end)


def _runner(tmp_path: Path):
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="local")
    return lambda spec: executor.submit(spec.fn, spec.arg)


def test_a_job_starts_when_its_own_needs_are_done_not_the_whole_stage(tmp_path: Path) -> None:
    slow = Spec("pretrain", "slow", _wait_for, (str(tmp_path / "slow"), str(tmp_path / "after-quick")))
    quick = Spec("pretrain", "quick", _stamp, (str(tmp_path / "quick"), 0.0))
    after_quick = Spec("dedup", "after-quick", _stamp, (str(tmp_path / "after-quick"), 0.0), after=[quick])
    done_before = Spec("data", "old", _fail, None, done=lambda: True)  # never submitted: it would fail
    needs_old = Spec("transfer", "needs-old", _stamp, (str(tmp_path / "needs-old"), 0.0), after=[done_before])
    outcome = run_graph([done_before, slow, quick, after_quick, needs_old], set(STAGES), 2, _runner(tmp_path),
                        STAGES)
    assert outcome["pretrain"]["slow"] is True  # the dependent job ran beside the slow job of the stage before
    assert outcome["dedup"] == {"after-quick": "after-quick"}
    assert outcome["data"] == {"old": "done before"}
    assert _times(tmp_path / "quick")[1] <= _times(tmp_path / "after-quick")[0]
    assert (tmp_path / "needs-old").exists()


def test_a_failure_skips_only_what_needs_it_and_the_report_still_runs(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    broken = Spec("pretrain", "broken", _fail, None)
    fine = Spec("pretrain", "fine", _stamp, (str(tmp_path / "fine"), 0.0))
    orphan = Spec("transfer", "orphan", _stamp, (str(tmp_path / "orphan"), 0.0), after=[broken])
    grandchild = Spec("transfer", "grandchild", _stamp, (str(tmp_path / "grandchild"), 0.0), after=[orphan])
    kept = Spec("transfer", "kept", _stamp, (str(tmp_path / "kept"), 0.0), after=[fine])
    report = Spec("report", "report", _stamp, (str(tmp_path / "report"), 0.0), after=[orphan, kept],
                  after_any=True)
    outcome = run_graph([broken, fine, orphan, grandchild, kept, report], set(STAGES), 2, _runner(tmp_path),
                        STAGES)
    assert isinstance(outcome["pretrain"]["broken"], Exception)
    assert outcome["transfer"] == {"kept": "kept"}
    assert outcome["report"] == {"report": "report"}
    assert not (tmp_path / "orphan").exists() and not (tmp_path / "grandchild").exists()
    assert "transfer orphan not run: it needs pretrain broken" in capsys.readouterr().out


def test_a_critical_failure_starts_nothing_new_lets_running_jobs_end_and_raises(tmp_path: Path) -> None:
    running = Spec("pretrain", "running", _stamp, (str(tmp_path / "running"), 4.0))
    dedup = Spec("dedup", "dedup", _fail, None)
    later = Spec("pretrain", "later", _stamp, (str(tmp_path / "later"), 0.0))
    with pytest.raises(RuntimeError, match="(?s)stage dedup failed: dedup: .*planned failure"):
        run_graph([running, dedup, later], set(STAGES), 2, _runner(tmp_path), STAGES)
    assert (tmp_path / "running").exists()  # it finished: its checkpoints are worth keeping
    assert not (tmp_path / "later").exists()


def test_stages_not_wanted_are_not_run_and_block_what_needs_them(tmp_path: Path) -> None:
    pretrain = Spec("pretrain", "cell", _stamp, (str(tmp_path / "cell"), 0.0))
    transfer = Spec("transfer", "t", _stamp, (str(tmp_path / "t"), 0.0), after=[pretrain])
    outcome = run_graph([pretrain, transfer], {"transfer"}, 2, _runner(tmp_path), STAGES)
    assert outcome["transfer"] == {} and not (tmp_path / "cell").exists() and not (tmp_path / "t").exists()


def test_the_local_plan_runs_the_dedup_reference_first_and_each_transfer_after_its_own_trunk(tmp_path: Path) -> None:
    from webly.config import compose  # here, not at the top: it imports torch
    from webly.experiment import _local_plan

    cfg = compose([f"work_dir={tmp_path}", "experiment=demo"])
    plan = _local_plan(cfg, set(STAGES) | {"describe"})
    names = [(s.stage, s.name) for s in plan]
    assert names[:5] == [("data", "corpus"), ("data", "benchmarks"),
                         ("pretrain", "synthweb-s3-tiny18-sigmoid-seed0"), ("dedup", "dedup"),
                         ("transfer", "random-tiny18")]  # needs no trunk: it runs beside the pretraining
    pretrain = [s for s in plan if s.stage == "pretrain"]
    assert [s.name.split("-")[1:3] for s in pretrain] == [
        ["s3", "tiny18"], ["s2", "tiny18"], ["s1", "tiny18"], ["s3", "tiny"], ["s2", "tiny"], ["s1", "tiny"]]
    dedup = next(s for s in plan if s.stage == "dedup")
    assert dedup.after[-1] is pretrain[0]  # the reference trunk only, not the whole stage
    transfers = [s for s in plan if s.stage == "transfer"]
    assert [t.name for t in transfers] == ["random-tiny18"] + [p.name for p in pretrain]  # the cells' order
    assert transfers[0].after == [plan[1], dedup]
    for transfer, trunk in zip(transfers[1:], pretrain, strict=True):
        assert trunk in transfer.after and dedup in transfer.after
        assert not any(p in transfer.after for p in pretrain if p is not trunk)
    assert plan[-1].stage == "report" and plan[-1].after == transfers and plan[-1].after_any


def test_baseline_models_must_be_models_of_the_grid(tmp_path: Path) -> None:
    from webly.config import compose
    from webly.experiment import _local_plan

    every = compose([f"work_dir={tmp_path}", "experiment=demo", "experiment.grid.baseline_models=[]"])
    assert [s.name for s in _local_plan(every, {"transfer"}) if s.name.startswith("random")] == [
        "random-tiny", "random-tiny18"]
    wrong = compose([f"work_dir={tmp_path}", "experiment=demo", "experiment.grid.baseline_models=[resnet50]"])
    with pytest.raises(ValueError, match="baseline_models: resnet50 not in experiment.grid.models"):
        _local_plan(wrong, {"transfer"})


def test_a_job_process_loads_torch_only_when_its_job_needs_it() -> None:
    """submitit unpickles a job by importing webly.jobs: that alone must not load torch, torchvision or W&B
    (seconds in every data and report job's process)."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, webly.jobs; print(*[m for m in ('torch', 'torchvision', 'wandb') "
         "if m in sys.modules])"], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []

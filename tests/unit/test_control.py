"""Command-line sweeps, the job log behind `webly experiment status|cancel`, and the preemption flag."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import submitit

from webly.cli import main, sweep_overrides
from webly.config import LauncherConfig
from webly.control import cancel_jobs, latest_jobs, record_jobs, status_text
from webly.jobs import _PreemptionFlag
from webly.launch import submit_batch


def test_sweep_overrides_is_the_product_of_comma_separated_values() -> None:
    combos = sweep_overrides(["model.depth=18,34", "data.subset=1,2", "optim.lr=0.1"])
    assert combos == [
        ["model.depth=18", "data.subset=1", "optim.lr=0.1"],
        ["model.depth=18", "data.subset=2", "optim.lr=0.1"],
        ["model.depth=34", "data.subset=1", "optim.lr=0.1"],
        ["model.depth=34", "data.subset=2", "optim.lr=0.1"],
    ]


def test_sweep_overrides_keeps_commas_inside_lists_and_quotes() -> None:
    assert sweep_overrides(["experiment.grid.subsets=[1,2],[3]", "name='a,b'", "model=tiny"]) == [
        ["experiment.grid.subsets=[1,2]", "name='a,b'", "model=tiny"],
        ["experiment.grid.subsets=[3]", "name='a,b'", "model=tiny"],
    ]


def test_multirun_composes_one_config_per_combination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "-m", "model.depth=18,34", "data.subset=1,2", "--cfg"]) == 0
    documents = capsys.readouterr().out.split("\n---\n")
    depths_subsets = [(d.split("depth: ")[1].split()[0], d.split("subset: ")[1].split()[0]) for d in documents]
    assert depths_subsets == [("18", "1"), ("18", "2"), ("34", "1"), ("34", "2")]


def test_multirun_reports_a_bad_value_as_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "-m", "model.depth=18,11", "--cfg"]) == 2
    assert "model.depth" in capsys.readouterr().err


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _fail(_: object) -> None:
    raise ValueError("the log must show this line")


def test_status_and_cancel_of_local_jobs(tmp_path: Path) -> None:
    launcher = LauncherConfig(name="local")
    sleeper, quick, failing = submit_batch(launcher, tmp_path / "jobs", "t",
                                           [(_sleep, 120.0), (_sleep, 0.0), (_fail, None)])
    record_jobs(tmp_path, "stage", "local", [("sleeper", sleeper), ("quick", quick), ("failing", failing)])
    assert quick.result() == 0.0
    with pytest.raises(submitit.core.utils.FailedJobError):
        failing.result()

    text = status_text(tmp_path)
    rows = {name: next(line for line in text.splitlines() if f" {name} " in f" {line} ")
            for name in ("sleeper", "quick", "failing")}
    assert "RUNNING" in rows["sleeper"] and "COMPLETED" in rows["quick"] and "FAILED" in rows["failing"]
    assert str(quick.paths.stdout) in rows["quick"]
    assert "the log must show this line" in text  # the failed job's stderr tail

    cancelled = cancel_jobs(tmp_path)
    assert [r["name"] for r in cancelled] == ["sleeper"]
    deadline = time.time() + 60  # a loaded machine can take a while to end the controller and its task
    while not sleeper.done() and time.time() < deadline:
        time.sleep(0.1)
    assert "CANCELLED" in next(line for line in status_text(tmp_path).splitlines() if " sleeper " in line)


def test_the_job_log_keeps_the_newest_job_of_each_name(tmp_path: Path) -> None:
    launcher = LauncherConfig(name="local")
    first = submit_batch(launcher, tmp_path / "jobs", "t", [(_sleep, 0.0)])[0]
    record_jobs(tmp_path, "pretrain", "local", [("cell", first)])
    second = submit_batch(launcher, tmp_path / "jobs", "t", [(_sleep, 0.0)])[0]
    record_jobs(tmp_path, "pretrain", "local", [("cell", second)])
    assert [j["job_id"] for j in latest_jobs(tmp_path)] == [str(second.job_id)]
    with pytest.raises(FileNotFoundError, match="no jobs recorded"):
        latest_jobs(tmp_path / "elsewhere")


def test_preemption_flag_defers_usr2_and_forwards_it() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with _PreemptionFlag() as flag:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert flag.raised and received == []  # noted, not acted on: training checkpoints first
            flag.forward()
        assert received == [signal.SIGUSR2]  # the handler that was there before (submitit's) now runs
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert received == [signal.SIGUSR2, signal.SIGUSR2]  # restored on exit
    finally:
        signal.signal(signal.SIGUSR2, previous)

"""Every job goes through submitit: the local executor on a workstation or CI, Slurm on a cluster.

`executor_parameters` maps the launcher config to submitit's parameters (sbatch flags for Slurm);
`wait` streams a job's log to the console while it runs and returns its result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit

from webly.config import LauncherConfig


def executor_parameters(launcher: LauncherConfig, job_name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters: shared ones, and `slurm_*` ones that only Slurm reads."""
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": launcher.time_min,
        "nodes": launcher.nodes,
        "tasks_per_node": launcher.tasks_per_node,
        "cpus_per_task": launcher.cpus_per_task,
        "gpus_per_node": launcher.gpus_per_node,
    }
    if launcher.mem_gb:
        params["mem_gb"] = launcher.mem_gb
    slurm = {"partition": launcher.partition, "account": launcher.account, "qos": launcher.qos,
             "constraint": launcher.constraint}
    params.update({f"slurm_{k}": v for k, v in slurm.items() if v})
    if launcher.extra:
        params["slurm_additional_parameters"] = dict(launcher.extra)
    return params


def make_executor(launcher: LauncherConfig, folder: str | Path, job_name: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher.name)
    params = executor_parameters(launcher, job_name)
    if launcher.name != "slurm":  # the local and debug executors run on this node only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k != "mem_gb"}
    executor.update_parameters(**params)
    return executor


def submit(launcher: LauncherConfig, folder: str | Path, job_name: str, fn: Callable, *args: Any) -> submitit.Job:
    return make_executor(launcher, folder, job_name).submit(fn, *args)


def array_id(job: submitit.Job) -> str:
    """The Slurm id a dependency names: the array's id for a task `1234_5`, else the job's own id."""
    return str(job.job_id).split("_", 1)[0]


def submit_batch(
    launcher: LauncherConfig,
    folder: str | Path,
    job_name: str,
    calls: Sequence[tuple[Callable, Any]],
    after: Sequence[submitit.Job] = (),
    after_kind: str = "afterok",
    parallelism: int = 0,
) -> list[submitit.Job]:
    """Submit `fn(arg)` for every call at once: one job array on Slurm (at most `parallelism` tasks running,
    0: no limit), separate jobs elsewhere. On Slurm the array starts when the jobs of `after` have ended
    (`afterok`: successfully; a failure there cancels this array instead of leaving it pending forever)."""
    executor = make_executor(launcher, folder, job_name)
    if launcher.name == "slurm":
        extra = dict(launcher.extra)
        if after:
            ids = sorted({array_id(job) for job in after})
            extra.update(dependency=f"{after_kind}:" + ":".join(ids), kill_on_invalid_dep="yes")
        executor.update_parameters(slurm_additional_parameters=extra, slurm_array_parallelism=parallelism or 256)
    with executor.batch():
        jobs = [executor.submit(fn, arg) for fn, arg in calls]
    return jobs


def _tail(path: Path, offset: int, sink) -> int:
    """Copy what was appended to `path` since `offset` to `sink`; returns the new offset."""
    if not path.exists():
        return offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    if chunk:
        sink.write(chunk.decode("utf-8", errors="replace"))
        sink.flush()
    return offset + len(chunk)


def wait(jobs: Sequence[submitit.Job], stream: bool = True, poll_s: float = 0.5) -> list[Any]:
    """Wait for every job, echoing the log of the first one while it runs; re-raises a job's failure."""
    if stream and jobs and not isinstance(jobs[0], submitit.DebugJob):
        offsets = [0, 0]
        while not all(job.done() for job in jobs):
            paths = jobs[0].paths
            offsets = [_tail(paths.stdout, offsets[0], sys.stdout), _tail(paths.stderr, offsets[1], sys.stderr)]
            time.sleep(poll_s)
        paths = jobs[0].paths
        _tail(paths.stdout, offsets[0], sys.stdout)
        _tail(paths.stderr, offsets[1], sys.stderr)
    return [job.result() for job in jobs]

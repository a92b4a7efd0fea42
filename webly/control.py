"""What an experiment's jobs are doing: the job log it keeps, `webly experiment status` and `cancel`.

Every submission is appended to `<experiment>/jobs.json` at once (not at the end), so another shell can ask
for the state of a running study. States come from Slurm's accounting (`sacct`) for Slurm jobs and from
submitit's result files and the process table for local jobs.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from pretrain.atomic import atomic_write_json, read_json

JOBS_FILE = "jobs.json"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                "DEADLINE", "BOOT_FAIL", "LOST"}


def record_jobs(exp_dir: Path, stage: str, launcher: str, submitted: Iterable[tuple[str, submitit.Job]]) -> None:
    """Append the jobs just submitted for `stage` to the experiment's job log (atomically)."""
    path = Path(exp_dir) / JOBS_FILE
    history = read_json(path) if path.exists() else []
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for name, job in submitted:
        history.append({
            "stage": stage, "name": name, "job_id": str(job.job_id), "launcher": launcher,
            "folder": str(job.paths.folder), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "submitted": now,
        })
    atomic_write_json(path, history)


def latest_jobs(exp_dir: Path) -> list[dict[str, Any]]:
    """The newest job of every (stage, name), in the order they were first submitted."""
    path = Path(exp_dir) / JOBS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no jobs recorded (has `webly experiment` run with this experiment?)")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in read_json(path):
        latest[(entry["stage"], entry["name"])] = entry  # dicts keep first-insertion order; values update
    return list(latest.values())


def _sacct(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """State and elapsed time (as sacct prints it) of each Slurm job or array task."""
    if not job_ids:
        return {}
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,State,Elapsed", "-j", ",".join(job_ids)],
        capture_output=True, text=True, check=True,
    ).stdout
    states = {}
    for line in out.splitlines():
        job_id, state, elapsed = line.split("|")
        states[job_id] = (state.split()[0], elapsed)  # "CANCELLED by 0" -> "CANCELLED"
    return states


def _pid_is_submitit(pid: int) -> bool:
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _local_state(entry: dict[str, Any]) -> tuple[str, str]:
    """A local job's state from submitit's files: its result pickle says how it ended; else its process lives."""
    if not entry["job_id"].isdigit():  # launcher=debug: ran in the submitting process, which has ended
        return "ENDED", "?"
    paths = JobPaths(entry["folder"], entry["job_id"], task_id=0)
    start = paths.submitted_pickle.stat().st_mtime if paths.submitted_pickle.exists() else None
    if paths.result_pickle.exists():
        outcome = submitit.core.utils.pickle_load(paths.result_pickle)[0]
        end = paths.result_pickle.stat().st_mtime
        state = "COMPLETED" if outcome == "success" else "FAILED"
    else:
        end = time.time()
        state = "RUNNING" if _pid_is_submitit(int(entry["job_id"])) else "CANCELLED"
    elapsed = _format_seconds(end - start) if start is not None else "?"
    return state, elapsed


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def job_states(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with `state` and `elapsed` filled in."""
    slurm = _sacct([e["job_id"] for e in entries if e["launcher"] == "slurm"])
    rows = []
    for entry in entries:
        if entry["launcher"] == "slurm":
            state, elapsed = slurm.get(entry["job_id"], ("UNKNOWN", "?"))
        else:
            state, elapsed = _local_state(entry)
        rows.append({**entry, "state": state, "elapsed": elapsed})
    return rows


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def status_text(exp_dir: Path) -> str:
    """The table `webly experiment status` prints, and the stderr tail of every failed job."""
    rows = job_states(latest_jobs(exp_dir))
    header = ("stage", "name", "job", "state", "elapsed", "log")
    table = [header] + [(r["stage"], r["name"], r["job_id"], r["state"], r["elapsed"], r["stdout"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + str(row[-1])
             for row in table]
    counts = Counter(r["state"] for r in rows)
    lines.append("")
    lines.append(", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())))
    for r in rows:
        if r["state"] not in ("COMPLETED", "RUNNING", "PENDING", "REQUEUED"):
            lines += ["", f"--- {r['stage']} {r['name']} ({r['state']}): tail of {r['stderr']}", tail(r["stderr"])]
    return "\n".join(lines)


def cancel_jobs(exp_dir: Path) -> list[dict[str, Any]]:
    """Cancel every job of the experiment that has not ended; returns the ones cancelled."""
    live = [r for r in job_states(latest_jobs(exp_dir)) if r["state"] not in FINAL_STATES]
    slurm_ids = [r["job_id"] for r in live if r["launcher"] == "slurm"]
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=True)
    for r in live:
        if r["launcher"] != "slurm" and _pid_is_submitit(int(r["job_id"])):
            os.kill(int(r["job_id"]), signal.SIGINT)  # as submitit's own cancel: its tasks ignore SIGTERM
    return live

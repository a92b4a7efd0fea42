"""Where an experiment's wall time went: each job's start, end and duration from its submitit log, then the
makespan, the sum of job durations and the idle slot time (slots x makespan - sum).

    .venv/bin/python bench/demo_timeline.py runs/experiments/demo          # after `make demo`
    .venv/bin/python bench/demo_timeline.py runs/experiments/demo --slots 2

The job log (`jobs.json`) names every job's stdout; submitit writes "Starting" and "Job completed" lines with
timestamps there. A job still running or failed has no end and is listed without one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from webly.control import latest_jobs

STAMP = r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\)"


def job_times(stdout: Path) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(start, end) of a job from its submitit log; None where the line is missing."""
    text = stdout.read_text(errors="replace") if stdout.exists() else ""

    def first(pattern: str) -> dt.datetime | None:
        found = re.search(STAMP + pattern, text)
        return dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f") if found else None

    return first(r" - Starting"), first(r" - Job completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment_dir", type=Path)
    parser.add_argument("--slots", type=int, default=2, help="jobs run at once (experiment.max_parallel)")
    args = parser.parse_args()
    rows = [(*job_times(Path(job["stdout"])), job["stage"], job["name"]) for job in latest_jobs(args.experiment_dir)]
    started = [r for r in rows if r[0] is not None]
    if not started:
        raise SystemExit(f"{args.experiment_dir}: no job has started")
    origin = min(r[0] for r in started)
    print(f"{'start s':>8} {'end s':>8} {'took s':>8}  job")
    for start, end, stage, name in sorted(started, key=lambda r: r[0]):
        offset = (start - origin).total_seconds()
        ended_at = f"{(end - origin).total_seconds():8.1f} {(end - start).total_seconds():8.1f}" if end else " " * 17
        print(f"{offset:8.1f} {ended_at}  {stage} {name}")
    ended = [r for r in started if r[1] is not None]
    makespan = (max(r[1] for r in ended) - origin).total_seconds()
    work = sum((end - start).total_seconds() for start, end, _, _ in ended)
    print(f"makespan {makespan:.0f} s, sum of job durations {work:.0f} s, "
          f"idle slot time {args.slots * makespan - work:.0f} s ({args.slots} slots)")


if __name__ == "__main__":
    main()

"""Local runs as a graph: a job starts as soon as the jobs it needs have succeeded and a slot is free.

Run stage by stage, a small machine idles: the dedup job would wait for every pretraining cell though it needs
only its reference trunk, and a trunk's transfers for every other trunk. Here each spec lists the specs it needs
(`after`); among the ready ones the earliest in the list starts first, so the list's order is the priority.
A failed job skips what needs it and nothing else; a failure in a stage everything after depends on (data,
describe, dedup, report) starts nothing new, lets the running jobs finish (their checkpoints are kept), and
raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import submitit
from tqdm import tqdm

CRITICAL_STAGES = ("data", "describe", "dedup", "report")
PENDING, RUNNING, OK, FAILED, SKIPPED = "pending", "running", "ok", "failed", "skipped"


@dataclass(eq=False)  # specs are compared (and hashed) by identity: their args are large configs
class Spec:
    """One job: what to call, on what, how to tell it has already been done, and which jobs it needs."""

    stage: str
    name: str
    fn: Callable[..., Any]
    arg: Any
    done: Callable[[], bool] = lambda: False
    after: list[Spec] = field(default_factory=list)  # must have succeeded (or been done before) first
    after_any: bool = False  # start once `after` have ended, whatever their outcome (the report)


def run_graph(specs: list[Spec], wanted: set[str], limit: int, submit: Callable[[Spec], submitit.Job],
              stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Run the specs of `wanted` stages that are not done yet, at most `limit` at once.

    Returns `{stage: {name: result | exception | "done before"}}` with a key for every one of `stages`.
    """
    outcome: dict[str, dict[str, Any]] = {stage: {} for stage in stages}
    state: dict[Spec, str] = {}
    for spec in specs:
        if spec.done():
            state[spec] = OK
            outcome[spec.stage][spec.name] = "done before"
        else:
            state[spec] = PENDING if spec.stage in wanted else SKIPPED
    running: list[tuple[Spec, submitit.Job]] = []
    halted = False  # a critical stage failed: start nothing more
    to_run = sum(s == PENDING for s in state.values())
    with tqdm(total=to_run, desc=f"jobs ({to_run})", unit="job", disable=not to_run) as bar:
        try:
            while True:
                _skip_blocked(specs, state, bar)
                while not halted and len(running) < limit and (spec := _next_ready(specs, state)):
                    running.append((spec, submit(spec)))
                    state[spec] = RUNNING
                if not running:
                    break
                bar.set_postfix_str(", ".join(f"{s.stage} {s.name}" for s, _ in running), refresh=False)
                for spec, job in [r for r in running if r[1].done()]:
                    running.remove((spec, job))
                    bar.update()
                    state[spec] = collect(spec, job, outcome)
                    halted = halted or (state[spec] == FAILED and spec.stage in CRITICAL_STAGES)
                time.sleep(0.2)
        except KeyboardInterrupt:  # local jobs would outlive us: stop them, their checkpoints let a re-run resume
            for _, job in running:
                job.cancel(check=False)
            raise
    for stage in CRITICAL_STAGES:
        failed = {n: r for n, r in outcome.get(stage, {}).items() if isinstance(r, Exception)}
        if failed:
            raise RuntimeError(f"stage {stage} failed: " + "; ".join(f"{n}: {e}" for n, e in failed.items()))
    return outcome


def _next_ready(specs: list[Spec], state: dict[Spec, str]) -> Spec | None:
    for spec in specs:
        if state[spec] != PENDING:
            continue
        ended = (OK, FAILED, SKIPPED) if spec.after_any else (OK,)
        if all(state[need] in ended for need in spec.after):
            return spec
    return None


def _skip_blocked(specs: list[Spec], state: dict[Spec, str], bar: tqdm) -> None:
    """Mark pending specs that need a failed or skipped one as skipped (in list order, so chains cascade)."""
    changed = True
    while changed:
        changed = False
        for spec in specs:
            if state[spec] != PENDING or spec.after_any:
                continue
            blocker = next((need for need in spec.after if state[need] in (FAILED, SKIPPED)), None)
            if blocker is not None:
                state[spec] = SKIPPED
                changed = True
                bar.total -= 1
                if state[blocker] == FAILED:
                    tqdm.write(f"[webly] {spec.stage} {spec.name} not run: it needs {blocker.stage} {blocker.name}")


def collect(spec: Spec, job: submitit.Job, outcome: dict[str, dict[str, Any]]) -> str:
    """Wait for the job; its result (or its exception) goes to `outcome[stage][name]`; returns ok or failed."""
    try:
        outcome[spec.stage][spec.name] = job.result()
        return OK
    except Exception as err:  # any failure of the job: keep going, report it at the end
        outcome[spec.stage][spec.name] = err
        tqdm.write(f"[webly] {spec.stage} {spec.name} failed; log: {job.paths.stderr}")
        return FAILED

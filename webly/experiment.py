"""A scaling study as stages of jobs: data -> pretrain -> dedup -> transfer -> report.

The grid of `experiment.grid` (data sizes x models x heads x seeds, then tasks x modes) becomes one list of
stage specs per stage. Each stage's jobs go through submitit; a stage starts when the one before it is done
(its outputs are the next one's inputs). A spec whose run directory already says done for the same config is
not submitted again, so re-running an interrupted experiment picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from pretrain.atomic import atomic_write_json
from pretrain.config import HeadConfig, ModelConfig
from pretrain.stage import is_done
from transfer.config import TransferConfig
from webly import jobs
from webly.config import WeblyConfig, load_option, run_name
from webly.launch import make_executor


@dataclass(eq=False)  # specs are compared by identity: their args are large configs
class Spec:
    """One job of a stage: what to call, on what, and how to tell it has already been done."""

    stage: str
    name: str
    fn: Callable[..., Any]
    arg: Any
    done: Callable[[], bool] = lambda: False


def _done_when(run_dir: Path | str, config: dict[str, Any], filename: str = "manifest.json") -> Callable[[], bool]:
    return lambda: is_done(run_dir, config, filename)


def experiment_dir(cfg: WeblyConfig) -> Path:
    return Path(cfg.work_dir) / "experiments" / cfg.experiment.name


def pretrain_cells(cfg: WeblyConfig) -> list[WeblyConfig]:
    """One full config per pretraining cell of the grid, its runs under the experiment directory."""
    grid, exp = cfg.experiment.grid, experiment_dir(cfg)
    cells = []
    for model_name in grid.models:
        model = load_option("model", model_name, ModelConfig)
        for head_name in grid.heads:
            head = load_option("head", head_name, HeadConfig)
            for subset in grid.subsets:
                for seed in grid.seeds:
                    cell = dataclasses.replace(
                        cfg,
                        model=model,
                        head=head,
                        work_dir=str(exp),
                        name="",
                        data=dataclasses.replace(cfg.data, subset=subset),
                        train=dataclasses.replace(cfg.train, seed=seed, threads=cfg.experiment.threads_per_job),
                        logging=dataclasses.replace(cfg.logging, progress=False),
                    )
                    cells.append(dataclasses.replace(cell, name=run_name(cell)))
    return cells


def transfer_configs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_json: Path) -> list[list[TransferConfig]]:
    """Every (pretrained or random-init trunk) x task x mode transfer run, grouped by trunk."""
    exp, grid, base = experiment_dir(cfg), cfg.experiment.grid, cfg.experiment.transfer
    inits: list[tuple[str, str, ModelConfig]] = [(c.name, str(jobs.pretrain_run_dir(c)), c.model) for c in cells]
    if grid.baseline:
        inits += [(f"random-{m}", "", load_option("model", m, ModelConfig)) for m in grid.models]
    groups = []
    for init_name, init_dir, model in inits:
        group = []
        for task in grid.tasks:
            settings = cfg.experiment.tasks.get(task)
            overrides = {k: v for k, v in dataclasses.asdict(settings).items() if v} if settings else {}
            for mode in grid.modes:
                run_dir = exp / "transfer" / f"{init_name}-{task}-{mode}"
                group.append(
                    dataclasses.replace(
                        base,
                        task=task,
                        mode=mode,
                        init=init_dir,
                        model=model,
                        benchmark=cfg.experiment.bench.root,
                        dedup=str(dedup_json),
                        threads=cfg.experiment.threads_per_job,
                        run_dir=str(run_dir),
                        **overrides,
                    )
                )
        groups.append(group)
    return groups


def transfer_specs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_json: Path) -> list[Spec]:
    """One job per transfer run, or (`experiment.group_transfers`) one per trunk running its tasks in turn,
    which saves the start-up of a Python process per run on a small machine."""
    specs = []
    for group in transfer_configs(cfg, cells, dedup_json):
        dones = [_done_when(t.run_dir, dataclasses.asdict(t)) for t in group]
        if cfg.experiment.group_transfers:
            name = Path(group[0].run_dir).name.rsplit("-", 2)[0]
            specs.append(Spec("transfer", name, jobs.transfer_group_job, group, lambda d=dones: all(f() for f in d)))
        else:
            specs += [
                Spec("transfer", Path(t.run_dir).name, jobs.transfer_job, t, d)
                for t, d in zip(group, dones, strict=True)
            ]
    return specs


def _run_stage(cfg: WeblyConfig, specs: list[Spec], log: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the stage's specs that are not done yet, at most `max_parallel` at once; results by spec name.

    A failed job is recorded (with its log path) and does not stop the others.
    """
    results: dict[str, Any] = {}
    pending = []
    for spec in specs:  # each done-check reads a manifest: ask once
        if spec.done():
            results[spec.name] = "done before"
        else:
            pending.append(spec)
    if not pending:
        return results
    folder = Path(cfg.launcher.folder or experiment_dir(cfg) / "jobs")
    limit = max(1, cfg.experiment.max_parallel) if cfg.launcher.name == "local" else len(pending)
    running: list[tuple[Spec, submitit.Job]] = []
    with tqdm(total=len(pending), desc=f"{specs[0].stage} ({len(pending)} jobs)", unit="job") as bar:
        try:
            _drive(cfg, folder, limit, pending, running, results, log, bar)
        except KeyboardInterrupt:  # local jobs would outlive us: stop them, their checkpoints let a re-run resume
            for _, job in running:
                job.cancel(check=False)
            raise
    return results


def _drive(
    cfg: WeblyConfig,
    folder: Path,
    limit: int,
    pending: list[Spec],
    running: list,
    results: dict[str, Any],
    log: list[dict[str, Any]],
    bar: tqdm,
) -> None:
    """Keep up to `limit` jobs running until every pending spec has finished."""
    while pending or running:
        while pending and len(running) < limit:
            spec = pending.pop(0)
            job = make_executor(cfg.launcher, folder, f"{spec.stage}-{spec.name}").submit(spec.fn, spec.arg)
            running.append((spec, job))
            log.append(
                {
                    "stage": spec.stage,
                    "name": spec.name,
                    "job_id": job.job_id,
                    "stdout": str(job.paths.stdout),
                    "stderr": str(job.paths.stderr),
                }
            )
        for spec, job in [r for r in running if r[1].done()]:
            running.remove((spec, job))
            bar.update()
            try:
                results[spec.name] = job.result()
            except Exception as err:  # any failure of the job: keep going, report it at the end
                results[spec.name] = err
                tqdm.write(f"[webly] {spec.stage} {spec.name} failed; log: {job.paths.stderr}")
        time.sleep(0.2)


def run_experiment(cfg: WeblyConfig) -> dict[str, Any]:
    """Run (or resume) the study, stage after stage; returns the report's paths (when the report stage ran)."""
    exp = experiment_dir(cfg)
    exp.mkdir(parents=True, exist_ok=True)
    wanted = set(cfg.experiment.stages)
    log: list[dict[str, Any]] = []
    outcome: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def stage(name: str, specs: list[Spec]) -> dict[str, Any]:
        outcome[name] = _run_stage(cfg, specs, log) if name in wanted and specs else {}
        return outcome[name]

    corpus, bench = cfg.data.root, cfg.experiment.bench.root
    data = [
        Spec(
            "data",
            "corpus",
            jobs.synth_job,
            cfg,
            _done_when(corpus, jobs.synth_stage_config(cfg), jobs.DATA_STAGE_FILE),
        ),
        Spec(
            "data",
            "benchmarks",
            jobs.bench_job,
            cfg,
            _done_when(bench, jobs.bench_stage_config(cfg), jobs.DATA_STAGE_FILE),
        ),
    ]
    _raise_failures(stage("data", data), "data")

    cells = pretrain_cells(cfg)
    stage(
        "pretrain",
        [
            Spec(
                "pretrain",
                c.name,
                jobs.pretrain_job,
                c,
                _done_when(jobs.pretrain_run_dir(c), jobs.pretrain_stage_config(c)),
            )
            for c in cells
        ],
    )
    done_cells = [c for c in cells if is_done(jobs.pretrain_run_dir(c), jobs.pretrain_stage_config(c))]

    dedup_dir = exp / "dedup"
    if done_cells:
        reference = jobs.dedup_reference(done_cells)
        dedup = Spec(
            "dedup",
            "dedup",
            jobs.dedup_job,
            (cfg, reference, str(dedup_dir)),
            _done_when(dedup_dir, jobs.dedup_stage_config(cfg, reference)),
        )
        _raise_failures(stage("dedup", [dedup]), "dedup")

    stage("transfer", transfer_specs(cfg, done_cells, dedup_dir / "dedup.json"))
    report = stage("report", [Spec("report", "report", jobs.report_job, (cfg, str(exp)))])
    _raise_failures(report, "report")

    failures = {
        name: repr(r) for results in outcome.values() for name, r in results.items() if isinstance(r, Exception)
    }
    summary = {
        "name": cfg.experiment.name,
        "stages": {k: sorted(v) for k, v in outcome.items()},
        "jobs": log,
        "failures": failures,
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(exp / "experiment.json", summary)
    return {**report.get("report", {}), **summary}


def _raise_failures(results: dict[str, Any], stage: str) -> None:
    failed = {name: r for name, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise RuntimeError(f"stage {stage} failed: " + "; ".join(f"{n}: {e}" for n, e in failed.items()))

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


@dataclass
class Spec:
    """One job of a stage: what to call, on what, and where its results go."""

    stage: str
    name: str
    fn: Callable[..., Any]
    arg: Any
    run_dir: Path
    config: dict[str, Any] | None  # the stage config whose hash marks the run done; None: always run
    done_file: str = "manifest.json"  # where that mark is kept in run_dir


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


def transfer_specs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_json: Path) -> list[Spec]:
    """Every (pretrained or random-init trunk) x task x mode transfer run."""
    exp, grid = experiment_dir(cfg), cfg.experiment.grid
    inits: list[tuple[str, str, ModelConfig]] = [(c.name, str(jobs.pretrain_run_dir(c)), c.model) for c in cells]
    if grid.baseline:
        for model_name in grid.models:
            inits.append((f"random-{model_name}", "", load_option("model", model_name, ModelConfig)))
    specs = []
    for init_name, init_dir, model in inits:
        for task in grid.tasks:
            settings = cfg.experiment.tasks.get(task)
            base = cfg.experiment.transfer
            overrides = {k: v for k, v in dataclasses.asdict(settings).items() if v} if settings else {}
            for mode in grid.modes:
                run_dir = exp / "transfer" / f"{init_name}-{task}-{mode}"
                tcfg: TransferConfig = dataclasses.replace(
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
                specs.append(Spec("transfer", run_dir.name, jobs.transfer_job, tcfg, run_dir, dataclasses.asdict(tcfg)))
    return specs


def _run_stage(cfg: WeblyConfig, specs: list[Spec], log: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the stage's specs that are not done yet, at most `max_parallel` at once; results by spec name.

    A failed job is recorded (with its log path) and does not stop the others.
    """
    results: dict[str, Any] = {}
    pending = [s for s in specs if not (s.config is not None and is_done(s.run_dir, s.config, s.done_file))]
    for spec in specs:
        if spec not in pending:
            results[spec.name] = "done before"
    if not pending:
        return results
    folder = Path(cfg.launcher.folder or experiment_dir(cfg) / "jobs")
    limit = max(1, cfg.experiment.max_parallel) if cfg.launcher.name == "local" else len(pending)
    running: list[tuple[Spec, submitit.Job]] = []
    with tqdm(total=len(pending), desc=f"{specs[0].stage} ({len(pending)} jobs)", unit="job") as bar:
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
                        "run_dir": str(spec.run_dir),
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
    return results


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

    corpus_root, bench_root = Path(cfg.data.root), Path(cfg.experiment.bench.root)
    _raise_failures(
        stage(
            "data",
            [
                Spec(
                    "data",
                    "corpus",
                    jobs.synth_job,
                    cfg,
                    corpus_root,
                    jobs.synth_stage_config(cfg),
                    jobs.DATA_STAGE_FILE,
                ),
                Spec(
                    "data",
                    "benchmarks",
                    jobs.bench_job,
                    cfg,
                    bench_root,
                    jobs.bench_stage_config(cfg),
                    jobs.DATA_STAGE_FILE,
                ),
            ],
        ),
        "data",
    )

    cells = pretrain_cells(cfg)
    pretrained = stage(
        "pretrain",
        [
            Spec("pretrain", c.name, jobs.pretrain_job, c, jobs.pretrain_run_dir(c), jobs.pretrain_stage_config(c))
            for c in cells
        ],
    )
    done_cells = [c for c in cells if is_done(jobs.pretrain_run_dir(c), jobs.pretrain_stage_config(c))]

    dedup_dir = exp / "dedup"
    if done_cells:
        reference = jobs.dedup_reference(done_cells)
        _raise_failures(
            stage(
                "dedup",
                [
                    Spec(
                        "dedup",
                        "dedup",
                        jobs.dedup_job,
                        (cfg, reference, str(dedup_dir)),
                        dedup_dir,
                        jobs.dedup_stage_config(cfg, reference),
                    )
                ],
            ),
            "dedup",
        )

    stage("transfer", transfer_specs(cfg, done_cells, dedup_dir / "dedup.json"))
    report = stage("report", [Spec("report", "report", jobs.report_job, (cfg, str(exp)), exp / "report", None)])
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
    return {**report.get("report", {}), **summary, "pretrained": pretrained}


def _raise_failures(results: dict[str, Any], stage: str) -> None:
    failed = {name: r for name, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise RuntimeError(f"stage {stage} failed: " + "; ".join(f"{n}: {e}" for n, e in failed.items()))

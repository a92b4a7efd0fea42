"""A scaling study as stages of jobs: data -> pretrain -> [describe] -> dedup -> transfer -> report.

The grid of `experiment.grid` (data sizes x models x heads x seeds, then tasks x modes) becomes one list of
job specs per stage. Every job goes through submitit: on Slurm each stage is one job array after the one
before; locally each job starts once the jobs it needs are done (`webly.schedule`). A spec whose run
directory already says done for the same config is not submitted again, so re-running an interrupted
experiment picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
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
from webly.control import JOBS_FILE, record_jobs
from webly.launch import array_id, make_executor, submit_batch
from webly.schedule import Spec, collect, run_graph


def _done_when(run_dir: Path | str, config: dict[str, Any], filename: str = "manifest.json") -> Callable[[], bool]:
    return lambda: is_done(run_dir, config, filename)


ALL_STAGES = ("data", "pretrain", "describe", "dedup", "transfer", "report")


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
        unknown = sorted(set(grid.baseline_models) - set(grid.models))
        if unknown:
            raise ValueError(f"experiment.grid.baseline_models: {', '.join(unknown)} not in experiment.grid.models")
        models = grid.baseline_models or grid.models
        inits += [(f"random-{m}", "", load_option("model", m, ModelConfig)) for m in models]
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


def transfer_specs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_json: Path,
                   needs: Callable[[TransferConfig], list[Spec]] = lambda t: []) -> list[Spec]:
    """One job per transfer run, or (`experiment.group_transfers`) one per trunk running its tasks in turn,
    which saves the start-up of a Python process per run on a small machine. `needs` names the specs a run
    waits for (local runs)."""
    specs = []
    for group in transfer_configs(cfg, cells, dedup_json):
        dones = [_done_when(t.run_dir, dataclasses.asdict(t)) for t in group]
        if cfg.experiment.group_transfers:
            name = Path(group[0].run_dir).name.rsplit("-", 2)[0]
            specs.append(Spec("transfer", name, jobs.transfer_group_job, group, lambda d=dones: all(f() for f in d),
                              after=needs(group[0])))
        else:
            specs += [
                Spec("transfer", Path(t.run_dir).name, jobs.transfer_job, t, d, after=needs(t))
                for t, d in zip(group, dones, strict=True)
            ]
    return specs


def data_specs(cfg: WeblyConfig) -> list[Spec]:
    corpus, bench = cfg.data.root, cfg.experiment.bench.root
    return [
        Spec("data", "corpus", jobs.synth_job, cfg,
             _done_when(corpus, jobs.synth_stage_config(cfg), jobs.DATA_STAGE_FILE)),
        Spec("data", "benchmarks", jobs.bench_job, cfg,
             _done_when(bench, jobs.bench_stage_config(cfg), jobs.DATA_STAGE_FILE)),
    ]


def pretrain_specs(cells: list[WeblyConfig]) -> list[Spec]:
    return [
        Spec("pretrain", c.name, jobs.pretrain_job, c,
             _done_when(jobs.pretrain_run_dir(c), jobs.pretrain_stage_config(c)))
        for c in cells
    ]


def dedup_specs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_dir: Path) -> list[Spec]:
    """De-duplicate against the corpus with the best trunk among `cells` (none: nothing to do)."""
    if not cells:
        return []
    reference = jobs.dedup_reference(cells)
    return [Spec("dedup", "dedup", jobs.dedup_job, (cfg, reference, str(dedup_dir)),
                 _done_when(dedup_dir, jobs.dedup_stage_config(cfg, reference)))]


def describe_specs(cfg: WeblyConfig, cells: list[WeblyConfig], dedup_dir: Path) -> list[Spec]:
    """With dedup.extract_jobs > 1: one job per range of corpus shards, describing it for the dedup job (nothing
    to do once the dedup stage is done)."""
    parts = cfg.experiment.dedup.extract_jobs
    if not cells or parts <= 1:
        return []
    reference = jobs.dedup_reference(cells)
    dedup_done = _done_when(dedup_dir, jobs.dedup_stage_config(cfg, reference))
    return [Spec("describe", f"describe-{part}", jobs.describe_job, (cfg, reference, str(dedup_dir), part), dedup_done)
            for part in range(parts)]


def report_specs(cfg: WeblyConfig) -> list[Spec]:
    return [Spec("report", "report", jobs.report_job, (cfg, str(experiment_dir(cfg))))]


def _not_done(specs: list[Spec], results: dict[str, Any]) -> list[Spec]:
    """The specs still to run; the others are recorded as done before (each done-check reads a manifest once)."""
    pending = []
    for spec in specs:
        if spec.done():
            results[spec.name] = "done before"
        else:
            pending.append(spec)
    return pending


def _job_folder(cfg: WeblyConfig) -> Path:
    return Path(cfg.launcher.folder or experiment_dir(cfg) / "jobs")


def _local_plan(cfg: WeblyConfig, wanted: set[str]) -> list[Spec]:
    """Every spec with what it needs, in priority order: data, the dedup reference's pretraining, the dedup
    (which every transfer needs), the random-init transfers, the other cells (deeper and larger first: longer
    jobs early), their transfers in the same order, and the report after all of them."""
    cells = pretrain_cells(cfg)
    corpus, bench = data_specs(cfg)
    trained = list(zip(cells, pretrain_specs(cells), strict=True))
    by_dir = {str(jobs.pretrain_run_dir(c)): spec for c, spec in trained}
    for _, spec in trained:
        spec.after = [corpus]
    # the reference trunk is the best cell done or to run now; as on Slurm, if it fails the dedup stops
    # rather than silently taking a smaller trunk
    candidates = cells if "pretrain" in wanted else [c for c, spec in trained if spec.done()]
    reference = [by_dir[jobs.dedup_reference(candidates)[0]]] if candidates else []
    dedup_dir = experiment_dir(cfg) / "dedup"
    describe = describe_specs(cfg, candidates, dedup_dir)
    dedup = dedup_specs(cfg, candidates, dedup_dir)
    for spec in describe:
        spec.after = [corpus, *reference]
    for spec in dedup:
        spec.after = [corpus, bench, *reference, *describe]
    longest_first = sorted(trained, key=lambda pair: (-pair[0].model.depth, -(pair[0].data.subset or 1 << 30)))
    pretrain = [*reference, *(spec for _, spec in longest_first if spec not in reference)]
    rank = {spec: i for i, spec in enumerate(pretrain)}  # specs hash by identity
    transfers = transfer_specs(cfg, cells, dedup_dir / "dedup.json",
                               needs=lambda t: [bench, *dedup, *([by_dir[t.init]] if t.init else [])])

    def trunk_rank(spec: Spec) -> int:
        return min((rank[n] for n in spec.after if n in rank), default=-1)  # -1: a random init, no trunk

    transfers.sort(key=trunk_rank)
    # random-init transfers need only the dedup: run beside the pretraining, they leave an even number of
    # equally long trunk transfers for the end, where an odd one out would run alone
    early = [t for t in transfers if trunk_rank(t) < 0]
    report = report_specs(cfg)
    for spec in report:
        spec.after, spec.after_any = transfers, True
    return [corpus, bench, *pretrain[:1], *describe, *dedup, *early, *pretrain[1:], *transfers[len(early):],
            *report]


def _run_local(cfg: WeblyConfig, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Local runs: every job starts once what it needs is done, up to `experiment.max_parallel` at once."""

    def submit(spec: Spec) -> submitit.Job:
        job = make_executor(cfg.launcher, _job_folder(cfg), f"{spec.stage}-{spec.name}").submit(spec.fn, spec.arg)
        record_jobs(experiment_dir(cfg), spec.stage, cfg.launcher.name, [(spec.name, job)])
        return job

    return run_graph(_local_plan(cfg, wanted), wanted, max(1, cfg.experiment.max_parallel), submit, ALL_STAGES)


def _run_chained(cfg: WeblyConfig, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Slurm: every stage is one job array, submitted at once, each starting after the one before succeeded
    (`afterok`; the report after the transfers whatever their outcome, so it shows what finished). A failed
    job cancels the stages after it; a re-run resubmits the stages and cells not done yet."""
    cells = pretrain_cells(cfg)
    dedup_dir = experiment_dir(cfg) / "dedup"
    plan = [
        ("data", data_specs(cfg)),
        ("pretrain", pretrain_specs(cells)),
        ("describe", describe_specs(cfg, cells, dedup_dir)),
        ("dedup", dedup_specs(cfg, cells, dedup_dir)),
        ("transfer", transfer_specs(cfg, cells, dedup_dir / "dedup.json")),
        ("report", report_specs(cfg)),
    ]
    outcome: dict[str, dict[str, Any]] = {}
    submitted: list[tuple[str, list[tuple[Spec, submitit.Job]]]] = []
    previous: list[submitit.Job] = []
    for name, specs in plan:
        outcome[name] = {}
        pending = _not_done(specs, outcome[name]) if name in wanted else []
        if not pending:
            continue
        new_jobs = submit_batch(
            cfg.launcher, _job_folder(cfg), f"{cfg.experiment.name}-{name}", [(s.fn, s.arg) for s in pending],
            after=previous, after_kind="afterany" if name == "report" else "afterok",
            parallelism=cfg.experiment.max_parallel,
        )
        pairs = list(zip(pending, new_jobs, strict=True))
        record_jobs(experiment_dir(cfg), name, cfg.launcher.name, [(s.name, j) for s, j in pairs])
        print(f"[webly] {name}: job array {array_id(new_jobs[0])} ({len(new_jobs)} tasks)", flush=True)
        submitted.append((name, pairs))
        previous = new_jobs
    if not cfg.experiment.wait:
        print(f"[webly] submitted; follow with `webly experiment status experiment={cfg.experiment.name}`")
        return outcome
    for name, pairs in submitted:
        with tqdm(total=len(pairs), desc=f"{name} ({len(pairs)} jobs)", unit="job") as bar:
            for spec, job in pairs:
                collect(spec, job, outcome)
                bar.update()
    return outcome


def run_experiment(cfg: WeblyConfig) -> dict[str, Any]:
    """Run (or resume) the study; returns the report's paths (when the report stage ran) and a summary."""
    exp = experiment_dir(cfg)
    exp.mkdir(parents=True, exist_ok=True)
    wanted = set(cfg.experiment.stages)
    if "dedup" in wanted:
        wanted.add("describe")  # the dedup stage's corpus pass, when split into jobs (dedup.extract_jobs)
    started = time.perf_counter()
    outcome = _run_chained(cfg, wanted) if cfg.launcher.name == "slurm" else _run_local(cfg, wanted)
    failures = {
        name: repr(r) for results in outcome.values() for name, r in results.items() if isinstance(r, Exception)
    }
    summary = {
        "name": cfg.experiment.name,
        "stages": {k: sorted(v) for k, v in outcome.items()},
        "jobs": str(exp / JOBS_FILE),
        "failures": failures,
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(exp / "experiment.json", summary)
    report = outcome.get("report", {}).get("report", {})
    return {**(report if isinstance(report, dict) else {}), **summary}

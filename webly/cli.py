"""The `webly` command: `webly COMMAND [group=option ...] [key=value ...]`.

Every command composes the config from `configs/` with the overrides, checks it before doing anything, and
runs its job through submitit (`launcher=local` by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from pretrain.runlog import read_jsonl
from transfer.backbone import trunk_model_config
from transfer.config import TransferConfig
from webly.config import ConfigError, WeblyConfig, compose, group_options, to_yaml
from webly.experiment import experiment_dir, run_experiment
from webly.jobs import dedup_job, pretrain_job, pretrain_run_dir, report_job, shards_job, synth_job, transfer_job
from webly.launch import submit, wait

COMMANDS: dict[str, str] = {
    "synth": "generate the synthetic web corpus as shards in data.root",
    "shards": "shard a folder of images with sidecar tag files (data.shards.input) into data.root",
    "pretrain": "pretrain a ResNet on the shards in data.root",
    "transfer": "transfer one trunk (transfer.init, empty: random init) to one task (task=...)",
    "dedup": "flag benchmark test images that near-duplicate the corpus (CNN descriptors of transfer.init)",
    "experiment": "run or resume a whole scaling study (experiment=demo): data, pretrain, dedup, transfer, report",
    "report": "rebuild the scaling report of an experiment (experiment=NAME)",
    "demo": "synth, then pretrain at two nested data sizes; prints where the results are",
}


def _epilog() -> str:
    lines = ["config groups (choose with group=option):"]
    lines += [f"  {group:<11} {', '.join(options)}" for group, options in group_options().items()]
    lines += [
        "",
        "any key can be set with key=value, e.g. data.subset=2 optim.lr=0.2 train.steps=500;",
        "add --cfg to print the composed config and stop.",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webly",
        description="Web-scale weakly-supervised pretraining and transfer.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="group=option or key=value")
        sub.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    return parser


def _job_folder(cfg: WeblyConfig) -> Path:
    return Path(cfg.launcher.folder or Path(cfg.work_dir) / "jobs")


def _run(cfg: WeblyConfig, name: str, fn: Callable[[Any], Any], arg: Any = None) -> Any:
    job = submit(cfg.launcher, _job_folder(cfg), name, fn, cfg if arg is None else arg)
    print(f"[webly] {name}: job {job.job_id} ({cfg.launcher.name}), log {job.paths.stdout}", flush=True)
    return wait([job])[0]


def _watch(jobs: list[submitit.Job], run_dirs: list[Path], steps: int) -> list[Any]:
    """Several concurrent runs: one progress bar over all their logged steps."""
    with tqdm(total=steps * len(jobs), desc="pretrain (all runs)", unit="step") as bar:
        while not all(job.done() for job in jobs):
            done = sum(max((r.get("step", 0) for r in read_jsonl(d / "metrics.jsonl")), default=0) for d in run_dirs)
            bar.update(done - bar.n)
            time.sleep(1.0)
        bar.update(bar.total - bar.n)
    return wait(jobs, stream=False)


def transfer_stage(cfg: WeblyConfig) -> TransferConfig:
    """The standalone transfer run: its directory is named after the trunk, task and mode."""
    init = Path(cfg.transfer.init).name if cfg.transfer.init else f"random-{cfg.model.name}"
    run_dir = Path(cfg.work_dir) / "transfer" / f"{init}-{cfg.transfer.task}-{cfg.transfer.mode}"
    return dataclasses.replace(
        cfg.transfer,
        model=cfg.model,
        benchmark=cfg.transfer.benchmark or cfg.experiment.bench.root,
        run_dir=str(run_dir),
    )


def _print_report(report: dict[str, Any]) -> None:
    print(f"[webly] report: {report['report']}")
    for task, plot in report.get("plots", {}).items():
        print(f"        {task}: {plot}")
    for name, error in report.get("failures", {}).items():
        print(f"[webly] failed: {name}: {error}")


def _summary_line(result: dict[str, Any]) -> str:
    keys = ("step", "train_samples", "eval/precision_at_1", "eval/mAP")
    parts = [f"{k}={result[k]:.3f}" if isinstance(result.get(k), float) else f"{k}={result.get(k)}" for k in keys]
    return " ".join(parts)


def demo(cfg: WeblyConfig) -> list[dict[str, Any]]:
    """The skeleton's demo: the corpus, then one pretraining run per nested data size, side by side."""
    started = time.perf_counter()
    manifest = _run(cfg, "synth", synth_job)
    subsets = [s["index"] for s in manifest["subsets"]][:2]
    print(
        f"[webly] corpus: {manifest['num_samples']} images, {manifest['vocab']['size']} tags, "
        f"subsets {[s['samples'] for s in manifest['subsets']]} in {cfg.data.root}",
        flush=True,
    )
    runs = [
        dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, subset=k),
            train=dataclasses.replace(cfg.train, threads=1),
            logging=dataclasses.replace(cfg.logging, progress=False),
        )
        for k in subsets
    ]
    jobs = [submit(c.launcher, _job_folder(c), f"pretrain-s{c.data.subset}", pretrain_job, c) for c in runs]
    results = _watch(jobs, [pretrain_run_dir(c) for c in runs], cfg.train.steps)
    for run_cfg, result in zip(runs, results, strict=True):
        run_dir = Path(result["run_dir"])
        print(f"[webly] subset {run_cfg.data.subset}: {_summary_line(result)}")
        print(f"        checkpoints {run_dir / 'checkpoints'}  trunk {run_dir / 'trunk.pt'}")
        print(f"        metrics {run_dir / 'metrics.jsonl'}  summary {run_dir / 'summary.json'}")
    print(f"[webly] demo finished in {time.perf_counter() - started:.0f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = compose(args.overrides)
    except ConfigError as err:
        print(f"webly {args.command}: config error: {err}", file=sys.stderr)
        return 2
    if args.cfg:
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "shards" and not cfg.data.shards.input:
        print(
            "webly shards: config error: data.shards.input is empty: name the folder of images with sidecar "
            "tag files (data.shards.input=DIR)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "demo":
            demo(cfg)
        elif args.command == "experiment":
            _print_report(run_experiment(cfg))
        elif args.command == "report":
            _print_report(_run(cfg, "report", report_job, (cfg, str(experiment_dir(cfg)))))
        elif args.command == "transfer":
            result = _run(cfg, "transfer", transfer_job, transfer_stage(cfg))
            print(f"[webly] transfer {result['task']} ({result['mode']}, init {result['init']}): {result['metrics']}")
        elif args.command == "dedup":
            reference = (cfg.transfer.init, trunk_model_config(cfg.transfer.init, cfg.model))
            out = Path(cfg.work_dir) / "dedup" / Path(cfg.experiment.bench.root).name
            result = _run(cfg, "dedup", dedup_job, (cfg, reference, str(out)))
            print(f"[webly] dedup: {result['per_benchmark']}\n[webly] manifest: {out / 'dedup.json'}")
        elif args.command == "pretrain":
            result = _run(cfg, "pretrain", pretrain_job)
            print(f"[webly] pretrain: {_summary_line(result)}\n[webly] run directory: {result['run_dir']}")
        else:
            result = _run(cfg, args.command, {"synth": synth_job, "shards": shards_job}[args.command])
            print(
                f"[webly] {args.command}: {result['num_samples']} training images in {result['num_shards']} "
                f"shards, {result['vocab']['size']} tags -> {cfg.data.root}"
            )
    except submitit.core.utils.FailedJobError as err:
        print(f"webly {args.command}: the job failed:\n{err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # launcher=debug runs in-process: the job's own error arrives here
        print(f"webly {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

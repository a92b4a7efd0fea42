"""The `webly` command: `webly COMMAND [group=option ...] [key=value ...]`.

Every command composes the config from `configs/` with the overrides, checks it before doing anything, and
runs its job through submitit (`launcher=local` by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from transfer.backbone import trunk_model_config
from transfer.config import TransferConfig
from webly.config import ConfigError, WeblyConfig, compose, group_options, to_yaml
from webly.control import cancel_jobs, status_text
from webly.experiment import experiment_dir, run_experiment
from webly.jobs import (
    dedup_job,
    describe_job,
    pretrain_job,
    report_job,
    search_job,
    shards_job,
    synth_job,
    transfer_job,
)
from webly.launch import array_id, submit, submit_batch, wait

COMMANDS: dict[str, str] = {
    "synth": "generate the synthetic web corpus as shards in data.root",
    "shards": "shard data.shards.input into data.root (data.shards.source=folder|yfcc|img2dataset)",
    "pretrain": "pretrain a ResNet on the shards in data.root",
    "transfer": "transfer one trunk (transfer.init, empty: random init) to one task (task=...)",
    "dedup": "flag benchmark test images that near-duplicate the corpus (writes dedup.json)",
    "experiment": "run or resume a whole scaling study (experiment=demo): data, pretrain, dedup, transfer, report;"
    " `webly experiment status|cancel experiment=NAME` shows or stops its jobs",
    "report": "rebuild the scaling report of an experiment (experiment=NAME)",
    "search": "search the corpus with a head=embedding run (search.run=RUN_DIR): search.text=TAGS (text -> images),"
    " search.image=FILE|KEY (reverse search) or search.gallery=[...] (gallery completion); writes JSON + a contact"
    " sheet",
    "demo": "the README's demo: `webly experiment experiment=demo` (the whole study, about 10 minutes on 2 cores)",
}


SWEEPABLE = ("pretrain", "transfer")
EXPERIMENT_ACTIONS = ("run", "status", "cancel")


def _split_top_level(value: str) -> list[str]:
    """`a,b` -> [a, b]; commas inside brackets or quotes (list and dict values) do not split."""
    parts, depth, quote, current = [], 0, "", ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def sweep_overrides(overrides: list[str]) -> list[list[str]]:
    """Every combination of the comma-separated values: [model.depth=18,34, data.subset=1,2] -> 4 override lists."""
    choices = []
    for override in overrides:
        key, sep, value = override.partition("=")
        choices.append([f"{key}={v}" for v in _split_top_level(value)] if sep else [override])
    return [list(combo) for combo in itertools.product(*choices)]


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
        if name in SWEEPABLE:
            sub.add_argument("-m", "--multirun", action="store_true",
                             help="sweep: key=a,b,c runs one job per combination (one job array on Slurm)")
        if name == "dedup":
            sub.add_argument("--report", action="store_true",
                             help="also write the audit report (same as dedup.report=true)")
    return parser


def _job_folder(cfg: WeblyConfig) -> Path:
    return Path(cfg.launcher.folder or Path(cfg.work_dir) / "jobs")


def _run(cfg: WeblyConfig, name: str, fn: Callable[[Any], Any], arg: Any = None) -> Any:
    job = submit(cfg.launcher, _job_folder(cfg), name, fn, cfg if arg is None else arg)
    print(f"[webly] {name}: job {job.job_id} ({cfg.launcher.name}), log {job.paths.stdout}", flush=True)
    return wait([job])[0]


def _run_sweep(cfgs: list[WeblyConfig], name: str, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
    """One job per combination, submitted together (one array on Slurm); failures are reported, not raised."""
    launcher = cfgs[0].launcher
    folder = _job_folder(cfgs[0])
    jobs = submit_batch(launcher, folder, name, [(fn, arg) for arg in args])
    print(f"[webly] {name}: {len(jobs)} jobs ({launcher.name}, array {array_id(jobs[0])}), logs in {folder}")
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # one failed combination must not hide the others
            print(f"[webly] job {job.job_id} failed; log: {job.paths.stderr}\n{err}", file=sys.stderr)
            results.append(err)
    return results


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


def _transfer_line(result: dict[str, Any]) -> str:
    return f"[webly] transfer {result['task']} ({result['mode']}, init {result['init']}): {result['metrics']}"


def _multirun(command: str, cfgs: list[WeblyConfig]) -> int:
    if command == "pretrain":
        fn, args, line = pretrain_job, cfgs, lambda r: f"[webly] pretrain: {_summary_line(r)} -> {r['run_dir']}"
    else:
        fn, args, line = transfer_job, [transfer_stage(c) for c in cfgs], _transfer_line
    results = _run_sweep(cfgs, command, fn, args)
    for result in results:
        if not isinstance(result, Exception):
            print(line(result))
    return 1 if any(isinstance(r, Exception) for r in results) else 0


def _experiment_control(action: str, cfg: WeblyConfig) -> int:
    exp = experiment_dir(cfg)
    try:
        if action == "status":
            print(status_text(exp))
        else:
            cancelled = cancel_jobs(exp)
            print(f"[webly] cancelled {len(cancelled)} jobs" + "".join(f"\n  {r['stage']} {r['name']} {r['job_id']}"
                                                                     for r in cancelled))
    except FileNotFoundError as err:
        print(f"webly experiment {action}: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = ["experiment=demo", *args.overrides] if args.command == "demo" else list(args.overrides)
    action = "run"
    if args.command == "experiment" and overrides and overrides[0] in EXPERIMENT_ACTIONS:
        action = overrides.pop(0)
    if getattr(args, "report", False):
        overrides = [*overrides, "experiment.dedup.report=true"]
    sweep = sweep_overrides(overrides) if getattr(args, "multirun", False) else [overrides]
    try:
        cfgs = [compose(o) for o in sweep]
    except ConfigError as err:
        print(f"webly {args.command}: config error: {err}", file=sys.stderr)
        return 2
    cfg = cfgs[0]
    if args.cfg:
        print("\n---\n".join(to_yaml(c) for c in cfgs), end="")
        return 0
    if action != "run":
        return _experiment_control(action, cfg)
    if getattr(args, "multirun", False):
        return _multirun(args.command, cfgs)
    if args.command == "shards" and not cfg.data.shards.input:
        print(
            "webly shards: config error: data.shards.input is empty: name the folder of images with sidecar "
            "tag files, the YFCC100M dataset file or img2dataset's output folder (data.shards.input=PATH)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command in ("experiment", "demo"):
            _print_report(run_experiment(cfg))
        elif args.command == "report":
            _print_report(_run(cfg, "report", report_job, (cfg, str(experiment_dir(cfg)))))
        elif args.command == "transfer":
            result = _run(cfg, "transfer", transfer_job, transfer_stage(cfg))
            print(_transfer_line(result))
        elif args.command == "dedup":
            reference = (cfg.transfer.init, trunk_model_config(cfg.transfer.init, cfg.model))
            out = Path(cfg.work_dir) / "dedup" / Path(cfg.experiment.bench.root).name
            parts = cfg.experiment.dedup.extract_jobs
            if parts > 1:  # the corpus pass as one job per range of shards (one array on Slurm) first
                described = _run_sweep([cfg], "describe", describe_job, [(cfg, reference, str(out), p)
                                                                         for p in range(parts)])
                failed = [r for r in described if isinstance(r, Exception)]
                if failed:
                    raise SystemExit(f"[webly] {len(failed)} of {parts} describe jobs failed (logs above)")
            result = _run(cfg, "dedup", dedup_job, (cfg, reference, str(out)))
            print(f"[webly] dedup: {result['per_benchmark']}\n[webly] manifest: {out / 'dedup.json'}")
            if result.get("audit"):
                print(f"[webly] audit report: {result['audit']}")
        elif args.command == "search":
            result = _run(cfg, "search", search_job)
            for hit in result["results"]:
                print(f"  #{hit['rank']:<3} {hit['score']:.3f}  {hit['key']}  {' '.join(hit['tags'])}")
            print(f"[webly] search: {result['json']}\n[webly] contact sheet: {result['contact_sheet']}")
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

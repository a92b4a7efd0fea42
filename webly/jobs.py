"""The functions a job runs, and the stage configs that say when one is already done.

Each job function takes its whole typed config, is importable, and is tested directly; submitit pickles the
call and runs it in a local process or a Slurm allocation. Nothing here depends on where it runs. Each job
imports the code it runs when it starts: a data or report job's process need not load torch and torchvision
(seconds per process on a small machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any

import submitit

from pretrain.atomic import read_json
from pretrain.config import ModelConfig, PretrainConfig
from pretrain.stage import is_done, write_manifest
from transfer.config import DedupConfig, TransferConfig
from webly.config import WeblyConfig, pretrain_config, run_name

DATA_STAGE_FILE = "stage.json"  # a dataset root already has a manifest.json of its own


def _processes() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def synth_stage_config(cfg: WeblyConfig) -> dict[str, Any]:
    return {"synth": dataclasses.asdict(cfg.data.synth), "shards": dataclasses.asdict(cfg.data.shards)}


def synth_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Generate the synthetic web into `data.root`; returns the dataset manifest (without its shard list)."""
    config = synth_stage_config(cfg)
    from pretrain.synthweb.dataset import write_synthweb

    write_manifest(cfg.data.root, "synth", "running", config, filename=DATA_STAGE_FILE)
    manifest = write_synthweb(cfg.data, processes=_processes())
    write_manifest(cfg.data.root, "synth", "done", config, filename=DATA_STAGE_FILE)
    return {k: v for k, v in manifest.items() if k not in ("shards", "synth")}


def shards_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Shard `data.shards.input` (a `data.shards.source`) into `data.root`; returns the dataset manifest summary."""
    if not cfg.data.shards.input:
        raise ValueError("data.shards.input is empty: name the folder, YFCC100M file or img2dataset output")
    from pretrain.sources import ingest

    manifest = ingest(cfg.data.root, cfg.data.shards, processes=_processes())
    return {k: v for k, v in manifest.items() if k != "shards"}


def bench_stage_config(cfg: WeblyConfig) -> dict[str, Any]:
    return {"bench": dataclasses.asdict(cfg.experiment.bench), "synth": dataclasses.asdict(cfg.data.synth)}


def bench_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Write the synthetic benchmarks (ImageFolder, COCO, VOC) from the corpus's world."""
    from transfer.synthbench import write_benchmarks

    config, root = bench_stage_config(cfg), cfg.experiment.bench.root
    write_manifest(root, "benchmarks", "running", config, filename=DATA_STAGE_FILE)
    manifest = write_benchmarks(cfg.experiment.bench, cfg.data.synth, processes=_processes())
    write_manifest(root, "benchmarks", "done", config, filename=DATA_STAGE_FILE)
    return manifest


def pretrain_run_dir(cfg: WeblyConfig) -> Path:
    return Path(cfg.work_dir) / "pretrain" / run_name(cfg)


def pretrain_stage(cfg: WeblyConfig) -> PretrainConfig:
    return dataclasses.replace(pretrain_config(cfg), run_dir=str(pretrain_run_dir(cfg)))


def pretrain_stage_config(cfg: WeblyConfig) -> dict[str, Any]:
    return dataclasses.asdict(pretrain_stage(cfg))


class _PreemptionFlag:
    """While active, SIGUSR2 (Slurm's warning before preemption or the time limit) only raises a flag, so training
    can checkpoint at a step boundary; `forward` then hands the signal to the handler that was there before
    (submitit's: requeue the job and exit)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _PreemptionFlag:
        self._previous = signal.signal(signal.SIGUSR2, self._raise)
        return self

    def _raise(self, signum: int, frame: Any) -> None:
        print("[webly] SIGUSR2: checkpointing at the end of this step", flush=True)
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGUSR2, self._previous)

    def forward(self) -> None:
        if callable(self._previous):
            self._previous(signal.SIGUSR2, None)


class PretrainJob(submitit.helpers.Checkpointable):
    """Pretrain in the run directory the config names; a run already done with this config is not redone.

    Preemptible: on SIGUSR2 the run checkpoints, and submitit requeues this same call, which resumes from that
    checkpoint (with the same W&B run id, which the checkpoint holds)."""

    def __call__(self, cfg: WeblyConfig) -> dict[str, Any]:
        from pretrain.train import pretrain

        stage_cfg = pretrain_stage(cfg)
        if is_done(stage_cfg.run_dir, dataclasses.asdict(stage_cfg)):
            summary = read_json(Path(stage_cfg.run_dir) / "manifest.json")["summary"]
            return {**summary, "run_dir": stage_cfg.run_dir, "skipped": "already done"}
        in_main_thread = threading.current_thread() is threading.main_thread()  # launcher=debug may not be
        with _PreemptionFlag() if in_main_thread else contextlib.nullcontext() as flag:
            result = pretrain(stage_cfg, should_stop=(lambda: flag.raised) if flag else None)
        if flag is not None and flag.raised:
            flag.forward()  # submitit: checkpoint() -> requeue -> exit; without a handler the run just stops here
        return {**result, "run_dir": stage_cfg.run_dir}


pretrain_job = PretrainJob()


def dedup_reference(cells: list[WeblyConfig]) -> tuple[str, ModelConfig]:
    """The trunk whose embeddings de-duplicate: the deepest model pretrained on the most data."""
    if not cells:
        raise ValueError("no pretraining run finished: no trunk to take dedup descriptors from")
    best = max(cells, key=lambda c: (c.data.subset or 1 << 30, c.model.depth, c.model.width))
    return str(pretrain_run_dir(best)), best.model


def dedup_stage_config(cfg: WeblyConfig, reference: tuple[str, ModelConfig]) -> dict[str, Any]:
    return {
        "dedup": dataclasses.asdict(cfg.experiment.dedup),
        "corpus": cfg.data.root,
        "benchmark": cfg.experiment.bench.root,
        "trunk": reference[0],
    }


def dedup_settings(cfg: WeblyConfig) -> DedupConfig:
    """The dedup config with its index folder resolved: one per work_dir, so every benchmark (and experiment)
    de-duplicated against a corpus reuses that corpus's descriptors and index."""
    dedup = cfg.experiment.dedup
    return dataclasses.replace(dedup, index_dir=dedup.index_dir or str(Path(cfg.work_dir) / "dedup" / "index"))


def dedup_job(args: tuple[WeblyConfig, tuple[str, ModelConfig], str]) -> dict[str, Any]:
    """Flag benchmark test images that near-duplicate corpus images; writes `<out>/dedup.json` and, with
    dedup.report, the audit report (transfer results are those under work_dir/transfer, if any)."""
    from transfer.dedup import run_dedup

    cfg, reference, out_dir = args
    config = dedup_stage_config(cfg, reference)
    write_manifest(out_dir, "dedup", "running", config)
    result = run_dedup(cfg.data.root, cfg.experiment.bench.root, out_dir, dedup_settings(cfg), reference[0],
                       reference[1])
    outputs = {"dedup": str(Path(out_dir) / "dedup.json")}
    if cfg.experiment.dedup.report:
        from webly.audit import build_audit
        from webly.results import pretrain_rows, transfer_rows

        exp = Path(cfg.work_dir)
        rows = transfer_rows(exp, pretrain_rows(exp))
        outputs.update(build_audit(out_dir, cfg.data.root, cfg.experiment.bench.root, rows))
        result["audit"] = outputs["audit"]
    write_manifest(out_dir, "dedup", "done", config, outputs=outputs)
    return result


def describe_job(args: tuple[WeblyConfig, tuple[str, ModelConfig], str, int]) -> dict[str, Any]:
    """One of `dedup.extract_jobs` jobs describing a range of corpus shards (the dedup job assembles them)."""
    from transfer.dedup import describe_corpus_part

    cfg, reference, out_dir, part = args
    return describe_corpus_part(cfg.data.root, out_dir, dedup_settings(cfg), reference[0], reference[1], part,
                                progress=cfg.logging.progress)


def transfer_job(cfg: TransferConfig) -> dict[str, Any]:
    from transfer.run import run_transfer

    return run_transfer(cfg)


def transfer_group_job(cfgs: list[TransferConfig]) -> dict[str, Any]:
    """Several transfer runs of one trunk in one process; one failing does not stop the others."""
    results: dict[str, Any] = {}
    for cfg in cfgs:
        try:
            results[Path(cfg.run_dir).name] = transfer_job(cfg)
        except Exception as err:  # run_transfer marked its manifest failed; the experiment reports it
            results[Path(cfg.run_dir).name] = repr(err)
    failed = {k: v for k, v in results.items() if isinstance(v, str)}
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cfgs)} transfer runs failed: {failed}")
    return results


def search_dirs(cfg: WeblyConfig) -> tuple[str, Path, Path]:
    """(corpus root, results folder, index cache folder) of `webly search`: the index is kept per run and corpus."""
    from transfer.search import query_name

    corpus = cfg.search.corpus or cfg.data.root
    base = Path(cfg.work_dir) / "search"
    out = Path(cfg.search.out) if cfg.search.out else base / f"{Path(cfg.search.run).name}-{query_name(cfg.search)}"
    return corpus, out, base / "index" / f"{Path(cfg.search.run).name}-{Path(corpus).name}"


def search_job(cfg: WeblyConfig) -> dict[str, Any]:
    """Text, reverse-image or gallery search of the corpus with an embedding-head run (transfer/search.py)."""
    from transfer.search import run_search

    corpus, out, cache = search_dirs(cfg)
    return run_search(cfg.search, corpus, out, cache, progress=cfg.logging.progress)


def report_job(args: tuple[WeblyConfig, str]) -> dict[str, Any]:
    """Collect the experiment's results into the scaling report."""
    from webly.report import build_report

    cfg, exp_dir = args
    return build_report(exp_dir, cfg.logging.wandb, cfg.data.root, cfg.experiment.bench.root)

"""Pretraining on noisy tags: the training loop, its checkpoints, and its resume.

`pretrain(cfg)` is the function a job runs. Given the same config it produces the same weights bit for bit on
the CPU, whether it runs straight through or is stopped and resumed from any of its checkpoints: the
checkpoint holds model, optimisers, schedulers, every RNG state, the negative sampler's state, every rank's data
position (epoch, batch) and cumulative skip counts, and the loader can rebuild any epoch from (seed, epoch).
With several processes (torchrun or submitit tasks) the model is wrapped in DistributedDataParallel, each rank
reads its own slice of the shards, and rank 0 alone writes checkpoints, metrics and the exported trunk.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from pretrain.atomic import atomic_write, atomic_write_json
from pretrain.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from pretrain.config import PretrainConfig
from pretrain.ddp import wrap_ddp
from pretrain.distributed import (
    ProcessInfo,
    all_gather_objects,
    close_distributed,
    device_for,
    init_distributed,
    mean_over_ranks,
)
from pretrain.evaluate import evaluate
from pretrain.loader import SKIP_REASONS, TaggedImageStream, make_loader
from pretrain.models import TaggingModel, build_model, export_torchvision
from pretrain.optim import build_optimizer, build_scheduler, build_sparse_optimizer
from pretrain.resample import TagSampleCounts
from pretrain.runlog import RunLogger
from pretrain.shards import Dataset
from pretrain.stage import write_manifest
from pretrain.step import TrainStep, autocast_dtype
from pretrain.tagvectors import load_tag_vectors
from pretrain.vocab import Vocabulary
from pretrain.zeroshot import evaluate_zeroshot, heldout_tags

# checkpoint keys of the dense optimiser and of the sparse head's one (their schedulers: "optimizer" -> "scheduler")
OPTIMIZER_KEYS = ("optimizer", "sparse_optimizer")


class TrainState:
    """What advances with every step, besides the weights: position in the data and running totals."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.images_seen = 0
        self.skipped: Counter[str] = Counter()
        self.wandb_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "images_seen": self.images_seen, "skipped": dict(self.skipped), "wandb_id": self.wandb_id}

    def load(self, saved: dict[str, Any]) -> None:
        self.step, self.epoch = saved["step"], saved["epoch"]
        self.batch_in_epoch, self.images_seen = saved["batch_in_epoch"], saved["images_seen"]
        self.skipped = Counter(saved["skipped"])
        self.wandb_id = saved["wandb_id"]


def _skip_row(skipped: Counter[str]) -> dict[str, int]:
    return {f"skipped/{reason}": int(skipped.get(reason, 0)) for reason in SKIP_REASONS}


def pretrain(cfg: PretrainConfig, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train a tagging model as `cfg` says, in `cfg.run_dir`; returns the run's summary.

    Run by every process of a DDP job (pretrain.distributed finds the group). `should_stop` (e.g. set by a
    preemption signal handler) is polled after every step: when it turns true on any rank, the run writes a
    checkpoint at that step and returns with status "preempted"; calling `pretrain(cfg)` again continues there.
    """
    if not cfg.run_dir:
        raise ValueError("run_dir is empty: the front door (`webly pretrain`) derives it from the config")
    if cfg.train.accumulate < 1:
        raise ValueError(f"train.accumulate={cfg.train.accumulate}: must be at least 1")
    info = init_distributed(cfg.train.backend)
    try:
        return _pretrain(cfg, info, should_stop)
    finally:
        close_distributed(info)


def _pretrain(cfg: PretrainConfig, info: ProcessInfo, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    config_dict = asdict(cfg)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = device_for(info)
    amp_dtype = autocast_dtype(cfg.train.precision, device)

    dataset = Dataset.open(cfg.data.root)
    vocab = Vocabulary.load(dataset.root / "vocab.tsv")
    train_urls = dataset.train_urls(cfg.data.subset)
    head_inputs = _embedding_inputs(cfg, dataset, vocab, train_urls, info) if cfg.head.name == "embedding" else {}
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.head, len(vocab), vocab.counts, seed=cfg.train.seed, **head_inputs).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    global_batch = cfg.train.batch_size * info.world_size * cfg.train.accumulate
    optimizers = [build_optimizer(model, cfg.optim, global_batch)]
    sparse_optimizer = build_sparse_optimizer(model, cfg.optim, cfg.head.sparse_lr, global_batch)
    optimizers += [sparse_optimizer] if sparse_optimizer is not None else []
    schedulers = [build_scheduler(opt, cfg.optim, cfg.train.steps) for opt in optimizers]
    sampler = getattr(model.head, "sampler", None)
    state = TrainState()
    tag_samples = TagSampleCounts(len(vocab))  # what the (resampled) stream fed, per tag

    resumed = load_latest(ckpt_dir) if cfg.train.resume else None
    if resumed is not None:
        path, saved = resumed
        model.load_state_dict(saved["model"])
        for key, opt, sched in zip(OPTIMIZER_KEYS, optimizers, schedulers, strict=False):
            opt.load_state_dict(saved[key])
            sched.load_state_dict(saved[key.replace("optimizer", "scheduler")])
        if sampler is not None:
            sampler.load_state_dict(saved["sampler"])
        ranks = saved.get("ranks", [saved["state"]])
        if len(ranks) != info.world_size:
            warnings.warn(f"{path}: written by {len(ranks)} process(es), resumed by {info.world_size}: the data "
                          "order from here on differs from an uninterrupted run", stacklevel=2)
        state.load(ranks[info.rank] if len(ranks) == info.world_size else saved["state"])
        rank_counts = saved.get("tag_samples", [])  # one count vector per rank
        if len(rank_counts) == info.world_size:
            tag_samples.counts = rank_counts[info.rank]
        set_rng_state(saved["rng"])
        if info.is_main:
            print(f"resuming from {path} (step {state.step})", flush=True)

    logger = None
    if info.is_main:
        write_manifest(run_dir, "pretrain", "running", config_dict,
                       inputs={"dataset": str(dataset.root), "train_shards": len(train_urls),
                               "train_samples": dataset.train_samples(cfg.data.subset),
                               "processes": info.world_size, "global_batch": global_batch})
        logger = RunLogger(run_dir, cfg.logging.wandb, config_dict, name=run_dir.name, run_id=state.wandb_id,
                           resume_step=state.step)
        state.wandb_id = logger.run_id
    state.wandb_id = all_gather_objects(info, state.wandb_id)[0]

    ddp, average_sparse_grads = None, None
    forward_model: torch.nn.Module = model
    if info.distributed:
        ddp, average_sparse_grads = wrap_ddp(model, device)
        forward_model = ddp
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)
    train_step = TrainStep(forward_model, optimizers, schedulers, device, amp_dtype, cfg.train.channels_last,
                           sync_context=ddp, on_step_start=getattr(model.head, "draw_negatives", None),
                           after_backward=average_sparse_grads)

    def checkpoint() -> None:
        ranks = all_gather_objects(info, state.as_dict())  # every rank's data position and skip counts
        rank_counts = all_gather_objects(info, tag_samples.counts)  # and what its stream fed, per tag
        if info.is_main:
            payload = {"model": model.state_dict(), "state": state.as_dict(), "ranks": ranks, "rng": rng_state(),
                       "config": config_dict}
            for key, opt, sched in zip(OPTIMIZER_KEYS, optimizers, schedulers, strict=False):
                payload[key] = opt.state_dict()
                payload[key.replace("optimizer", "scheduler")] = sched.state_dict()
            if sampler is not None:
                payload["sampler"] = sampler.state_dict()
            payload["tag_samples"] = rank_counts
            save_checkpoint(ckpt_dir, state.step, payload, cfg.train.keep_last)
            logger.log(TagSampleCounts.summed(rank_counts).log_row(state.step, vocab), mirror=False)
        if info.distributed:
            dist.barrier()  # no rank runs ahead of a checkpoint that is not on disk yet

    def run_eval() -> dict[str, float]:
        row = evaluate(model, dataset.heldout_urls(), vocab, cfg.data.image_size, cfg.train.batch_size,
                       cfg.train.eval_batches, device)
        if logger is not None:
            logger.log({"step": state.step, **row})
        return row

    stream = TaggedImageStream(train_urls, vocab, cfg.train.batch_size, cfg.data.image_size, train=True,
                               seed=cfg.train.seed, min_scale=cfg.data.min_scale,
                               shuffle_buffer=cfg.data.shuffle_buffer, resample_alpha=cfg.data.resample_alpha)
    loader = make_loader(stream, cfg.data.num_workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=cfg.train.steps, initial=state.step, desc=f"pretrain {run_dir.name}", unit="step",
               disable=not (cfg.logging.progress and info.is_main), mininterval=1.0)
    model.train()
    window_start, window_images = time.perf_counter(), 0
    stop_at = min(cfg.train.steps, cfg.train.stop_after or cfg.train.steps)
    stopped_early = False
    while state.step < stop_at and not stopped_early:
        # an epoch is steps_per_epoch optimiser steps of `accumulate` loader batches each
        stream.set_position(state.epoch, state.batch_in_epoch * cfg.train.accumulate)
        batches = iter(loader)
        try:
            while state.batch_in_epoch < cfg.train.steps_per_epoch and state.step < stop_at:
                micro = [next(batches) for _ in range(cfg.train.accumulate)]
                loss = train_step(micro)
                state.step += 1
                state.batch_in_epoch += 1
                for batch in micro:
                    state.images_seen += len(batch.keys)
                    state.skipped.update(batch.skipped)
                    tag_samples.update(batch.tag_ids)
                    window_images += len(batch.keys) * info.world_size
                bar.update()
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / elapsed if elapsed > 0 else 0.0
                    loss_value = mean_over_ranks(info, loss)
                    if logger is not None:
                        logger.log({"step": state.step, "loss": loss_value, "lr": schedulers[0].get_last_lr()[0],
                                    "epoch": state.epoch, "images_per_s": rate,
                                    "images_seen": state.images_seen * info.world_size,
                                    **_skip_row(state.skipped)})
                    bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                if state.batch_in_epoch == cfg.train.steps_per_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                stopped_early = should_stop is not None and _any_rank(info, should_stop())
                if state.step % cfg.train.checkpoint_every == 0 or state.step == stop_at or stopped_early:
                    checkpoint()
                if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and info.is_main:
                    run_eval()
                if state.batch_in_epoch == 0 or stopped_early:
                    break
        finally:
            del batches  # shuts the epoch's workers down
    bar.close()
    if state.step < cfg.train.steps:
        status = "preempted" if stopped_early else "stopped"
        if logger is not None:
            logger.finish({})
            write_manifest(run_dir, "pretrain", status, config_dict, stopped_at=state.step)
        return {"step": state.step, "status": status}
    fed = TagSampleCounts.summed(all_gather_objects(info, tag_samples.counts))
    if not info.is_main:
        return {"step": state.step, "rank": info.rank}

    assert logger is not None
    final = run_eval()
    if head_inputs.get("heldout"):
        zeroshot = evaluate_zeroshot(model, dataset.heldout_urls(), vocab, head_inputs["heldout"],
                                     cfg.data.image_size, cfg.train.batch_size, device)
        logger.log({"step": state.step, **zeroshot})
        final.update(zeroshot)
    fed.write_tsv(run_dir / "tag_samples.tsv", vocab)
    outputs = _export(model, run_dir, vocab)
    summary = {"step": state.step, "images_seen": state.images_seen * info.world_size,
               **_skip_row(state.skipped), **final, "vocab_size": len(vocab),
               "train_samples": dataset.train_samples(cfg.data.subset), "processes": info.world_size,
               "global_batch": global_batch}
    atomic_write_json(run_dir / "summary.json", summary)
    logger.finish(summary)
    write_manifest(run_dir, "pretrain", "done", config_dict, outputs=outputs, summary=summary)
    return summary


def _any_rank(info: ProcessInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (all ranks must stop at the same step)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _embedding_inputs(cfg: PretrainConfig, dataset: Dataset, vocab: Vocabulary, train_urls: list[str],
                      info: ProcessInfo) -> dict[str, Any]:
    """Tag vectors (built or read from the cache; rank 0 first, so the others read its cache) and held-out tags."""
    folders = [cfg.head.vectors_cache or dataset.root / "tag_vectors", Path(cfg.run_dir)]
    if not info.is_main and info.distributed:
        dist.barrier()
    vectors = load_tag_vectors(cfg.head, vocab, train_urls, folders, seed=cfg.train.seed)
    if info.is_main and info.distributed:
        dist.barrier()
    if info.is_main:
        print(f"tag vectors: {vectors.vectors.shape[1]} dimensions, {vectors.sources} (cache {vectors.cache})",
              flush=True)
    heldout = heldout_tags(cfg.head, vocab, dataset.manifest, dataset.root)
    return {"tag_vectors": torch.from_numpy(vectors.vectors), "heldout": heldout}


def _export(model: TaggingModel, run_dir: Path, vocab: Vocabulary) -> dict[str, str]:
    """The trunk (+ the head as `fc`) under torchvision's key names, ready for transfer; an embedding head's
    projection and tag vectors go to embedding.pt beside it."""
    fc = getattr(model.head, "fc", None)
    state = export_torchvision(model.trunk, fc if isinstance(fc, torch.nn.Linear) else None)
    path = atomic_write(run_dir / "trunk.pt", lambda handle: torch.save(state, handle))
    outputs = {"trunk": str(path), "checkpoints": str(run_dir / "checkpoints"),
               "metrics": str(run_dir / "metrics.jsonl")}
    export_head = getattr(model.head, "export", None)
    if export_head is not None:
        outputs["embedding"] = str(export_head(run_dir, vocab.tags))
    return outputs

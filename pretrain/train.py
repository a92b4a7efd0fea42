"""Pretraining on noisy tags: the training loop, its checkpoints, and its resume.

`pretrain(cfg)` is the function a job runs. Given the same config it produces the same weights bit for bit on
the CPU, whether it runs straight through or is stopped and resumed from any of its checkpoints: the
checkpoint holds model, optimiser, scheduler, every RNG state, the data position (epoch, batch) and the
cumulative skip counts, and the loader can rebuild any epoch from (seed, epoch).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pretrain.atomic import atomic_write, atomic_write_json
from pretrain.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from pretrain.config import PretrainConfig
from pretrain.evaluate import evaluate
from pretrain.images import to_float
from pretrain.loader import SKIP_REASONS, TaggedImageStream, make_loader
from pretrain.models import TaggingModel, build_model, export_torchvision
from pretrain.optim import build_optimizer, build_scheduler
from pretrain.resample import TagSampleCounts
from pretrain.runlog import RunLogger
from pretrain.shards import Dataset
from pretrain.stage import write_manifest
from pretrain.vocab import Vocabulary


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


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _skip_row(skipped: Counter[str]) -> dict[str, int]:
    return {f"skipped/{reason}": int(skipped.get(reason, 0)) for reason in SKIP_REASONS}


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train a tagging model as `cfg` says, in `cfg.run_dir`; returns the run's summary."""
    if not cfg.run_dir:
        raise ValueError("run_dir is empty: the front door (`webly pretrain`) derives it from the config")
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    config_dict = asdict(cfg)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = _device()

    dataset = Dataset.open(cfg.data.root)
    vocab = Vocabulary.load(dataset.root / "vocab.tsv")
    train_urls = dataset.train_urls(cfg.data.subset)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.head, len(vocab)).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    state = TrainState()
    tag_samples = TagSampleCounts(len(vocab))  # what the (resampled) stream fed, per tag

    resumed = load_latest(ckpt_dir) if cfg.train.resume else None
    if resumed is not None:
        path, saved = resumed
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.load(saved["state"])
        if "tag_samples" in saved:
            tag_samples.counts = saved["tag_samples"]
        set_rng_state(saved["rng"])
        print(f"resuming from {path} (step {state.step})", flush=True)

    write_manifest(run_dir, "pretrain", "running", config_dict,
                   inputs={"dataset": str(dataset.root), "train_shards": len(train_urls),
                           "train_samples": dataset.train_samples(cfg.data.subset)})
    logger = RunLogger(run_dir, cfg.logging.wandb, config_dict, name=run_dir.name, run_id=state.wandb_id,
                       resume_step=state.step)
    state.wandb_id = logger.run_id

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, state.step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "state": state.as_dict(), "rng": rng_state(),
            "config": config_dict, "tag_samples": tag_samples.counts,
        }, cfg.train.keep_last)
        logger.log(tag_samples.log_row(state.step, vocab), mirror=False)

    def run_eval() -> dict[str, float]:
        row = evaluate(model, dataset.heldout_urls(), vocab, cfg.data.image_size, cfg.train.batch_size,
                       cfg.train.eval_batches, device)
        logger.log({"step": state.step, **row})
        return row

    stream = TaggedImageStream(train_urls, vocab, cfg.train.batch_size, cfg.data.image_size, train=True,
                               seed=cfg.train.seed, min_scale=cfg.data.min_scale,
                               shuffle_buffer=cfg.data.shuffle_buffer, resample_alpha=cfg.data.resample_alpha)
    loader = make_loader(stream, cfg.data.num_workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=cfg.train.steps, initial=state.step, desc=f"pretrain {run_dir.name}", unit="step",
               disable=not cfg.logging.progress, mininterval=1.0)
    model.train()
    window_start, window_images = time.perf_counter(), 0
    stop_at = min(cfg.train.steps, cfg.train.stop_after or cfg.train.steps)
    while state.step < stop_at:
        stream.set_position(state.epoch, state.batch_in_epoch)
        batches = iter(loader)
        try:
            while state.batch_in_epoch < cfg.train.steps_per_epoch and state.step < stop_at:
                batch = next(batches)
                images = to_float(batch.images.to(device, non_blocking=True))
                loss = model.head.loss(model(images), batch.tag_ids.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                state.images_seen += len(batch.keys)
                state.skipped.update(batch.skipped)
                tag_samples.update(batch.tag_ids)
                window_images += len(batch.keys)
                bar.update()
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / elapsed if elapsed > 0 else 0.0
                    loss_value = loss.item()
                    logger.log({"step": state.step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                                "epoch": state.epoch, "images_per_s": rate, "images_seen": state.images_seen,
                                **_skip_row(state.skipped)})
                    bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                if state.batch_in_epoch == cfg.train.steps_per_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if state.step % cfg.train.checkpoint_every == 0 or state.step == stop_at:
                    checkpoint()
                if cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
                    run_eval()
                if state.batch_in_epoch == 0:
                    break
        finally:
            del batches  # shuts the epoch's workers down
    bar.close()
    if state.step < cfg.train.steps:
        logger.finish({})
        write_manifest(run_dir, "pretrain", "stopped", config_dict, stopped_at=state.step)
        return {"step": state.step, "status": "stopped"}

    final = run_eval()
    tag_samples.write_tsv(run_dir / "tag_samples.tsv", vocab)
    outputs = _export(model, run_dir)
    summary = {"step": state.step, "images_seen": state.images_seen, **_skip_row(state.skipped), **final,
               "vocab_size": len(vocab), "train_samples": dataset.train_samples(cfg.data.subset)}
    atomic_write_json(run_dir / "summary.json", summary)
    logger.finish(summary)
    write_manifest(run_dir, "pretrain", "done", config_dict, outputs=outputs, summary=summary)
    return summary


def _export(model: TaggingModel, run_dir: Path) -> dict[str, str]:
    """The trunk (+ the head as `fc`) under torchvision's key names, ready for transfer."""
    fc = getattr(model.head, "fc", None)
    state = export_torchvision(model.trunk, fc if isinstance(fc, torch.nn.Linear) else None)
    path = atomic_write(run_dir / "trunk.pt", lambda handle: torch.save(state, handle))
    return {"trunk": str(path), "checkpoints": str(run_dir / "checkpoints"), "metrics": str(run_dir / "metrics.jsonl")}

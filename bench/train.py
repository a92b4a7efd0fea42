"""Training images/s of our step against a timm training loop, same model, same shards, same process (CPU).

    .venv/bin/python bench/train.py --data DATASET_ROOT [--steps 30] [--batch 32] [--size 56] [--threads 2]

timm's `train.py` is a script of timm's repository (not in the pip package) and its data pipeline reads image
folders or its own webdataset layout, not our shards. So both sides read the same batches from our loader
(pretrain.loader, uint8 crops, main process) and train the same model (our tiny ResNet-10 trunk + 1/k
softmax head). Ours: pretrain.step.TrainStep with build_optimizer/build_scheduler. timm's: the body of
train.py's `train_one_epoch` with timm's own pieces: `create_optimizer_v2("sgd", momentum, nesterov)`,
`SoftTargetCrossEntropy` on the 1/k targets, `CosineLRScheduler.step_update` per step. timm downloads nothing
(no pretrained weights are asked for). Install: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import time

import torch

from pretrain.config import HeadConfig, ModelConfig, OptimConfig
from pretrain.heads import multi_hot
from pretrain.images import to_float
from pretrain.loader import TaggedImageStream
from pretrain.models import build_model
from pretrain.optim import build_optimizer, build_scheduler
from pretrain.shards import Dataset
from pretrain.step import TrainStep
from pretrain.vocab import Vocabulary


def _batches(root: str, batch: int, size: int, count: int) -> list:
    dataset = Dataset.open(root)
    vocab = Vocabulary.load(dataset.root / "vocab.tsv")
    stream = TaggedImageStream(dataset.train_urls(0), vocab, batch, size, train=True, seed=0)
    batches = []
    for item in stream:
        batches.append(item)
        if len(batches) == count:
            return batches, len(vocab)
    raise ValueError(f"{root}: fewer than {count} batches")


def ours(batches: list, num_tags: int) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig("tiny", 10, 16), HeadConfig("softmax"), num_tags)
    cfg = OptimConfig(lr=0.1, warmup_steps=5)
    optimizer = build_optimizer(model, cfg)
    step = TrainStep(model, [optimizer], [build_scheduler(optimizer, cfg, len(batches))], torch.device("cpu"))
    step(batches[:1])  # warm-up
    started = time.perf_counter()
    for batch in batches[1:]:
        step([batch])
    return sum(len(b.keys) for b in batches[1:]) / (time.perf_counter() - started)


def timm_loop(batches: list, num_tags: int) -> float:
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(0)
    model = build_model(ModelConfig("tiny", 10, 16), HeadConfig("softmax"), num_tags)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9, nesterov=True)
    scheduler = CosineLRScheduler(optimizer, t_initial=len(batches), warmup_t=5, t_in_epochs=False)
    criterion = SoftTargetCrossEntropy()

    def step(index: int, batch) -> None:  # train_one_epoch's body, without AMP (CPU) and logging
        images = to_float(batch.images)
        target = multi_hot(batch.tag_ids, num_tags)
        target = target / target.sum(1, keepdim=True).clamp_min(1)
        loss = criterion(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step_update(num_updates=index + 1)

    step(0, batches[0])
    started = time.perf_counter()
    for index, batch in enumerate(batches[1:], start=1):
        step(index, batch)
    return sum(len(b.keys) for b in batches[1:]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset root (webly synth): shards/, vocab.tsv")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternate ours/timm this many times")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, num_tags = _batches(args.data, args.batch, args.size, args.steps + 1)
    for round_index in range(args.rounds):  # alternate, so that load changes hit both sides
        mine, theirs = ours(batches, num_tags), timm_loop(batches, num_tags)
        print(f"round {round_index}: ours {mine:.0f} images/s, timm loop {theirs:.0f} images/s, "
              f"ratio {mine / theirs:.2f} (V={num_tags}, batch {args.batch}, {args.size} px, "
              f"{args.threads} threads)", flush=True)


if __name__ == "__main__":
    main()

"""Time one pretraining step (forward, backward, SGD) of the CPU trunks on random data.

    .venv/bin/python bench/pretrain_step.py [--threads 1] [--size 56] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from pretrain.config import HeadConfig, ModelConfig
from pretrain.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tags", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, depth in (("tiny", 10), ("tiny18", 18)):
        model = build_model(ModelConfig(name, depth, 16), HeadConfig(), args.tags)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        images = torch.randn(args.batch, 3, args.size, args.size)
        tag_ids = torch.randint(0, args.tags, (args.batch, 4))
        for step in range(args.steps + 3):
            if step == 3:  # the first steps warm up allocators and caches
                started = time.perf_counter()
            loss = model.head.loss(model(images), tag_ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        per_step = (time.perf_counter() - started) / args.steps
        print(f"{name:7s} {args.size} px batch {args.batch} threads {args.threads}: {per_step * 1000:.0f} ms/step, "
              f"{args.batch / per_step:.0f} images/s")


if __name__ == "__main__":
    main()

"""Training images/s and MFU of ResNet-50/101/152 at 224 px on one GPU: bf16 autocast, channels_last, our step.

    python bench/gpu_step.py [--depths 50 101 152] [--batch 128] [--tags 1000] [--compile]

The step is pretrain.step.TrainStep (the trainer's own) on random uint8 images already on the GPU (the loader is
not measured), softmax head over `--tags` tags, SGD + Nesterov momentum. MFU = 3 x forward FLOPs x images/s /
peak bf16 dense FLOP/s, with FLOPs = 2 x MACs (ResNet-50 forward 8.22 GFLOPs, 101: 15.66, 152: 23.12; a
training step ~ 3 x forward) and the H100 SXM peak of 989 TFLOP/s (pass --peak-tflops for another GPU).
"""

from __future__ import annotations

import argparse
import time

import torch

from pretrain.config import HeadConfig, ModelConfig, OptimConfig
from pretrain.models import build_model
from pretrain.optim import build_optimizer, build_scheduler
from pretrain.step import TrainStep

FORWARD_GFLOPS = {50: 8.22, 101: 15.66, 152: 23.12}


class _Batch:  # what TrainStep reads from a loader batch
    def __init__(self, images: torch.Tensor, tag_ids: torch.Tensor) -> None:
        self.images, self.tag_ids = images, tag_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101, 152])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no autocast, no channels_last (the baseline)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    for depth in args.depths:
        model = build_model(ModelConfig(f"resnet{depth}", depth, 64), HeadConfig("softmax"), args.tags).to(device)
        if not args.fp32:
            model = model.to(memory_format=torch.channels_last)
        optim_cfg = OptimConfig(lr=0.1)
        optimizer = build_optimizer(model, optim_cfg)
        scheduler = build_scheduler(optimizer, optim_cfg, 10_000)
        forward = torch.compile(model) if args.compile else model
        step = TrainStep(forward, [optimizer], [scheduler], device, None if args.fp32 else torch.bfloat16,
                         channels_last=not args.fp32)
        batch = _Batch(torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8, device=device),
                       torch.randint(0, args.tags, (args.batch, 3), device=device))
        for _ in range(8):  # warm-up: cudnn autotuning, compilation
            step([batch])
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step([batch])
        loss.item()
        torch.cuda.synchronize()
        rate = args.batch * args.steps / (time.perf_counter() - started)
        mfu = 3 * FORWARD_GFLOPS[depth] * 1e9 * rate / (args.peak_tflops * 1e12)
        mode = "fp32" if args.fp32 else "bf16+channels_last" + ("+compile" if args.compile else "")
        print(f"ResNet-{depth} 224px batch {args.batch} {mode}: {rate:.0f} images/s, MFU {100 * mfu:.1f}% "
              f"(peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)
        del model, optimizer, step, forward
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()

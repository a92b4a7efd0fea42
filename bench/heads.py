"""Time and peak memory of one training step of each head (full softmax, sigmoid, sampled softmax), CPU.

    .venv/bin/python bench/heads.py [--tags 10000 100000 1000000]
                                    [--heads softmax sigmoid sampled_softmax sampled_softmax:bfloat16]
                                    [--batch 256] [--dim 2048] [--sampled 8192] [--threads 2]

A step is what the trainer does for the head: pooled features (B x D, random, with a gradient flowing back as
into a trunk) -> loss -> backward -> optimiser step, with the project's optimisers (SGD + Nesterov momentum on a
dense head, stateless row-wise SGD on the sampled head's sparse rows). Each (head, V) runs in a fresh process so
that its peak resident memory (ru_maxrss) is its own; "head memory" is that peak minus the process's resident
memory before the head was built (weights + gradients + optimiser state + the step's temporaries).
`sampled_softmax:bfloat16` is the sampled head with its tag table stored in bf16 (`head.table_dtype`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(head_spec: str, num_tags: int, batch: int, dim: int, sampled: int, steps: int, threads: int) -> dict:
    """Run in a fresh process: one warm-up step, then `steps` timed ones."""
    import torch

    from pretrain.config import HeadConfig, OptimConfig
    from pretrain.heads import build_head
    from pretrain.optim import build_optimizer, build_sparse_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    features = torch.randn(batch, dim, requires_grad=True)
    tag_ids = torch.randint(0, num_tags, (batch, 3))
    tag_ids[::2, 2] = -1
    head_name, _, table_dtype = head_spec.partition(":")
    base = _rss_mb()
    head = build_head(HeadConfig(head_name, num_sampled=sampled, table_dtype=table_dtype or "float32"), dim,
                      num_tags)
    optim_cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-4)
    optimizers = [build_optimizer(head, optim_cfg)]
    sparse = build_sparse_optimizer(head, optim_cfg)
    optimizers += [sparse] if sparse is not None else []
    optimizers = [opt for opt in optimizers if any(g["params"] for g in opt.param_groups)]
    draw = getattr(head, "draw_negatives", None)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        features.grad = None
        if draw is not None:
            draw()
        head.training_loss(features, tag_ids).backward()
        for opt in optimizers:
            opt.step()
        if step > 0:  # the first step allocates the optimiser state
            times.append(time.perf_counter() - started)
    peak = _peak_mb()
    return {"head": head_spec, "tags": num_tags, "batch": batch, "dim": dim,
            "sampled": sampled if head_name == "sampled_softmax" else 0,
            "ms_per_step": 1000 * sorted(times)[len(times) // 2], "steps": steps, "threads": threads,
            "peak_rss_mb": peak, "head_mb": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tags", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--heads", nargs="+", default=["softmax", "sigmoid", "sampled_softmax"],
                        help="head names; NAME:bfloat16 stores the sampled head's table in bf16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--sampled", type=int, default=8192, help="negatives per batch of the sampled head")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.heads[0], args.tags[0], args.batch, args.dim, args.sampled, args.steps,
                                 args.threads)))
        return
    rows = []
    for num_tags in args.tags:
        for head in args.heads:
            command = [sys.executable, __file__, "--worker", "--heads", head, "--tags", str(num_tags),
                       "--batch", str(args.batch), "--dim", str(args.dim), "--sampled", str(args.sampled),
                       "--steps", str(args.steps), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:  # e.g. killed for memory: say so and go on
                print(f"{head} V={num_tags}: failed (exit {done.returncode}) {done.stderr.strip()[-300:]}",
                      flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{head:25s} V={num_tags:>9,d} B={args.batch} D={args.dim} S={row['sampled']:>5d}: "
                  f"{row['ms_per_step']:9.1f} ms/step  peak RSS {row['peak_rss_mb']:8.0f} MB  "
                  f"head {row['head_mb']:8.0f} MB", flush=True)
    by_key = {(r["head"], r["tags"]): r for r in rows}
    for num_tags in args.tags:
        full = by_key.get(("softmax", num_tags))
        for head in args.heads:
            sampled = by_key.get((head, num_tags))
            if full and sampled and head.startswith("sampled_softmax"):
                print(f"V={num_tags:,d}: {head} vs full softmax: {full['ms_per_step'] / sampled['ms_per_step']:.1f}x "
                      f"faster, peak RSS {sampled['peak_rss_mb'] / full['peak_rss_mb']:.3f}x, "
                      f"head memory {sampled['head_mb'] / full['head_mb']:.3f}x")


if __name__ == "__main__":
    main()

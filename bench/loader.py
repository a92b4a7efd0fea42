"""Loader throughput per worker, in one run, on the same generated photo-like JPEGs at 500x375 and 1600x1200:

  (a) ours: `TaggedImageStream` + `make_loader` (1 worker): DCT-scaled decode, crop+resize in one PIL call,
      uint8 batches;
  (b) the plain webdataset + torchvision pipeline a user would write (1 worker): `.decode("pil")` at full size,
      RandomResizedCrop, flip, ToTensor, Normalize;
  (c) torchvision ImageFolder with the same transforms (1 worker);
  (d) the single-thread limit: our decode + crop on in-memory bytes in a bare loop (no tar, no batching).

    .venv/bin/python bench/loader.py            # prints a table and a JSON line; see BENCHMARKS.md

Each pipeline runs `--rounds` times in turn and its best round counts; images/s is measured from the end of
the warm-up batches. Two clocks: wall time, and the CPU time (user + system) of this process and all its
children (the loader workers) over the same window. On a shared machine the wall clock of a one-worker
pipeline swings with the other load; images per CPU-second does not, and it is what "per worker" means: the
throughput one core gives. All crops are 224 px with scale (0.08, 1).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import psutil
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets
from torchvision import transforms as T

from pretrain.images import MEAN, STD, decode_rgb, random_resized_crop
from pretrain.loader import TaggedImageStream, make_loader
from pretrain.shards import write_shard
from pretrain.vocab import Vocabulary

SIZES = ((500, 375), (1600, 1200))
CROP = 224
MIN_SCALE = 0.08
TAGS = [f"tag{i}" for i in range(20)]
Rate = tuple[float, float]  # images per wall second, images per CPU second


def photo_like(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A JPEG with the statistics of a photo: smooth regions from upsampled noise, edges, and sensor grain."""
    coarse = rng.integers(0, 256, size=(height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    for _ in range(6):  # a few hard-edged objects
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        base[y0 : y0 + height // 4, x0 : x0 + width // 5] = rng.integers(0, 256, size=3)
    grain = rng.normal(0, 6, size=base.shape)
    pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_inputs(folder: Path, images: list[bytes], per_shard: int) -> tuple[list[str], Path]:
    """The same images as webdataset shards (with a tag sidecar) and as an ImageFolder tree."""
    urls = []
    for s in range(0, len(images), per_shard):
        samples = [{"__key__": f"{i:06d}", "jpg": images[i], "json": {"tags": [TAGS[i % len(TAGS)]]}}
                   for i in range(s, min(s + per_shard, len(images)))]
        urls.append(str(write_shard(folder / f"train-{s // per_shard:06d}.tar", samples).name))
    tree = folder / "imagefolder"
    for i, data in enumerate(images):
        (tree / TAGS[i % len(TAGS)]).mkdir(parents=True, exist_ok=True)
        (tree / TAGS[i % len(TAGS)] / f"{i:06d}.jpg").write_bytes(data)
    return [str(folder / u) for u in urls], tree


def torchvision_transform() -> T.Compose:
    return T.Compose([T.RandomResizedCrop(CROP, scale=(MIN_SCALE, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])])


def multi_hot(meta: dict) -> torch.Tensor:
    target = torch.zeros(len(TAGS))
    target[[TAGS.index(t) for t in meta["tags"]]] = 1
    return target


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) so far of this process and of each of its live children, by pid."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the end (new ones from zero)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def timed(batches: Iterable, images_of: Callable[[object], int], warmup: int, measure: int) -> Rate:
    """(images per wall second, images per CPU second) over `measure` batches after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start, cpu_start, count = time.perf_counter(), cpu_seconds(), 0
    for _ in range(measure):
        count += images_of(next(iterator))
    cpu = cpu_used(cpu_start, cpu_seconds())
    return count / (time.perf_counter() - start), count / cpu


def ours(urls: list[str], batch: int, warmup: int, measure: int) -> Rate:
    vocab = Vocabulary(TAGS, [1] * len(TAGS))
    stream = TaggedImageStream(urls, vocab, batch, CROP, train=True, seed=0, min_scale=MIN_SCALE, shuffle_buffer=256)
    return timed(make_loader(stream, num_workers=1), lambda b: len(b.keys), warmup, measure)


def plain_webdataset(urls: list[str], batch: int, warmup: int, measure: int) -> Rate:
    dataset = (wds.WebDataset(urls, resampled=True, shardshuffle=False).shuffle(256).decode("pil")
               .to_tuple("jpg", "json").map_tuple(torchvision_transform(), multi_hot))
    loader = DataLoader(dataset, batch_size=batch, num_workers=1)
    return timed(loader, lambda b: len(b[0]), warmup, measure)


def image_folder(tree: Path, batch: int, warmup: int, measure: int) -> Rate:
    dataset = datasets.ImageFolder(str(tree), transform=torchvision_transform())
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (warmup + measure + 2))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=1)
    return timed(loader, lambda b: len(b[0]), warmup, measure)


def decode_crop_limit(images: list[bytes], count: int) -> Rate:
    """Our decode path alone, one thread, bytes already in memory."""
    rng = random.Random(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(count):
        random_resized_crop(decode_rgb(images[i % len(images)], 2 * CROP), CROP, rng, MIN_SCALE)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160, help="distinct images per size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="batches before the clock starts")
    parser.add_argument("--measure", type=int, default=15, help="batches timed")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # (d) is one thread; DataLoader workers set this themselves

    rng = np.random.default_rng(0)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        for width, height in SIZES:
            size = f"{width}x{height}"
            images = [photo_like(width, height, rng) for _ in range(args.images)]
            urls, tree = write_inputs(Path(tmp) / size, images, per_shard=32)
            runs: dict[str, Callable[[], Rate]] = {
                "d": lambda images=images: decode_crop_limit(images, args.batch * args.measure),
                "a": lambda urls=urls: ours(urls, args.batch, args.warmup, args.measure),
                "b": lambda urls=urls: plain_webdataset(urls, args.batch, args.warmup, args.measure),
                "c": lambda tree=tree: image_folder(tree, args.batch, args.warmup, args.measure),
            }
            wall = {name: 0.0 for name in runs}
            cpu = {name: 0.0 for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    w, c = run()
                    wall[name], cpu[name] = max(wall[name], w), max(cpu[name], c)
            results[size] = {"wall": wall, "cpu": cpu, "mean_jpeg_kb": sum(map(len, images)) / len(images) / 1024}
            print(f"{size}: wall {wall}, cpu {cpu}", flush=True)

    print(f"\nimages/s per worker (best of {args.rounds} rounds), crop {CROP}, batch {args.batch}")
    print("| size | clock | (a) ours | (b) webdataset + torchvision | (c) ImageFolder | (d) decode+crop limit | "
          "a/d | a/b | a/c |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, r in results.items():
        for clock in ("cpu", "wall"):
            a, b, c, d = (r[clock][k] for k in "abcd")
            label = "per CPU-second" if clock == "cpu" else "per wall second"
            print(f"| {size} | {label} | {a:.0f} | {b:.0f} | {c:.0f} | {d:.0f} | {a / d:.2f} | {a / b:.2f} | "
                  f"{a / c:.2f} |")
    machine = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
               "load_avg": os.getloadavg()}
    print(json.dumps({"results": results, "machine": machine}))


if __name__ == "__main__":
    main()

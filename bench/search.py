"""Search quality of the embedding head on a synthetic web: text queries by concept name, and reverse search.

    .venv/bin/python bench/search.py                                   # the integration test's fixture
    .venv/bin/python bench/search.py --images 1200 --steps 600 --lr 0.1

Writes a synthetic web (cached in --work by its size), pretrains `head=embedding` on it with the tiny model,
indexes the corpus as `webly search` does and queries every concept by its name. A hit is a result image whose
synthweb metadata holds the concept (drawn, tagged or not); the measures are `transfer.search_quality`'s, as in
the integration test. Prints P@10 per concept (held-out concepts are queried zero-shot), the mean over the
trained concepts with at least --min-images images (the issue's criterion), the mean over the held-out ones
beside a random ranking's, zero-shot F1@5 on the held-out tags beside chance, and the training time. Then
reverse search: --reverse corpus images, each edited four ways (transfer.edits), searched as new images; prints
how often the original comes first.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from pretrain.atomic import read_json
from pretrain.config import DataConfig, ShardsConfig, SynthConfig
from pretrain.synthweb.dataset import write_synthweb
from pretrain.train import pretrain
from transfer.embedder import Embedder
from transfer.search import SearchIndex
from transfer.search_quality import concept_images, drawn_concepts, reverse_firsts, text_precision
from webly.config import compose
from webly.jobs import pretrain_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2400, help="training images of the synthetic web")
    parser.add_argument("--concepts", type=int, default=20)
    parser.add_argument("--size", type=int, default=48, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--heldout-tags", type=int, default=6, help="concepts held out (queried zero-shot)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the corpus is always seed 0)")
    parser.add_argument("--min-images", type=int, default=20, help="concepts rarer than this are not averaged")
    parser.add_argument("--reverse", type=int, default=100, help="corpus images edited for reverse search")
    parser.add_argument("--work", default="/tmp/webly-bench-text-search")
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. head.loss=hinge")
    args = parser.parse_args()

    work = Path(args.work)
    data = work / f"data-{args.images}x{args.size}-c{args.concepts}"
    if not (data / "manifest.json").is_file():
        synth = SynthConfig(num_images=args.images, heldout_images=200, image_size=args.size,
                            num_concepts=args.concepts)
        write_synthweb(DataConfig(root=str(data), synth=synth, shards=ShardsConfig(samples_per_shard=150)),
                       processes=2)
    tag = f"s{args.steps}-b{args.batch}-lr{args.lr}-seed{args.seed}" + "".join(f"-{o}" for o in args.overrides)
    tag = re.sub(r"[^\w.-]+", "_", tag)  # an override's `=` would end the work_dir override
    cfg = compose([f"data.root={data}", f"work_dir={work / 'runs' / tag}", "logging.wandb.mode=disabled",
                   "logging.progress=false", "data.num_workers=0", f"data.image_size={args.size}", "head=embedding",
                   f"head.zeroshot_count={args.heldout_tags}", f"train.batch_size={args.batch}",
                   f"train.steps={args.steps}", "train.steps_per_epoch=50", f"train.checkpoint_every={args.steps}",
                   "train.log_every=50", "train.threads=2", f"train.seed={args.seed}", f"optim.lr={args.lr}",
                   "optim.warmup_steps=4", "train.resume=false", *args.overrides])
    stage = pretrain_stage(cfg)
    started = time.perf_counter()
    summary = pretrain(stage)
    train_seconds = time.perf_counter() - started
    embedder = Embedder.from_run(stage.run_dir)
    index = SearchIndex.build(embedder, data, work / "runs" / tag / "index", progress=False)

    drawn = drawn_concepts(data)
    heldout = {embedder.tags[i] for i in embedder.heldout}
    concepts = read_json(data / "manifest.json")["synth"]["concepts"]
    images = concept_images(drawn)
    trained, zero_shot, zero_shot_chance = [], [], []
    print(f"{'concept':>12} {'images':>6}  {'':4}  P@10  drawn as")
    for concept in sorted(concepts, key=lambda c: -images[c["index"]]):
        if concept["name"] not in embedder.index:
            continue
        precision = text_precision(index, concept["name"], concept["index"], drawn)
        held = concept["name"] in heldout
        if held:
            zero_shot.append(precision)
            zero_shot_chance.append(images[concept["index"]] / len(drawn))  # P@10 of a random ranking
        elif images[concept["index"]] >= args.min_images:
            trained.append(precision)
        print(f"{concept['name']:>12} {images[concept['index']]:6d}  {'HELD' if held else '':4}  {precision:.1f}   "
              f"{concept['colour']} {concept['shape']} {concept['texture']}")
    print(f"\n{args.images} images x {args.size} px, {args.steps} steps of {args.batch} at lr {args.lr}, "
          f"seed {args.seed}: trained in {train_seconds:.0f} s")
    print(f"text P@10, trained concepts with >= {args.min_images} images: mean {np.mean(trained):.3f}, "
          f"min {min(trained):.1f} (n={len(trained)}); held-out concepts, zero-shot: mean {np.mean(zero_shot):.3f} "
          f"(random ranking {np.mean(zero_shot_chance):.3f})")
    print(f"zero-shot F1@5 on the {summary['zeroshot/tags']} tags of the held-out concepts: "
          f"{summary['zeroshot/f1_at_5']:.3f} (chance {summary['zeroshot/chance_f1_at_5']:.3f})")
    if args.reverse:
        keys = index.keys[:: max(1, len(index.keys) // args.reverse)][: args.reverse]
        firsts = reverse_firsts(index, data, keys)
        print(f"reverse search, original first: {sum(firsts.values())}/{len(keys) * len(firsts)} ("
              + ", ".join(f"{edit} {found}/{len(keys)}" for edit, found in firsts.items()) + ")")


if __name__ == "__main__":
    main()

"""Search quality of the embedding head on a synthetic web: text queries by concept name, and reverse search.

    .venv/bin/python bench/search.py                                   # the integration test's fixture
    .venv/bin/python bench/search.py --images 1200 --steps 600 --lr 0.1

Writes a synthetic web (cached in --work by its size), pretrains `head=embedding` on it with the tiny model,
indexes the corpus as `webly search` does and queries every concept by its name. A hit is a result image whose
synthweb metadata holds the concept (drawn, tagged or not). Prints P@10 per concept (held-out concepts are
queried zero-shot), the mean over the trained concepts with at least --min-images images (the issue's
criterion), zero-shot F1@5 on the held-out tags beside chance, and the training time. Then reverse search:
--reverse corpus images, each edited four ways (transfer.edits: crop, jpeg, recolour, resize), searched as new
images; prints how often the original comes first.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pretrain.atomic import read_json
from pretrain.config import DataConfig, ShardsConfig, SynthConfig
from pretrain.shards import Dataset
from pretrain.synthweb.dataset import write_synthweb
from pretrain.train import pretrain
from transfer.edits import apply_edit
from transfer.embedder import Embedder
from transfer.search import SearchIndex, fetch_samples
from webly.config import compose
from webly.jobs import pretrain_stage


def corpus_concepts(root: Path) -> dict[str, set[int]]:
    """{training key: the concept indices drawn in the image} from the shards' synthweb metadata."""
    samples = wds.tarfile_to_samples()({"url": u} for u in Dataset.open(root).train_urls())
    return {s["__key__"]: set(json.loads(s["json"])["meta"]["concepts"]) for s in samples}


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
    started = time.perf_counter()
    summary = pretrain(pretrain_stage(cfg))
    train_seconds = time.perf_counter() - started
    embedder = Embedder.from_run(pretrain_stage(cfg).run_dir)
    index = SearchIndex.build(embedder, data, work / "runs" / tag / "index", progress=False)

    present = corpus_concepts(data)
    heldout = {embedder.tags[i] for i in embedder.heldout}
    concepts = read_json(data / "manifest.json")["synth"]["concepts"]
    images = {c["index"]: sum(c["index"] in found for found in present.values()) for c in concepts}
    trained, zero_shot = [], []
    print(f"{'concept':>12} {'images':>6}  {'':4}  P@10  drawn as")
    for concept in sorted(concepts, key=lambda c: -images[c["index"]]):
        if concept["name"] not in embedder.index:
            continue
        hits = index.search_text([concept["name"]], 10)
        precision = float(np.mean([concept["index"] in present[h["key"]] for h in hits]))
        held = concept["name"] in heldout
        if held:
            zero_shot.append(precision)
        elif images[concept["index"]] >= args.min_images:
            trained.append(precision)
        print(f"{concept['name']:>12} {images[concept['index']]:6d}  {'HELD' if held else '':4}  {precision:.1f}   "
              f"{concept['colour']} {concept['shape']} {concept['texture']}")
    print(f"\n{args.images} images x {args.size} px, {args.steps} steps of {args.batch} at lr {args.lr}, "
          f"seed {args.seed}: trained in {train_seconds:.0f} s")
    print(f"text P@10, trained concepts with >= {args.min_images} images: mean {np.mean(trained):.3f}, "
          f"min {min(trained):.1f} (n={len(trained)}); held-out concepts, zero-shot: mean {np.mean(zero_shot):.3f}")
    print(f"zero-shot F1@5 on the {summary['zeroshot/tags']} tags of the held-out concepts: "
          f"{summary['zeroshot/f1_at_5']:.3f} (chance {summary['zeroshot/chance_f1_at_5']:.3f})")
    if args.reverse:
        print(reverse_search(index, data, args.reverse))


EDITS = ("crop", "jpeg", "recolour", "resize")


def reverse_search(index: SearchIndex, data: Path, count: int) -> str:
    """How often an edited copy of a corpus image, searched as a new image, finds its original first."""
    keys = index.keys[:: max(1, len(index.keys) // count)][:count]
    samples = fetch_samples(data, keys)
    first = dict.fromkeys(EDITS, 0)
    for n, key in enumerate(keys):
        original = Image.open(io.BytesIO(samples[key]["image"])).convert("RGB")
        for edit in EDITS:
            copy = apply_edit(original, edit, np.random.default_rng([n, 7])).image
            encoded = io.BytesIO()
            copy.save(encoded, format="PNG")
            first[edit] += index.search_images([("copy", encoded.getvalue())], 1)[0]["key"] == key
    per_edit = ", ".join(f"{edit} {found}/{len(keys)}" for edit, found in first.items())
    return f"reverse search, original first: {sum(first.values())}/{len(keys) * len(EDITS)} ({per_edit})"


if __name__ == "__main__":
    main()

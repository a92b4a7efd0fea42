"""The real img2dataset on local file:// URLs -> `webly shards data.shards.source=img2dataset` -> a few steps.

img2dataset writes its shards (`.jpg` + `.txt` caption + `.json`); webly indexes them where they are and
pretrains on them as they are, tags taken from the captions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.shards import Dataset
from pretrain.vocab import Vocabulary
from tests.conftest import tiny_config
from webly.cli import main
from webly.jobs import pretrain_job

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHAPES = ("square", "stripe")


def make_url_list(tmp_path: Path, count: int = 40) -> Path:
    """`count` photo-like JPEGs (a coloured shape on noise), and a TSV of their file:// URLs and captions."""
    images = tmp_path / "web"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = ["url\tcaption"]
    for i in range(count):
        colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
        pixels = rng.integers(0, 90, size=(96, 128, 3), dtype=np.uint8)
        if shape == "square":
            pixels[24:72, 40:88] = COLOURS[colour]
        else:
            pixels[40:56, :] = COLOURS[colour]
        path = images / f"img{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        rows.append(f"{path.resolve().as_uri()}\t{colour}, {shape}, Photo")
    rows.append(f"{(images / 'missing.jpg').resolve().as_uri()}\tred, square")  # a failed download
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return url_list


def run_img2dataset(url_list: Path, output: Path) -> None:
    """img2dataset's own command line, as a user runs it (resize_mode=no: 1.25.4 resizes with an albumentations
    function that albumentations 2 removed; the loader decodes large JPEGs at reduced size anyway)."""
    cli = Path(sys.executable).with_name("img2dataset")
    subprocess.run(
        [str(cli), f"--url_list={url_list}", "--input_format=tsv", "--url_col=url", "--caption_col=caption",
         "--output_format=webdataset", f"--output_folder={output}", "--processes_count=1", "--thread_count=4",
         "--resize_mode=no", "--number_sample_per_shard=10", "--enable_wandb=False",
         "--distributor=multiprocessing"],
        check=True, capture_output=True, timeout=300,
    )


def test_pretrain_on_img2dataset_output(tmp_path: Path) -> None:
    output = tmp_path / "crawl"
    run_img2dataset(make_url_list(tmp_path), output)
    tars = sorted(output.glob("*.tar"))
    assert len(tars) == 5  # 41 URLs in shards of 10; the failed one is not written
    stats = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(output.glob("*_stats.json"))]
    assert sum(s["successes"] for s in stats) == 40

    root = tmp_path / "ds"
    code = main(["shards", f"data.root={root}", "data.shards.source=img2dataset", f"data.shards.input={output}",
                 "data.shards.heldout_fraction=0.2", "data.shards.vocab.min_count=1", "launcher=debug",
                 f"work_dir={tmp_path / 'runs'}"])
    assert code == 0
    dataset = Dataset.open(root)
    manifest = dataset.manifest
    assert manifest["source"] == f"img2dataset:{output.resolve()}"
    assert manifest["num_samples"] + sum(s["samples"] for s in manifest["heldout"]) == 40
    assert manifest["num_shards"] >= 1 and manifest["heldout"]
    # the shards are img2dataset's own files, not copies
    assert set(dataset.train_urls()) | set(dataset.heldout_urls()) == {str(p.resolve()) for p in tars}
    vocab = Vocabulary.load(root / "vocab.tsv")
    assert set(vocab.tags) == {"red", "green", "blue", "square", "stripe", "photo"}
    assert vocab.counts[vocab.tags.index("photo")] == manifest["num_samples"]

    cfg = tiny_config(tmp_path / "runs", root, "train.steps=6", "train.batch_size=8", "train.steps_per_epoch=3",
                      "data.image_size=32", "train.checkpoint_every=6", "train.log_every=3")
    summary = pretrain_job(cfg)
    assert summary["step"] == 6 and summary["images_seen"] == 48
    assert summary["skipped/bad_json"] == 0 and summary["skipped/no_known_tag"] == 0
    assert summary["eval/images"] == sum(s["samples"] for s in manifest["heldout"])
    assert 0.0 <= summary["eval/mAP"] <= 1.0

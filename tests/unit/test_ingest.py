"""`webly shards`: a folder of images with .txt / .json sidecars -> shards, skip counts, a deterministic split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pretrain.config import ShardsConfig, VocabConfig
from pretrain.ingest import ingest_folder
from pretrain.shards import Dataset
from pretrain.vocab import Vocabulary
from tests.unit.conftest import encode_image, read_shard
from webly.cli import main


def make_folder(folder: Path) -> dict[str, bytes]:
    """3 usable images (a .txt, a .json with extra metadata, a nested .txt) and 4 unusable ones."""
    files = {
        "a.jpg": encode_image((250, 0, 0)),
        "b.png": encode_image((0, 250, 0), fmt="PNG"),
        "sub/c.jpeg": encode_image((0, 0, 250)),
        "d.jpg": encode_image((9, 9, 9)),  # no sidecar
        "e.jpg": encode_image((19, 19, 19)),  # sidecar is not JSON
        "f.jpg": encode_image((29, 29, 29)),  # sidecar JSON without 'tags'
        "g.jpg": encode_image((39, 39, 39)),  # sidecar 'tags' is not a list
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "a.txt").write_text("#Beach\nSun!\n\n   sea  \n", encoding="utf-8")
    (folder / "b.json").write_text(json.dumps({"tags": ["Beach", "Mountain"], "author": "ann", "license": "cc-by"}),
                                   encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("beach\nsun", encoding="utf-8")
    (folder / "e.json").write_text("{'tags': [broken", encoding="utf-8")
    (folder / "f.json").write_text(json.dumps({"title": "no tags here"}), encoding="utf-8")
    (folder / "g.json").write_text(json.dumps({"tags": "beach"}), encoding="utf-8")
    (folder / "notes.txt").write_text("a sidecar without an image is ignored\n", encoding="utf-8")
    (folder / "README.md").write_text("not an image\n", encoding="utf-8")
    return files


def cfg_for(folder: Path, **kwargs) -> ShardsConfig:
    base = {"input": str(folder), "samples_per_shard": 2, "heldout_fraction": 0.0, "subsets": [0.5, 1.0],
            "vocab": VocabConfig(min_count=1)}
    return ShardsConfig(**{**base, **kwargs})


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    path = tmp_path / "images"
    files = make_folder(path)
    return path, files


def test_skip_counts_and_untagged_list(tmp_path: Path, folder) -> None:
    path, _ = folder
    manifest = ingest_folder(tmp_path / "ds", cfg_for(path))
    assert manifest["ingest"] == {
        "images_found": 7,
        "skipped": {"no_sidecar": 1, "bad_sidecar": 3},
        "untagged": ["d.jpg", "e.jpg", "f.jpg", "g.jpg"],
        "written": 3,
        "shards_kept_from_earlier_run": 0,
        "duplicates": {"images": 3, "clusters": 0, "images_in_clusters": 0, "redundant": 0, "largest": 0,
                       "examples": []},  # three different pictures: no pHash cluster
    }
    assert manifest["num_samples"] == 3
    assert manifest["source"] == f"folder:{path.resolve()}"
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8")) == manifest


def test_tags_and_metadata_of_both_sidecar_kinds_reach_the_shards(tmp_path: Path, folder) -> None:
    path, files = folder
    manifest = ingest_folder(tmp_path / "ds", cfg_for(path))
    assert manifest["shards"] == [{"name": "train-000000.tar", "samples": 2},
                                  {"name": "train-000001.tar", "samples": 1}]
    assert manifest["heldout"] == []
    assert manifest["subsets"] == [{"index": 1, "shards": 1, "samples": 2}, {"index": 2, "shards": 2, "samples": 3}]
    samples = [s for url in Dataset.open(tmp_path / "ds").train_urls() for s in read_shard(url)]
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    a, b, c = samples
    assert a["jpg"] == files["a.jpg"] and "png" not in a
    assert b["png"] == files["b.png"] and "jpg" not in b
    assert c["jpg"] == files["sub/c.jpeg"]  # .jpeg is stored under the loader's 'jpg' key
    assert json.loads(a["json"]) == {"tags": ["#Beach", "Sun!", "sea"], "meta": {"source": "folder", "path": "a.jpg"}}
    assert json.loads(b["json"]) == {
        "tags": ["Beach", "Mountain"],
        "meta": {"author": "ann", "license": "cc-by", "source": "folder", "path": "b.png"},
    }
    assert json.loads(c["json"]) == {"tags": ["beach", "sun"], "meta": {"source": "folder", "path": "sub/c.jpeg"}}
    vocab = Vocabulary.load(tmp_path / "ds" / "vocab.tsv")
    assert list(zip(vocab.tags, vocab.counts, strict=True)) == [("beach", 3), ("sun", 2), ("mountain", 1),
                                                               ("sea", 1)]
    assert manifest["vocab"]["coverage"] == 1.0


def test_json_sidecar_wins_over_txt(tmp_path: Path, folder) -> None:
    path, _ = folder
    (path / "b.txt").write_text("ignored\n", encoding="utf-8")
    manifest = ingest_folder(tmp_path / "ds", cfg_for(path))
    assert "ignored" not in Vocabulary.load(tmp_path / "ds" / "vocab.tsv").tags
    assert manifest["vocab"]["size"] == 4


def _expected_heldout(rel: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big") / 2**64 < fraction


def _split(root: Path) -> tuple[list[str], list[str]]:
    dataset = Dataset.open(root)
    train = [json.loads(s["json"])["meta"]["path"] for u in dataset.train_urls() for s in read_shard(u)]
    held = [json.loads(s["json"])["meta"]["path"] for u in dataset.heldout_urls() for s in read_shard(u)]
    return train, held


def test_heldout_split_is_a_deterministic_function_of_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"img{i:02d}.jpg" for i in range(24)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(encode_image((10 * i, 0, 0)))
        (folder / name).with_suffix(".txt").write_text(f"common\ntag{i % 3}\n", encoding="utf-8")
    cfg = cfg_for(folder, heldout_fraction=0.3, samples_per_shard=5)
    first = ingest_folder(tmp_path / "one", cfg)
    train, held = _split(tmp_path / "one")
    assert held == [n for n in names if _expected_heldout(n, 0.3)]
    assert train == [n for n in names if not _expected_heldout(n, 0.3)]
    assert 0 < len(held) < len(names)
    assert sum(s["samples"] for s in first["heldout"]) == len(held)
    # held-out keys continue after the training keys
    heldout_keys = [s["__key__"] for u in Dataset.open(tmp_path / "one").heldout_urls() for s in read_shard(u)]
    assert heldout_keys == [f"{len(train) + i:09d}" for i in range(len(held))]

    # again, and with more images in the folder: nobody already there changes side
    second = ingest_folder(tmp_path / "two", cfg)
    assert _split(tmp_path / "two") == (train, held)
    assert {k: second[k] for k in ("shards", "heldout", "subsets", "vocab")} == {
        k: first[k] for k in ("shards", "heldout", "subsets", "vocab")}
    for i in range(24, 40):
        (folder / f"img{i:02d}.jpg").write_bytes(encode_image((0, 5 * i, 0)))
        (folder / f"img{i:02d}.txt").write_text("common\n", encoding="utf-8")
    ingest_folder(tmp_path / "three", cfg)
    train3, held3 = _split(tmp_path / "three")
    assert set(held) <= set(held3) and set(train) <= set(train3)


def test_missing_input_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=rf"shards\.input='{missing}': not a folder"):
        ingest_folder(tmp_path / "ds", cfg_for(missing))
    assert not (tmp_path / "ds").exists()


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("tag\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no \.jpg/\.jpeg/\.png/\.webp image found"):
        ingest_folder(tmp_path / "ds", cfg_for(tmp_path / "empty"))


def test_folder_without_any_usable_sidecar(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(encode_image())
    with pytest.raises(ValueError, match=r"bare: no image with a usable sidecar tag file"):
        ingest_folder(tmp_path / "ds", cfg_for(folder))


def test_bad_sidecar_is_counted_as_bad_whatever_its_name(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(encode_image())
    (folder / "good.txt").write_text("tag\n", encoding="utf-8")
    (folder / "no sidecar.jpg").write_bytes(encode_image())
    (folder / "no sidecar.json").write_text("not json", encoding="utf-8")
    manifest = ingest_folder(tmp_path / "ds", cfg_for(folder))
    assert manifest["ingest"]["skipped"] == {"bad_sidecar": 1}


def test_webly_shards_command(tmp_path: Path, folder, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = folder
    root = tmp_path / "ds"
    code = main(["shards", "data=folder", f"data.shards.input={path}", f"data.root={root}", "launcher=debug",
                 f"work_dir={tmp_path / 'runs'}", "data.shards.vocab.min_count=1", "data.shards.heldout_fraction=0",
                 "logging.progress=false"])
    assert code == 0
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_samples"] == 3
    assert manifest["num_shards"] == 1  # data=folder shards 1000 images per shard
    assert manifest["ingest"]["skipped"] == {"no_sidecar": 1, "bad_sidecar": 3}
    assert manifest["vocab"]["size"] == 4
    assert (root / "vocab.tsv").is_file() and (root / "shards" / "train-000000.tar").is_file()
    out = capsys.readouterr().out
    assert f"[webly] shards: 3 training images in 1 shards, 4 tags -> {root}" in out


def test_webly_shards_command_reports_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["shards", "launcher=debug", "data.shards.samples_per_shard=0", f"work_dir={tmp_path}"])
    assert code == 2
    assert "webly shards: config error: data.shards.samples_per_shard=0: must be positive" in capsys.readouterr().err

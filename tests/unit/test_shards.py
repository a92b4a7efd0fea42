"""Shards on disk: nested subset sizes, atomic tar writing, the manifest and vocab.tsv, and Dataset's views."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds
from PIL import Image

from pretrain.config import ShardsConfig, VocabConfig
from pretrain.shards import FORMAT, Dataset, ShardStats, finalize_dataset, subset_sizes, write_shard
from pretrain.vocab import Vocabulary
from tests.unit.conftest import encode_image, read_shard

# ----------------------------------------------------------------------------------------------- subset_sizes


@pytest.mark.parametrize(
    ("num_shards", "fractions", "expected"),
    [
        (8, [0.25, 0.5, 1.0], [2, 4, 8]),
        (10, [0.1, 0.3, 1.0], [1, 3, 10]),  # 0.3 * 10 is 3.0000000000000004 in floating point: still 3
        (10, [0.7, 1.0], [7, 10]),  # 0.7 * 10 is 7.000000000000001
        (3, [0.25, 0.5, 1.0], [1, 2, 3]),  # ceil: a subset never rounds down to nothing
        (2, [0.25, 0.5, 1.0], [1, 2]),  # equal sizes merge
        (4, [1.0, 0.25, 0.5], [1, 2, 4]),  # any order in, increasing out
        (4, [0.001, 1.0], [1, 4]),  # at least one shard
        (1, [0.1, 0.5, 1.0], [1]),
        (1000, [0.01, 0.1, 1.0], [10, 100, 1000]),
    ],
)
def test_subset_sizes(num_shards: int, fractions: list[float], expected: list[int]) -> None:
    assert subset_sizes(num_shards, fractions) == expected


@pytest.mark.parametrize("num_shards", [1, 2, 5, 7, 16, 99])
def test_subset_sizes_increase_strictly_and_end_with_all_shards(num_shards: int) -> None:
    sizes = subset_sizes(num_shards, [0.05, 0.25, 0.5, 0.75, 1.0])
    assert sizes == sorted(set(sizes))
    assert sizes[0] >= 1
    assert sizes[-1] == num_shards


def test_subset_sizes_last_is_all_even_without_fraction_one() -> None:
    assert subset_sizes(8, [0.25, 0.5])[-1] == 8


@pytest.mark.parametrize("fractions", [[], [0], [0.0, 1.0], [1.5], [-0.1, 1.0], [0.5, 1.0000001]])
def test_subset_sizes_rejects_bad_fractions(fractions: list[float]) -> None:
    with pytest.raises(ValueError, match=r"shards\.subsets must be fractions in \(0, 1\], got "):
        subset_sizes(4, fractions)


# ------------------------------------------------------------------------------------------ write + finalize

SHARD_SIZES = [3, 3, 3, 3, 2]  # 14 samples in 5 shards
CFG = ShardsConfig(samples_per_shard=3, subsets=[0.2, 0.6, 1.0], vocab=VocabConfig(min_count=2))


def shard_samples(shard: int, count: int) -> Iterator[dict[str, Any]]:
    for j in range(count):
        yield {
            "__key__": f"{shard:03d}{j:03d}",
            "jpg": encode_image((40 * shard, 20 * j, 100)),
            # 'common' on every sample, 'shardN' on every sample of shard N, a rare tag seen once
            "json": {"tags": ["#Common!", f"SHARD{shard}", f"rare {shard} {j}"], "n": j},
        }


@pytest.fixture
def dataset_root(tmp_path: Path) -> tuple[Path, list[ShardStats], dict[str, Any]]:
    root = tmp_path / "ds"
    train = [write_shard(root / "shards" / f"train-{i:06d}.tar", shard_samples(i, n))
             for i, n in enumerate(SHARD_SIZES)]
    heldout = [write_shard(root / "shards" / "heldout-000000.tar", shard_samples(9, 2))]
    manifest = finalize_dataset(root, train, heldout, CFG, source="unit-test", extra={"note": {"k": 1}})
    return root, train, manifest


def test_write_shard_counts_samples_and_normalised_tags(dataset_root) -> None:
    _, train, _ = dataset_root
    assert [s.samples for s in train] == SHARD_SIZES
    assert [s.name for s in train] == [f"train-{i:06d}.tar" for i in range(5)]
    assert train[0].tag_counts == Counter({"common": 3, "shard0": 3, "rare 0 0": 1, "rare 0 1": 1, "rare 0 2": 1})
    assert train[4].tag_counts["shard4"] == 2


def test_manifest_counts_and_subsets(dataset_root) -> None:
    root, _, manifest = dataset_root
    assert manifest == json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == FORMAT == "webly-shards/1"
    assert manifest["source"] == "unit-test"
    assert manifest["num_samples"] == 14
    assert manifest["num_shards"] == 5
    assert manifest["shards"] == [{"name": f"train-{i:06d}.tar", "samples": n} for i, n in enumerate(SHARD_SIZES)]
    assert manifest["heldout"] == [{"name": "heldout-000000.tar", "samples": 2}]
    assert manifest["subsets"] == [
        {"index": 1, "shards": 1, "samples": 3},
        {"index": 2, "shards": 3, "samples": 9},
        {"index": 3, "shards": 5, "samples": 14},
    ]
    # held-out tags (shard9) do not enter the vocabulary; rare tags (count 1) fall below min_count=2
    assert manifest["vocab"] == {"size": 6, "distinct_tags": 20, "coverage": round(28 / 42, 6), "min_count": 2,
                                 "top_k": 0, "oov": "drop", "synonyms": 0, "max_tracked": 0, "max_undercount": 0,
                                 "prunes": 0, "coverage_at_k": manifest["vocab"]["coverage_at_k"]}
    assert set(manifest["vocab"]["coverage_at_k"]) == {"10"}
    assert manifest["note"] == {"k": 1}


def test_vocab_tsv_content(dataset_root) -> None:
    root, _, _ = dataset_root
    assert (root / "vocab.tsv").read_text(encoding="utf-8") == (
        "tag\tcount\tindex\n"
        "common\t14\t0\nshard0\t3\t1\nshard1\t3\t2\nshard2\t3\t3\nshard3\t3\t4\nshard4\t2\t5\n"
    )
    assert Vocabulary.load(root / "vocab.tsv").tags[:2] == ["common", "shard0"]


def test_no_temporary_files_are_left(dataset_root) -> None:
    root, _, _ = dataset_root
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shards", "vocab.tsv", "vocab_longtail.png",
                                                      "vocab_stats.json"]
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["heldout-000000.tar"] + [
        f"train-{i:06d}.tar" for i in range(5)]


def test_dataset_train_urls_are_prefixes_of_the_shard_order(dataset_root) -> None:
    root, _, _ = dataset_root
    dataset = Dataset.open(root)
    everything = dataset.train_urls()
    assert everything == [str(root / "shards" / f"train-{i:06d}.tar") for i in range(5)]
    assert dataset.train_urls(0) == everything
    sizes = []
    for k in (1, 2, 3):
        urls = dataset.train_urls(k)
        assert urls == everything[: len(urls)]
        sizes.append(len(urls))
    assert sizes == [1, 3, 5]
    assert [dataset.train_samples(k) for k in (0, 1, 2, 3)] == [14, 3, 9, 14]
    assert dataset.heldout_urls() == [str(root / "shards" / "heldout-000000.tar")]


def test_subsets_follow_the_manifest_order_not_file_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    names = ["train-000002.tar", "train-000000.tar", "train-000001.tar"]
    train = [write_shard(root / "shards" / name, shard_samples(i, 2)) for i, name in enumerate(names)]
    finalize_dataset(root, train, [], ShardsConfig(subsets=[0.3, 1.0], vocab=VocabConfig(min_count=1)), "t")
    dataset = Dataset.open(root)
    assert dataset.train_urls(1) == [str(root / "shards" / "train-000002.tar")]
    assert dataset.train_urls(2) == [str(root / "shards" / n) for n in names]
    assert dataset.heldout_urls() == []


@pytest.mark.parametrize("subset", [4, 99, -1])
def test_train_urls_rejects_an_unknown_subset(dataset_root, subset: int) -> None:
    root, _, _ = dataset_root
    with pytest.raises(ValueError, match=rf"^data\.subset={subset}: {root} has subsets 1\.\.3 \(0 = all\)$"):
        Dataset.open(root).train_urls(subset)


def test_dataset_open_checks_the_format(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/2"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest\.json: format 'other/2', expected 'webly-shards/1'"):
        Dataset.open(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"empty/manifest\.json: no such file"):
        Dataset.open(tmp_path / "empty")


def test_shards_are_webdataset_tars_with_jpg_and_json_members(dataset_root) -> None:
    root, _, _ = dataset_root
    path = root / "shards" / "train-000004.tar"
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["004000.jpg", "004000.json", "004001.jpg", "004001.json"]
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["004000", "004001"]
    for j, sample in enumerate(samples):
        assert sample["jpg"] == encode_image((160, 20 * j, 100))
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert (image.format, image.size) == ("JPEG", (12, 10))
        assert json.loads(sample["json"]) == {"tags": ["#Common!", "SHARD4", f"rare 4 {j}"], "n": j}


def test_json_bytes_are_written_verbatim(tmp_path: Path) -> None:
    not_json = b"\xff\xfe this is {not json"
    reencoded = b'{"tags":   ["#Sun", "SUN", "Sea"],"x":1}'  # valid JSON, odd spacing: must not be re-serialised
    samples = [
        {"__key__": "a", "jpg": encode_image(), "json": not_json},
        {"__key__": "b", "jpg": encode_image(), "json": reencoded},
        {"__key__": "c", "jpg": encode_image(), "json": b'["sun"]'},  # JSON, but not an object
        {"__key__": "d", "jpg": encode_image(), "json": {"tags": "sun"}},  # tags not a list
        {"__key__": "e", "jpg": encode_image(), "json": {"tags": ["Sun!"]}},
    ]
    stats = write_shard(tmp_path / "s.tar", iter(samples))
    assert stats.samples == 5
    assert stats.tag_counts == Counter({"sun": 2, "sea": 1})
    written = {s["__key__"]: s["json"] for s in read_shard(tmp_path / "s.tar")}
    assert written["a"] == not_json
    assert written["b"] == reencoded
    assert written["c"] == b'["sun"]'
    assert json.loads(written["d"]) == {"tags": "sun"}
    assert json.loads(written["e"]) == {"tags": ["Sun!"]}


def _failing_samples(after: int) -> Iterator[dict[str, Any]]:
    for i in range(after):
        yield {"__key__": f"{i:03d}", "jpg": encode_image(), "json": {"tags": ["x"]}}
    raise RuntimeError("generator broke")


def test_a_failing_generator_leaves_no_shard_and_no_temp_file(tmp_path: Path) -> None:
    shard_dir = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="generator broke"):
        write_shard(shard_dir / "train-000000.tar", _failing_samples(3))
    assert list(shard_dir.iterdir()) == []


def test_a_failing_rewrite_keeps_the_previous_shard(tmp_path: Path) -> None:
    path = tmp_path / "train-000000.tar"
    write_shard(path, shard_samples(0, 2))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="generator broke"):
        write_shard(path, _failing_samples(5))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar"]

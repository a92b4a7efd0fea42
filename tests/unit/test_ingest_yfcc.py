"""YFCC100M ingest: a dataset file in the real 23-column layout + photos named by id -> shards, tags, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.config import ShardsConfig, VocabConfig
from pretrain.ingest_yfcc import COLUMNS, split_tags
from pretrain.shards import Dataset
from pretrain.sources import ingest
from pretrain.vocab import Vocabulary
from tests.unit.conftest import encode_image, read_shard


def yfcc_line(photo_id: int, user_tags: str, marker: int = 0, title: str = "", extension: str = "jpg") -> str:
    """One line of the public YFCC100M dataset file, every column in its place."""
    row = {
        "photo_id": str(photo_id), "user_nsid": "12345678@N00", "user_nickname": "ann", "date_taken":
        "2010-07-04 12:00:00.0", "date_uploaded": "1278250000", "capture_device": "Canon+EOS+400D",
        "title": title, "description": "a+day+at+the+beach%21", "user_tags": user_tags,
        "machine_tags": "geo%3Alat%3D40.7", "longitude": "-73.99", "latitude": "40.73", "accuracy": "16",
        "page_url": f"http://www.flickr.com/photos/ann/{photo_id}/",
        "download_url": f"http://farm1.staticflickr.com/1/{photo_id}_abc.jpg",
        "license_name": "Attribution License", "license_url": "http://creativecommons.org/licenses/by/2.0/",
        "server_id": "1", "farm_id": "1", "secret": "abc", "secret_original": "def",
        "extension_original": extension, "marker": str(marker),
    }
    assert list(row) == list(COLUMNS)
    return "\t".join(row.values())


def make_yfcc(tmp_path: Path) -> tuple[Path, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    lines = [
        yfcc_line(1001, "new+york,san%20francisco,caf%C3%A9", title="My+trip"),
        yfcc_line(1002, "new+york,bridge"),
        yfcc_line(1003, "beach,sun%2C+sea"),  # an encoded comma stays inside its tag
        yfcc_line(1004, "new+york", extension="png"),  # found as {id}.png
        yfcc_line(1005, "video,new+york", marker=1),  # a video: skipped
        yfcc_line(1006, "new+york"),  # no photo on disk
        yfcc_line(1007, "new+york"),  # not an image
        "1008\tonly\tthree columns",  # malformed
        yfcc_line(1009, ""),  # no tags: written (the loader counts it as no_known_tag)
    ]
    for photo_id in (1001, 1002, 1003, 1009):
        (photos / f"{photo_id}.jpg").write_bytes(encode_image((photo_id % 250, 20, 20)))
    (photos / "1004.png").write_bytes(encode_image((0, 200, 0), fmt="PNG"))
    (photos / "1007.jpg").write_bytes(b"this is not a jpeg")
    metadata = tmp_path / "yfcc100m_dataset"
    metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return metadata, photos


def yfcc_cfg(metadata: Path, photos: Path, **kwargs) -> ShardsConfig:
    base = {"source": "yfcc", "input": str(metadata), "photos": str(photos), "samples_per_shard": 2,
            "heldout_fraction": 0.0, "subsets": [1.0], "vocab": VocabConfig(min_count=1)}
    return ShardsConfig(**{**base, **kwargs})


def test_split_tags_url_decodes_and_splits_on_commas() -> None:
    assert split_tags("new+york,san%20francisco") == ["new york", "san francisco"]
    assert split_tags("sun%2C+sea,,x") == ["sun, sea", "x"]
    assert split_tags("") == []


def test_yfcc_file_becomes_shards_with_decoded_tags_and_counts(tmp_path: Path) -> None:
    metadata, photos = make_yfcc(tmp_path)
    manifest = ingest(tmp_path / "ds", yfcc_cfg(metadata, photos))
    report = manifest["ingest"]
    assert report["lines"] == 9 and report["photos"] == 7
    assert report["skipped"] == {"video": 1, "bad_line": 1, "missing_photo": 1, "unreadable": 1}
    assert report["bad_lines"] == [f"{metadata}:8: expected 23 tab-separated columns, got 3"]
    assert report["written"] == manifest["num_samples"] == 5
    # 7 planned photos in shards of 2; the missing and the unreadable one are counted in their shards
    assert manifest["shards"] == [
        {"name": "train-000000.tar", "samples": 2},
        {"name": "train-000001.tar", "samples": 2},
        {"name": "train-000002.tar", "samples": 0, "skipped": {"missing_photo": 1, "unreadable": 1}},
        {"name": "train-000003.tar", "samples": 1},
    ]
    assert manifest["counts"]["train"]["skipped"] == {"missing_photo": 1, "unreadable": 1}
    samples = [s for url in Dataset.open(tmp_path / "ds").train_urls() for s in read_shard(url)]
    by_id = {json.loads(s["json"])["meta"]["photo_id"]: s for s in samples}
    assert sorted(by_id) == ["1001", "1002", "1003", "1004", "1009"]
    first = json.loads(by_id["1001"]["json"])
    assert first["tags"] == ["new york", "san francisco", "café"]
    assert first["meta"]["title"] == "My trip" and first["meta"]["description"] == "a day at the beach!"
    assert first["meta"]["machine_tags"] == ["geo:lat=40.7"] and first["meta"]["license"] == "Attribution License"
    assert json.loads(by_id["1003"]["json"])["tags"] == ["beach", "sun, sea"]
    assert "png" in by_id["1004"] and by_id["1004"]["png"] == (photos / "1004.png").read_bytes()
    assert by_id["1001"]["jpg"] == (photos / "1001.jpg").read_bytes()
    vocab = Vocabulary.load(tmp_path / "ds" / "vocab.tsv")
    assert dict(zip(vocab.tags, vocab.counts, strict=True)) == {
        "new york": 3, "bridge": 1, "cafe": 1, "san francisco": 1, "beach": 1, "sun sea": 1}


def test_rerun_keeps_finished_shards_and_rewrites_a_lost_one(tmp_path: Path) -> None:
    metadata, photos = make_yfcc(tmp_path)
    cfg = yfcc_cfg(metadata, photos)
    first = ingest(tmp_path / "ds", cfg)
    shards = tmp_path / "ds" / "shards"
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    (shards / "train-000001.tar").unlink()  # as if the run had died before writing it
    again = ingest(tmp_path / "ds", cfg)
    assert again["ingest"]["shards_kept_from_earlier_run"] == 3
    assert {k: again[k] for k in ("shards", "vocab", "num_samples")} == {
        k: first[k] for k in ("shards", "vocab", "num_samples")}
    for name, stamp in stamps.items():
        if name != "train-000001.tar":
            assert (shards / name).stat().st_mtime_ns == stamp, name
    # another photo folder changes every shard's fingerprint: nothing is kept
    other = tmp_path / "photos2"
    other.mkdir()
    for p in photos.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    third = ingest(tmp_path / "ds", yfcc_cfg(metadata, other))
    assert third["ingest"]["shards_kept_from_earlier_run"] == 0


def test_heldout_split_by_photo_id(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    lines = []
    for i in range(40):
        (photos / f"{5000 + i}.jpg").write_bytes(encode_image((i * 5, 0, 0)))
        lines.append(yfcc_line(5000 + i, f"common,t{i % 4}"))
    metadata = tmp_path / "meta.tsv"
    metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = ingest(tmp_path / "ds", yfcc_cfg(metadata, photos, heldout_fraction=0.25, samples_per_shard=8))
    held = sum(s["samples"] for s in manifest["heldout"])
    assert 0 < held < 40 and manifest["num_samples"] + held == 40


def test_yfcc_errors_name_the_input(tmp_path: Path) -> None:
    metadata, photos = make_yfcc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shards\.photos='.*nowhere': not a folder"):
        ingest(tmp_path / "ds", yfcc_cfg(metadata, tmp_path / "nowhere"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no photo line in the YFCC100M layout \(first problem: .*bad.tsv:1: exp"):
        ingest(tmp_path / "ds", yfcc_cfg(bad, photos))

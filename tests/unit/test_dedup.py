"""De-duplication of test sets against the corpus: descriptors, FAISS search, scoring, the cache, the manifest.

The tiny benchmark plants edited copies of synthweb corpus images and uses held-out synthweb renders (same
world, new scenes: the hard negatives) as the unrelated images. The trunk is a random ResNet-10: its
embeddings are near-identical for an exact copy (cosine 1) but, on this repetitive synthetic world, unrelated
renders also reach cosine ~0.996 (its zero-initialised residual branches leave mostly colour statistics), so
the tests set cnn_threshold=0.999, where only (near-)exact copies pass, and rely on the pHash (threshold 8:
JPEG q20 / resized / recoloured copies are <= 8 bits away, the held-out renders >= 12) for the edited ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageEnhance

import transfer.dedup as dedup
import transfer.descriptors as descriptors
from pretrain.config import DataConfig, ModelConfig, ShardsConfig, SynthConfig
from pretrain.shards import Dataset
from pretrain.synthweb.dataset import write_synthweb
from transfer.config import DedupConfig

CFG = DedupConfig(hash_threshold=8, cnn_threshold=0.999, batch_size=32)
MODEL = ModelConfig(depth=10, width=16)


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _samples(urls: list[str]) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["jpg"]) for s in wds.tarfile_to_samples()([{"url": u} for u in urls])]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 200-image corpus (2 shards) and a benchmark of 7 planted copies, 1 mislabel and 7 hard negatives."""
    base = tmp_path_factory.mktemp("dedup")
    corpus = base / "corpus"
    write_synthweb(DataConfig(root=str(corpus), synth=SynthConfig(num_images=200, heldout_images=20, image_size=64),
                              shards=ShardsConfig(samples_per_shard=100, subsets=[1.0])))
    dataset = Dataset.open(corpus)
    train, heldout = _samples(dataset.train_urls(0)), _samples(dataset.heldout_urls())
    key = {name: train[i] for name, i in zip("ABCDEFG", (3, 17, 42, 77, 105, 131, 160), strict=True)}
    bench = base / "bench"
    images = {  # id -> bytes
        "classification/test/cat/exact.jpg": key["A"][1],
        "classification/test/cat/q20.jpg": _jpeg(_open(key["B"][1]), 20),
        "classification/test/cat/small.jpg": _jpeg(_open(key["C"][1]).resize((40, 40), Image.BILINEAR)),
        "classification/test/cat/new0.jpg": heldout[0][1],
        "classification/test/dog/recolour.jpg": _jpeg(ImageEnhance.Color(_open(key["D"][1])).enhance(1.4)),
        "classification/test/dog/new1.jpg": heldout[1][1],
        "detection/images/test/big.jpg": _jpeg(_open(key["E"][1]).resize((96, 96), Image.BILINEAR)),
        "detection/images/test/unlisted_copy.jpg": key["F"][1],  # a real copy the ground truth forgot
        "detection/images/test/new2.jpg": heldout[2][1],
        "detection/images/test/new3.jpg": heldout[3][1],
        "segmentation/JPEGImages/s_q20.jpg": _jpeg(_open(key["G"][1]), 20),
        "segmentation/JPEGImages/s_new4.jpg": heldout[4][1],  # mislabelled as a copy in the ground truth
        "segmentation/JPEGImages/s_new5.jpg": heldout[5][1],
        "segmentation/JPEGImages/not_in_test.jpg": key["A"][1],  # not listed in test.txt: not a test image
    }
    for image_id, data in images.items():
        (bench / image_id).parent.mkdir(parents=True, exist_ok=True)
        (bench / image_id).write_bytes(data)
    listing = bench / "segmentation/ImageSets/Segmentation/test.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("s_q20\ns_new4\ns_new5\n")
    planted = {"classification/test/cat/exact.jpg": ("A", "exact"), "classification/test/cat/q20.jpg": ("B", "jpeg"),
               "classification/test/cat/small.jpg": ("C", "resize"),
               "classification/test/dog/recolour.jpg": ("D", "recolour"),
               "detection/images/test/big.jpg": ("E", "resize"), "segmentation/JPEGImages/s_q20.jpg": ("G", "jpeg"),
               "segmentation/JPEGImages/s_new4.jpg": ("F", "crop")}
    truth = [{"id": i, "benchmark": i.split("/")[0], "corpus_key": key[k][0], "edit": edit}
             for i, (k, edit) in planted.items()]
    truth.append({"id": "detection/images/test/gone.jpg", "benchmark": "detection", "corpus_key": "x",
                  "edit": "crop"})  # a ground-truth id that is no test image: listed, not scored
    (bench / "near_duplicates.json").write_text(json.dumps(truth))
    return {"corpus": corpus, "bench": bench, "keys": {k: v[0] for k, v in key.items()}, "out": base / "out"}


def _run(world: dict, out: Path, cfg: DedupConfig = CFG, seed: int = 0) -> dict:
    return dedup.run_dedup(str(world["corpus"]), str(world["bench"]), str(out), cfg, "", MODEL, seed=seed,
                           progress=False, threads=1)


def _digests(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for r in roots for p in sorted(r.rglob("*"))
            if p.is_file()}


def test_find_test_images_reads_the_three_layouts(world: dict, tmp_path: Path) -> None:
    found = dedup.find_test_images(world["bench"])
    ids = [i for i, _ in found]
    assert len(ids) == 13 and "segmentation/JPEGImages/not_in_test.jpg" not in ids
    assert all(path == world["bench"] / i for i, path in found)
    assert {dedup.benchmark_of(i) for i in ids} == {"classification", "detection", "segmentation"}
    only = tmp_path / "only_detection/detection/images/test"
    only.mkdir(parents=True)
    (only / "a.jpg").write_bytes(b"x")
    assert [i for i, _ in dedup.find_test_images(tmp_path / "only_detection")] == ["detection/images/test/a.jpg"]
    listing = tmp_path / "broken/segmentation/ImageSets/Segmentation/test.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("missing\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        dedup.find_test_images(tmp_path / "broken")


def test_phash_codes_pad_to_bytes_and_faiss_matches_brute_force() -> None:
    image = Image.linear_gradient("L").convert("RGB")
    assert descriptors.phash_code(image, 8).shape == (8,) and descriptors.hash_bits(8) == 64
    assert descriptors.phash_code(image, 6).shape == (5,) and descriptors.hash_bits(6) == 40
    rng = np.random.default_rng(0)
    corpus, queries = rng.integers(0, 256, (300, 8), dtype=np.uint8), rng.integers(0, 256, (40, 8), dtype=np.uint8)
    brute = np.unpackbits(queries[:, None] ^ corpus[None], axis=2).sum(2)
    distance, index = dedup.nearest_hash(queries, corpus)
    assert np.array_equal(distance, brute.min(1)) and np.array_equal(brute[np.arange(40), index], brute.min(1))
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = emb[:40] + 0.3 * rng.normal(size=(40, 16)).astype(np.float32)  # no ties: noisy copies
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cosine, index = dedup.nearest_cosine(queries, emb)
    sims = queries @ emb.T
    assert np.allclose(cosine, sims.max(1), atol=1e-5) and np.array_equal(index, sims.argmax(1))


def test_scores_conventions() -> None:
    assert dedup.scores({"a", "b", "c"}, {"a", "b", "d", "e"}) == {
        "precision": round(2 / 3, 6), "recall": 0.5, "f1": round(4 / 7, 6), "tp": 2, "fp": 1, "fn": 2}
    assert dedup.scores(set(), {"a"})["precision"] == 1.0 and dedup.scores(set(), set())["recall"] == 1.0
    assert dedup.scores({"b"}, {"a"})["f1"] == 0.0


def test_run_dedup_flags_planted_copies_and_scores_them(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _digests(world["corpus"], world["bench"])
    writes: list[Path] = []
    real_write = dedup.atomic_write_json
    monkeypatch.setattr(dedup, "atomic_write_json", lambda p, obj: writes.append(Path(p)) or real_write(p, obj))
    result = _run(world, world["out"])
    assert writes == [world["out"] / "dedup.json"]  # written once, through the atomic writer
    assert json.loads((world["out"] / "dedup.json").read_text()) == result
    assert not list(world["out"].glob(".*tmp"))
    assert result["corpus"] == {"images": 200, "skipped": {}, "cache": "miss"} and result["test_images"] == 13

    flagged = {r["id"]: r for r in result["flagged"]}
    keys = world["keys"]
    exact = flagged["classification/test/cat/exact.jpg"]
    assert exact["hash_distance"] == 0 and exact["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert exact["by"] == "both" and exact["corpus_key"] == exact["cnn_key"] == keys["A"]
    assert flagged["detection/images/test/unlisted_copy.jpg"]["by"] == "both"
    for image_id, letter in [("classification/test/cat/q20.jpg", "B"), ("classification/test/cat/small.jpg", "C"),
                             ("classification/test/dog/recolour.jpg", "D"), ("detection/images/test/big.jpg", "E"),
                             ("segmentation/JPEGImages/s_q20.jpg", "G")]:
        record = flagged[image_id]
        assert record["by"] == "hash" and record["hash_distance"] <= 8 and record["corpus_key"] == keys[letter]
        assert record["benchmark"] == image_id.split("/")[0]
    assert not any("new" in i for i in flagged)  # no held-out render (hard negative) is flagged
    assert len(flagged) == 7

    assert result["per_benchmark"] == {
        "classification": {"test_images": 6, "flagged": 4, "overlap": round(4 / 6, 6)},
        "detection": {"test_images": 4, "flagged": 2, "overlap": 0.5},
        "segmentation": {"test_images": 3, "flagged": 1, "overlap": round(1 / 3, 6)},
    }
    ev = result["evaluation"]
    # planted: 7 true copies (one of them a held-out render mislabelled: a miss), 1 real copy left unlisted
    assert ev["ground_truth"] == 7 and ev["missing_ids"] == ["detection/images/test/gone.jpg"]
    assert ev["overall"] == {"precision": round(6 / 7, 6), "recall": round(6 / 7, 6), "f1": round(6 / 7, 6),
                             "tp": 6, "fp": 1, "fn": 1}
    per = ev["per_benchmark"]
    assert (per["classification"]["precision"], per["classification"]["recall"]) == (1.0, 1.0)
    assert (per["detection"]["precision"], per["detection"]["recall"]) == (0.5, 1.0)
    assert (per["segmentation"]["precision"], per["segmentation"]["recall"]) == (1.0, 0.5)
    assert ev["hash_only"]["overall"] == ev["overall"]
    assert ev["cnn_only"]["overall"] == {"precision": 0.5, "recall": round(1 / 7, 6), "f1": round(2 / 9, 6),
                                         "tp": 1, "fp": 1, "fn": 6}  # only the two exact copies pass 0.999
    assert ev["corpus_key_accuracy"] == 1.0
    assert [r["threshold"] for r in ev["sweep"]["cnn"]] == [round(0.8 + 0.01 * i, 2) for i in range(20)]
    assert [r["threshold"] for r in ev["sweep"]["hash"]] == list(range(17))
    at_8 = ev["sweep"]["hash"][8]
    assert {k: at_8[k] for k in ev["overall"]} == ev["overall"] and at_8["flagged"] == 7
    counts = [row["flagged"] for row in ev["sweep"]["hash"]]
    assert counts == sorted(counts)
    cnn_counts = [row["flagged"] for row in ev["sweep"]["cnn"]]
    assert cnn_counts == sorted(cnn_counts, reverse=True)
    assert cnn_counts[0] == 13  # the random trunk: at cosine 0.80 every test image, hard negatives too, matches
    assert dedup.flagged_ids(world["out"] / "dedup.json") == set(flagged)
    assert _digests(world["corpus"], world["bench"]) == before  # source data only read


def test_corpus_cache_is_reused_and_refreshed_per_part(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    out = world["out"].parent / "out_cache"
    first = _run(world, out)
    cache = out / descriptors.CACHE_NAME
    stamp, content = cache.stat().st_mtime_ns, np.load(cache)["hashes"]

    def no_corpus_pass(*args, **kwargs):
        raise AssertionError("the corpus was described again")

    with monkeypatch.context() as patch:
        patch.setattr(descriptors, "iter_shards", no_corpus_pass)
        again = _run(world, out)
        hashes_only = DedupConfig(**{**vars(CFG), "use_cnn": False})
        alone = _run(world, out, hashes_only)
    assert again["corpus"]["cache"] == "hit" and alone["corpus"]["cache"] == "hit"
    assert again["flagged"] == first["flagged"] and cache.stat().st_mtime_ns == stamp
    assert alone["trunk"] is None and alone["evaluation"]["cnn_only"] is None
    assert {r["by"] for r in alone["flagged"]} == {"hash"} and len(alone["flagged"]) == 7

    # Another random trunk: the embeddings are recomputed, the hashes kept.
    other = _run(world, out, seed=1)
    assert other["corpus"]["cache"] == "partial" and other["trunk"]["seed"] == 1
    assert np.array_equal(np.load(cache)["hashes"], content)
    exact = {r["id"]: r for r in other["flagged"]}["classification/test/cat/exact.jpg"]
    assert exact["cosine"] == pytest.approx(1.0, abs=1e-5)

    cache.write_bytes(b"not an npz")  # a damaged cache is rebuilt, not trusted
    rebuilt = _run(world, out)
    assert rebuilt["corpus"]["cache"] == "miss" and rebuilt["flagged"] == first["flagged"]


def test_flagged_ids_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"flagged": []}))
    with pytest.raises(ValueError, match="not a dedup manifest"):
        dedup.flagged_ids(tmp_path / "x.json")

"""De-duplication of test sets against the corpus: views, descriptors, the margin search, scoring, the cache.

The tiny benchmark plants edited copies of synthweb corpus images (a zoomed crop among them) and uses held-out
synthweb renders (same world, new scenes: the hard negatives) as the unrelated images. With the defaults (tiny
descriptor, 59 views per corpus image, mirrored and hue-shifted queries, ratio margin >= 0.4, pHash <= 2 bits)
every copy scores a margin >= 0.73 and every render <= 0.21 (the hue shifts give a render more ways to meet a
corpus image: 0.09 without them). The crop is found only through a zoomed view (its pHash is 18 bits away).
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
from transfer.config import DedupConfig, IndexConfig
from transfer.index import build_index
from transfer.views import ViewSampler, view_boxes

CFG = DedupConfig()
MODEL = ModelConfig(depth=10, width=16)
CROP = "classification/test/dog/crop.jpg"
HARD_NEGATIVE = "classification/test/cat/new0.jpg"  # a held-out render that looks like corpus images


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
    """A 200-image corpus (2 shards) and a benchmark of 8 planted copies, 1 mislabel and 6 hard negatives."""
    base = tmp_path_factory.mktemp("dedup")
    corpus = base / "corpus"
    write_synthweb(DataConfig(root=str(corpus), synth=SynthConfig(num_images=200, heldout_images=20, image_size=64),
                              shards=ShardsConfig(samples_per_shard=100, subsets=[1.0])))
    dataset = Dataset.open(corpus)
    train, heldout = _samples(dataset.train_urls(0)), _samples(dataset.heldout_urls())
    key = {name: train[i] for name, i in zip("ABCDEFGH", (3, 17, 42, 77, 105, 131, 160, 188), strict=True)}
    bench = base / "bench"
    images = {  # id -> bytes
        "classification/test/cat/exact.jpg": key["A"][1],
        "classification/test/cat/q20.jpg": _jpeg(_open(key["B"][1]), 20),
        "classification/test/cat/small.jpg": _jpeg(_open(key["C"][1]).resize((40, 40), Image.BILINEAR)),
        HARD_NEGATIVE: heldout[0][1],
        "classification/test/dog/recolour.jpg": _jpeg(ImageEnhance.Color(_open(key["D"][1])).enhance(1.4)),
        "classification/test/dog/new1.jpg": heldout[1][1],
        # 52 x 50 of 64 x 64 (63% of the area, aspect changed) stretched back to 64 x 64
        CROP: _jpeg(_open(key["H"][1]).resize((64, 64), Image.BICUBIC, box=(6, 4, 58, 54))),
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
               "classification/test/dog/recolour.jpg": ("D", "recolour"), CROP: ("H", "crop"),
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
    assert len(ids) == 14 and "segmentation/JPEGImages/not_in_test.jpg" not in ids
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


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_nearest_two_is_exact_per_image_across_chunks_and_skips_corpus_twins() -> None:
    rng = np.random.default_rng(0)
    views = 3
    corpus = _unit(rng.normal(size=(50, views, 16)))
    corpus[7] = corpus[5]  # image 7 is a twin of image 5 (the corpus holds that photo twice)
    flat = corpus.reshape(-1, 16).astype(np.float16)
    queries = _unit(corpus[[5, 12, 30], 1] + 0.05 * rng.normal(size=(3, 16)))  # noisy copies of views 1 of 5, 12, 30
    per_image = (queries @ flat.astype(np.float32).T).reshape(3, 50, views).max(2)  # brute force: best view per image
    ranked = np.argsort(-per_image, axis=1, kind="stable")
    for chunk in (50, 7):  # one FAISS search, and eight merged ones
        plain = dedup.nearest_two(queries, flat, views, twin_cosine=1.01, chunk_images=chunk)
        assert list(plain.image1[1:]) == [12, 30] and list(plain.view) == [1, 1, 1]
        assert np.allclose(plain.s1, per_image.max(1), atol=1e-5)
        assert list(plain.image2[1:]) == list(ranked[1:, 1])
        assert np.allclose(plain.s2[1:], per_image[[1, 2], ranked[1:, 1]], atol=1e-5)
        assert {plain.image1[0], plain.image2[0]} == {5, 7} and plain.s2[0] == pytest.approx(plain.s1[0])  # no margin
        guarded = dedup.nearest_two(queries, flat, views, twin_cosine=0.97, chunk_images=chunk)
        assert guarded.image1[0] in (5, 7) and guarded.image2[0] == ranked[0, 2]  # the twin is skipped
        assert guarded.s2[0] == pytest.approx(per_image[0, ranked[0, 2]], abs=1e-5)
        assert np.array_equal(guarded.image2[1:], plain.image2[1:])
    alone = dedup.nearest_two(queries[:1], flat[:views], views)  # a one-image corpus has no second image
    assert alone.image1[0] == 0 and alone.image2[0] == -1 and alone.s2[0] == -1.0


def test_margin_scores() -> None:
    s1, s2 = np.array([1.0, 0.98, 0.9, 0.5]), np.array([0.6, 0.92, 0.9, -1.0])
    assert np.allclose(dedup.margin_score(s1, s2, "ratio"), [1.0, 0.5, 0.0, 0.5])  # d: 0/.89, .2/.4, equal, 1/2
    assert np.allclose(dedup.margin_score(s1, s2, "difference"), [0.4, 0.06, 0.0, 1.5])


def test_orientations_are_pooled_like_views() -> None:
    """With mirrored queries, s2 is the best other image over both orientations: a render whose mirror image
    resembles another corpus image has no margin, however well its other orientation matches."""
    corpus = np.eye(4, dtype=np.float16)  # four corpus images, one view each, orthogonal
    queries = _unit(np.array([[0.95, 0.3, 0, 0], [0.1, 0, 0.8, 0.59],  # X: as is ~ image 0, mirrored ~ image 2
                              [0.95, 0.3, 0, 0], [0.9, 0, 0, 0.43]]))  # Y: mirrored ~ image 0 again, then image 3
    index = build_index(corpus, 1, IndexConfig(kind="flat"))
    single = dedup.nearest_two(queries, index)
    matches, margin = dedup.best_orientation(queries, index, 2, DedupConfig())
    assert list(matches.image1) == [0, 0] and np.allclose(matches.s1, single.s1[[0, 2]])
    assert list(matches.image2) == [2, 3] and np.allclose(matches.s2, [single.s1[1], single.s2[3]])
    assert np.allclose(margin, dedup.margin_score(matches.s1, matches.s2, "ratio"))
    as_is = dedup.margin_score(single.s1, single.s2, "ratio")[0]  # X as is, alone: a margin as a copy's
    assert margin[0] < 0.55 < 0.7 < min(as_is, margin[1])  # pooled, X's mirror image match to image 2 holds it back
    alone, alone_margin = dedup.best_orientation(queries, index, 1, DedupConfig())  # one orientation: as searched
    assert np.array_equal(alone.s2, single.s2) and np.allclose(alone_margin, dedup.margin_score(single.s1, single.s2,
                                                                                                "ratio"))


def test_views_cover_zooms_and_resample_as_pil_does() -> None:
    boxes = view_boxes([0.5], 3)
    assert len(boxes) == 10 and boxes[0] == (0.0, 0.0, 1.0, 1.0)
    assert boxes[1] == (0.0, 0.0, 0.5, 0.5) and boxes[5] == (0.25, 0.25, 0.75, 0.75) and boxes[9] == (0.5, 0.5, 1, 1)
    assert view_boxes([0.8, 0.6], 1)[1:] == [(0.1, 0.1, 0.9, 0.9), (0.2, 0.2, 0.8, 0.8)]
    with pytest.raises(ValueError, match="fraction"):
        view_boxes([1.0], 3)
    # one grid per zoom: 0.88 on 3 x 3 positions, 0.7 on 5 x 5 (steps of 0.075)
    dense = view_boxes([0.88, 0.7], [3, 5])
    assert len(dense) == 1 + 9 + 25 and dense[10] == (0.0, 0.0, 0.7, 0.7) and dense[11] == (0.075, 0.0, 0.775, 0.7)
    assert view_boxes([0.88, 0.7], [3]) == view_boxes([0.88, 0.7], 3)
    with pytest.raises(ValueError, match=r"view_grid=\[3, 5\].*one per view fraction"):
        view_boxes([0.88, 0.78, 0.7], [3, 5])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    boxes = view_boxes([0.88, 0.78], 3)
    for size in (12, 64):  # down- and upsampling
        views = ViewSampler(boxes, size)(np.asarray(image))
        pil = np.stack([np.asarray(image.resize((size, size), Image.BILINEAR, box=(x0 * 80, y0 * 48, x1 * 80, y1 * 48)))
                        for x0, y0, x1, y1 in boxes])
        assert views.shape == (19, size, size, 3) and np.abs(views - pil).max() <= 1.0  # PIL rounds to uint8


def test_tiny_descriptor_ignores_recolouring_but_not_scene_colour() -> None:
    rng = np.random.default_rng(0)
    base = np.clip(rng.normal(120, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    recoloured = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.15)).enhance(0.85))
    recoloured = recoloured.enhance(0.75)  # brightness, contrast and saturation all changed
    other_hue = Image.fromarray(base[..., ::-1].copy())  # same luma layout, another colour
    tiny = descriptors.TinyImage(12, 1.5)
    a, b, c = tiny(np.stack([base, np.asarray(recoloured), np.asarray(other_hue)]))
    assert a.shape == (432,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert a @ b > 0.99 and a @ c < 0.9


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
    assert {k: result["corpus"][k] for k in ("images", "views", "skipped", "cache")} == {
        "images": 200, "views": 59, "skipped": {}, "cache": "miss"}
    assert result["corpus"]["images_per_second"] > 0 and result["test_images"] == 14 and result["trunk"] is None

    flagged = {r["id"]: r for r in result["flagged"]}
    keys = world["keys"]
    exact = flagged["classification/test/cat/exact.jpg"]
    assert exact["hash_distance"] == 0 and exact["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert exact["margin"] == pytest.approx(1.0, abs=0.05) and exact["view"] == [0.0, 0.0, 1.0, 1.0]
    assert exact["by"] == "both" and exact["corpus_key"] == exact["margin_key"] == keys["A"]
    assert flagged["detection/images/test/unlisted_copy.jpg"]["by"] == "both"
    for image_id, letter, by in [("classification/test/cat/q20.jpg", "B", "both"),
                                 ("classification/test/cat/small.jpg", "C", "both"),
                                 ("classification/test/dog/recolour.jpg", "D", "both"),
                                 ("detection/images/test/big.jpg", "E", "both"),
                                 ("segmentation/JPEGImages/s_q20.jpg", "G", "margin"),  # pHash 4 bits away
                                 (CROP, "H", "margin")]:
        record = flagged[image_id]
        assert record["by"] == by and record["margin"] >= 0.7 and record["corpus_key"] == keys[letter]
        assert record["benchmark"] == image_id.split("/")[0] and record["second_key"] != keys[letter]
    crop = flagged[CROP]
    assert crop["hash_distance"] == 18 and crop["view"] == [0.06, 0.0, 0.94, 0.88]  # found through a zoomed view
    assert not any("new" in i for i in flagged)  # no held-out render (hard negative) is flagged
    assert len(flagged) == 8

    assert result["per_benchmark"] == {
        "classification": {"test_images": 7, "flagged": 5, "overlap": round(5 / 7, 6)},
        "detection": {"test_images": 4, "flagged": 2, "overlap": 0.5},
        "segmentation": {"test_images": 3, "flagged": 1, "overlap": round(1 / 3, 6)},
    }
    assert result["thresholds"] == {"use_hash": True, "hash_size": 8, "hash_threshold": 2, "descriptor": "tiny",
                                    "margin": "ratio", "margin_threshold": 0.4, "views": 59,
                                    "view_fractions": [0.88, 0.7], "view_grid": [3, 7], "twin_cosine": 0.97,
                                    "query_flip": True, "query_hues": [-0.04, 0.04], "calibrated": False,
                                    "tiny_size": 12, "chroma_weight": 1.5}
    ev = result["evaluation"]
    # planted: 8 true copies (one of them a held-out render mislabelled: a miss), 1 real copy left unlisted
    assert ev["ground_truth"] == 8 and ev["missing_ids"] == ["detection/images/test/gone.jpg"]
    assert ev["overall"] == {"precision": 0.875, "recall": 0.875, "f1": 0.875, "tp": 7, "fp": 1, "fn": 1}
    per = ev["per_benchmark"]
    assert (per["classification"]["precision"], per["classification"]["recall"]) == (1.0, 1.0)
    assert (per["detection"]["precision"], per["detection"]["recall"]) == (0.5, 1.0)
    assert (per["segmentation"]["precision"], per["segmentation"]["recall"]) == (1.0, 0.5)
    assert ev["per_edit"] == {"crop": {"planted": 2, "found": 1, "recall": 0.5},
                              "exact": {"planted": 1, "found": 1, "recall": 1.0},
                              "jpeg": {"planted": 2, "found": 2, "recall": 1.0},
                              "recolour": {"planted": 1, "found": 1, "recall": 1.0},
                              "resize": {"planted": 2, "found": 2, "recall": 1.0}}
    assert ev["margin_only"]["overall"] == ev["overall"]
    assert ev["hash_only"]["overall"] == {"precision": round(5 / 6, 6), "recall": 0.625, "f1": round(5 / 7, 6),
                                          "tp": 5, "fp": 1, "fn": 3}  # misses the crop and the q20 at 4 bits
    assert ev["corpus_key_accuracy"] == 1.0
    assert [r["threshold"] for r in ev["sweep"]["margin"]] == [round(0.025 * i, 3) for i in range(40)]
    assert [r["threshold"] for r in ev["sweep"]["similarity"]] == [round(0.8 + 0.01 * i, 2) for i in range(20)]
    assert [r["threshold"] for r in ev["sweep"]["hash"]] == list(range(17))
    at_04 = ev["sweep"]["margin"][16]
    assert at_04["threshold"] == 0.4 and {k: at_04[k] for k in ev["overall"]} == ev["overall"]
    for name, rising in (("hash", True), ("margin", False), ("similarity", False)):
        counts = [row["flagged"] for row in ev["sweep"][name]]
        assert counts == sorted(counts, reverse=not rising)
    assert ev["sweep"]["margin"][0]["flagged"] == 14  # margin >= 0: every test image
    assert dedup.flagged_ids(world["out"] / "dedup.json") == set(flagged)
    assert _digests(world["corpus"], world["bench"]) == before  # source data only read


def test_hard_negatives_look_alike_but_have_no_margin(world: dict) -> None:
    """Scores of every test image (threshold 0 flags all): the renders sit far below the copies in margin."""
    out = world["out"].parent / "out_all"
    records = {r["id"]: r for r in _run(world, out, DedupConfig(margin_threshold=0.0, use_hash=False))["flagged"]}
    renders = {i: r for i, r in records.items() if "new" in i}
    copies = [r for i, r in records.items() if "new" not in i]
    assert len(renders) == 6 and max(r["margin"] for r in renders.values()) < 0.25 < 0.4 < min(r["margin"]
                                                                                             for r in copies)
    assert renders[HARD_NEGATIVE]["margin"] < 0.05
    assert 0.6 < renders[HARD_NEGATIVE]["similarity"] < 0.9  # looks alike, yet nowhere near a copy's margin


def test_corpus_cache_is_reused_and_refreshed_per_part(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    out = world["out"].parent / "out_cache"
    small = DedupConfig(image_size=32)  # the cnn's input size sets the decode side of all parts: keep it fixed
    first = _run(world, out, small)
    cache = out / descriptors.CACHE_NAME
    stamp, hashes = cache.stat().st_mtime_ns, np.load(cache)["hashes"]
    assert np.load(cache)["tiny"].shape == (200 * 59, 432) and np.load(cache)["tiny"].dtype == np.float16

    def no_corpus_pass(*args, **kwargs):
        raise AssertionError("the corpus was described again")

    with monkeypatch.context() as patch:
        patch.setattr(descriptors, "iter_shards", no_corpus_pass)
        again = _run(world, out, small)
        alone = _run(world, out, DedupConfig(descriptor="", image_size=32))
    assert again["corpus"]["cache"] == "hit" and alone["corpus"]["cache"] == "hit"
    assert again["flagged"] == first["flagged"] and cache.stat().st_mtime_ns == stamp
    assert alone["evaluation"]["margin_only"] is None and "margin" not in alone["evaluation"]["sweep"]
    assert {r["by"] for r in alone["flagged"]} == {"hash"} and len(alone["flagged"]) == 6

    # Other views: the tiny part is recomputed (its fingerprint holds the views), the hashes kept.
    fewer = _run(world, out, DedupConfig(view_grid=[1], image_size=32))
    assert fewer["corpus"]["cache"] == "partial" and fewer["corpus"]["views"] == 3
    assert np.array_equal(np.load(cache)["hashes"], hashes) and np.load(cache)["tiny"].shape == (600, 432)

    # The cnn descriptor from a random trunk: a part of its own; another seed recomputes only it.
    cnn = DedupConfig(descriptor="cnn", image_size=32)
    grid = _run(world, out, cnn)
    assert grid["corpus"]["cache"] == "partial" and grid["trunk"] == {"init": "", "depth": 10, "width": 16, "seed": 0}
    assert np.array_equal(np.load(cache)["hashes"], hashes)  # one decode side for all descriptors: hashes kept
    assert np.load(cache)["cnn"].shape == (200 * 59, 64 * 4 * 4)  # layer3 (4 x width channels) on a 4 x 4 grid
    exact = {r["id"]: r for r in grid["flagged"]}["classification/test/cat/exact.jpg"]
    assert exact["similarity"] == pytest.approx(1.0, abs=1e-3)
    other = _run(world, out, cnn, seed=1)
    assert other["corpus"]["cache"] == "partial" and other["trunk"]["seed"] == 1
    with monkeypatch.context() as patch:
        patch.setattr(descriptors, "iter_shards", no_corpus_pass)
        back = _run(world, out, DedupConfig(view_grid=[1], image_size=32))
    assert back["corpus"]["cache"] == "hit"  # the tiny part was kept alongside the cnn part

    cache.write_bytes(b"not an npz")  # a damaged cache is rebuilt, not trusted
    rebuilt = _run(world, out, small)
    assert rebuilt["corpus"]["cache"] == "miss" and rebuilt["flagged"] == first["flagged"]


def test_corpus_described_by_shard_range_jobs_is_assembled(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _run(world, world["out"].parent / "whole")
    out = world["out"].parent / "parts"
    split = DedupConfig(extract_jobs=2)
    parts = [dedup.describe_corpus_part(str(world["corpus"]), str(out), split, "", MODEL, part, progress=False)
             for part in range(2)]
    assert [p["range"] for p in parts] == [[0, 1], [1, 2]] and [p["images"] for p in parts] == [100, 100]
    again = dedup.describe_corpus_part(str(world["corpus"]), str(out), split, "", MODEL, 1, progress=False)
    assert again["cache"] == "hit"

    def no_corpus_pass(*args, **kwargs):
        raise AssertionError("the corpus was described again")

    with monkeypatch.context() as patch:
        patch.setattr(descriptors, "iter_shards", no_corpus_pass)
        assembled = _run(world, out, split)
    assert assembled["corpus"]["assembled_parts"] is True and assembled["corpus"]["images"] == 200
    assert assembled["flagged"] == whole["flagged"]
    cache = np.load(out / descriptors.CACHE_NAME)
    assert np.array_equal(cache["tiny"], np.load(world["out"].parent / "whole" / descriptors.CACHE_NAME)["tiny"])

    # a missing range: the dedup job makes its own pass rather than use half a corpus
    lonely = world["out"].parent / "one_part"
    dedup.describe_corpus_part(str(world["corpus"]), str(lonely), split, "", MODEL, 0, progress=False)
    assert _run(world, lonely, split)["corpus"]["assembled_parts"] is False
    assert descriptors.shard_range(10, 2, 3) == (6, 10)
    with pytest.raises(ValueError, match="part 3 of 3"):
        descriptors.shard_range(10, 3, 3)


def test_bad_settings_are_refused(world: dict) -> None:
    with pytest.raises(ValueError, match="descriptor"):
        _run(world, world["out"].parent / "bad", DedupConfig(descriptor="sift"))
    with pytest.raises(ValueError, match="nothing to compare"):
        _run(world, world["out"].parent / "bad", DedupConfig(descriptor="", use_hash=False))
    with pytest.raises(ValueError, match="margin"):
        _run(world, world["out"].parent / "bad", DedupConfig(margin="lowe"))
    with pytest.raises(ValueError, match="extract_jobs=0"):
        _run(world, world["out"].parent / "bad", DedupConfig(extract_jobs=0))


def test_flagged_ids_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"flagged": []}))
    with pytest.raises(ValueError, match="not a dedup manifest"):
        dedup.flagged_ids(tmp_path / "x.json")

"""Dedup at scale: heavy edits, calibration, IVF-PQ, the per-corpus index reused across benchmarks, the audit
report, and duplicate clusters inside the corpus."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transfer.dedup as dedup
import transfer.descriptors as descriptors
import transfer.index as index_module
from pretrain.config import ShardsConfig, VocabConfig
from pretrain.dupes import clusters_of, hash_all, keep_mask, summarise
from pretrain.ingest import ingest_folder
from tests.unit.test_dedup import MODEL, world  # noqa: F401  (the module-scoped corpus + benchmark fixture)
from transfer.backbone import load_trunk
from transfer.calibrate import calibrate, calibration_set, choose_threshold, pr_curve
from transfer.config import CopyNetConfig, DedupConfig, IndexConfig
from transfer.copydetect import load_or_train
from transfer.edits import HEAVY_AREA_RANGE, HEAVY_EDITS, apply_edit, random_chains
from transfer.index import build_index
from webly.audit import build_audit
from webly.cli import main
from webly.results import TransferRow

IVF = IndexConfig(kind="ivfpq", pca_dims=64, pq_bytes=16, ivf_lists=8, nprobe=8)


def test_heavy_edits_change_the_image_and_carry_annotations() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[10:30, 5:20] = True
    for edit in HEAVY_EDITS:
        out = apply_edit(image, edit, np.random.default_rng(1), [mask], [[(10.0, 20.0, 2)]])
        assert out.image.size == (64, 64) and out.edit == edit
        assert np.abs(np.asarray(out.image, float) - np.asarray(image, float)).mean() > 1.0, edit
    flipped = apply_edit(image, "flip", np.random.default_rng(1), [mask], [[(10.0, 20.0, 2)]])
    assert np.array_equal(np.asarray(flipped.image), np.asarray(image)[:, ::-1])
    assert np.array_equal(flipped.masks[0], mask[:, ::-1]) and flipped.keypoints[0][0] == (54.0, 20.0, 2)
    crop = apply_edit(image, "crop50", np.random.default_rng(2))
    x0, y0, x1, y1 = crop.params["crop"]
    assert HEAVY_AREA_RANGE[0] - 0.03 <= (x1 - x0) * (y1 - y0) / 64**2 <= HEAVY_AREA_RANGE[1] + 0.03
    assert apply_edit(image, "jpeg20", np.random.default_rng(0)).params["quality"] == 20
    assert apply_edit(image, "text", np.random.default_rng(0)).params["text"]["word"]


def test_edit_chains_are_distinct_steps_drawn_per_seed(world: dict) -> None:  # noqa: F811
    chains = random_chains(HEAVY_EDITS, 3, 50, np.random.default_rng(7))
    assert chains == random_chains(HEAVY_EDITS, 3, 50, np.random.default_rng(7))
    assert chains != random_chains(HEAVY_EDITS, 3, 50, np.random.default_rng(8))
    steps = [c.split("+") for c in chains]
    assert all(len(set(s)) == 3 and set(s) <= set(HEAVY_EDITS) for s in steps)
    assert len({s[0] for s in steps}) > 3  # the order is drawn too, not fixed
    with pytest.raises(ValueError, match="between 1 and the 6"):
        random_chains(HEAVY_EDITS, 7, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop50\\+jpeg20"):
        random_chains(["crop50+jpeg20", "flip"], 2, 1, np.random.default_rng(0))
    corpus = str(world["corpus"])
    items, truth, _ = calibration_set(corpus, 4, HEAVY_EDITS, seed=0, chain=2)
    again, truth_again, _ = calibration_set(corpus, 4, HEAVY_EDITS, seed=0, chain=2)
    assert items == again and truth == truth_again and len(items) == 8  # 4 copies + 4 negatives
    for (copy_id, _), (new_id, _), record in zip(items[:4], items[4:], truth, strict=True):
        edit = record["edit"]
        assert len(set(edit.split("+"))) == 2 and copy_id.endswith(f"-{edit}.jpg") and new_id.endswith(f"-{edit}.jpg")
    other_seed = calibration_set(corpus, 4, HEAVY_EDITS, seed=1, chain=2)[1]
    assert [r["edit"] for r in other_seed] != [r["edit"] for r in truth]
    single = calibration_set(corpus, 4, HEAVY_EDITS, seed=0)[1]  # chain 1: the edits cycle, as before
    assert [r["edit"] for r in single] == list(HEAVY_EDITS[:4])
    with pytest.raises(ValueError, match="dedup.calibration.chain=0"):
        calibration_set(corpus, 4, HEAVY_EDITS, seed=0, chain=0)


def test_calibration_sweep_picks_the_threshold_meeting_the_target_precision() -> None:
    rng = np.random.default_rng(0)
    copies, negatives = rng.uniform(0.3, 1.0, 200), rng.uniform(0.0, 0.45, 400)
    margin = np.concatenate([copies, negatives])
    ids = [f"calibration/copy/{i}" for i in range(200)] + [f"calibration/new/{i}" for i in range(400)]
    truth = [{"id": ids[i], "edit": ("crop50", "flip")[i % 2]} for i in range(200)]
    curve = pr_curve(margin, np.arange(600) < 200)
    assert [p["threshold"] for p in curve] == sorted((p["threshold"] for p in curve), reverse=True)
    assert curve[-1]["recall"] == 1.0 and curve[-1]["flagged"] == 600
    record = calibrate(ids, margin, truth, 0.99, fallback=0.4)
    flagged = margin >= record["threshold"]
    precision = flagged[:200].sum() / flagged.sum()
    assert record["reached"] and precision >= 0.99 and record["precision"] == pytest.approx(precision, abs=1e-6)
    # the most recall any threshold with precision >= 0.99 gets, brute force
    best = max((margin[:200] >= t).mean() for t in margin if (margin >= t)[:200].sum() / (margin >= t).sum() >= 0.99)
    assert record["recall"] == pytest.approx(best, abs=1e-6)
    assert 0.4 < record["threshold"] <= 0.46  # just above the negatives' top
    assert set(record["per_edit"]) == {"crop50", "flip"} and len(record["curve"]) <= 201
    unreachable = calibrate(ids, -margin, truth, 0.99, fallback=0.4)  # scores reversed: copies rank last
    assert not unreachable["reached"] and unreachable["threshold"] == 0.4
    assert choose_threshold([{"threshold": 0.5, "precision": 0.9, "recall": 1.0}], 0.95) is None


def test_ivfpq_finds_planted_copies() -> None:
    rng = np.random.default_rng(0)
    images, views, dims = 4000, 2, 32
    vectors = rng.standard_normal((images * views, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    planted = rng.choice(images, 40, replace=False)
    queries = rng.standard_normal((80, dims)).astype(np.float32)
    queries[:40] = vectors[planted * views + 1] + 0.3 * queries[:40] / np.sqrt(dims)  # near a zoomed view
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ivf = build_index(vectors.astype(np.float16), views, IndexConfig(kind="ivfpq", pq_bytes=8, ivf_lists=16,
                                                                     nprobe=16))
    flat = build_index(vectors.astype(np.float16), views, IndexConfig(kind="flat"))
    assert ivf.kind == "ivfpq" and ivf.bytes_per_image() < flat.bytes_per_image()
    matches, margin = dedup.best_orientation(queries, ivf, 1, DedupConfig())
    assert np.mean(matches.image1[:40] == planted) >= 0.95
    assert np.median(margin[:40]) > np.percentile(margin[40:], 95)
    with pytest.raises(ValueError, match="pq_bytes"):
        build_index(vectors, views, IndexConfig(kind="ivfpq", pq_bytes=7))


def _run(world: dict, bench: Path, out: Path, cfg: DedupConfig) -> dict:  # noqa: F811
    return dedup.run_dedup(str(world["corpus"]), str(bench), str(out), cfg, "", MODEL, progress=False, threads=1)


def test_index_is_built_once_and_reused_for_a_second_benchmark(world: dict, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                               tmp_path: Path) -> None:
    cfg = DedupConfig(index=IVF, index_dir=str(tmp_path / "index"))
    first = _run(world, world["bench"], tmp_path / "a", cfg)
    assert first["index"]["kind"] == "ivfpq" and first["index"]["cache"] == "miss"
    assert Path(first["index"]["file"]).parent.parent == tmp_path / "index"  # one folder per corpus
    flagged = {r["id"] for r in first["flagged"]}
    # PQ scores are approximate (a look-alike render may pass); the planted copies are all still found
    assert {"classification/test/cat/exact.jpg", "classification/test/dog/crop.jpg"} <= flagged
    assert len(flagged & {r["id"] for r in _run(world, world["bench"], tmp_path / "flat", DedupConfig())["flagged"]}
               ) >= 7
    other = tmp_path / "other_bench"  # a second benchmark: the classification test set alone
    shutil.copytree(world["bench"] / "classification", other / "classification")

    def fail(*args, **kwargs):
        raise AssertionError("the corpus was described or indexed again")

    monkeypatch.setattr(descriptors, "iter_shards", fail)
    monkeypatch.setattr(index_module, "build_index", fail)
    second = _run(world, other, tmp_path / "b", cfg)
    assert second["index"]["cache"] == "hit" and second["index"]["file"] == first["index"]["file"]
    assert second["corpus"]["cache"] == "hit" and not (tmp_path / "b" / descriptors.CACHE_NAME).exists()
    assert {r["id"] for r in second["flagged"]} == {i for i in flagged if i.startswith("classification")}


def test_audit_report_writes_gallery_sweep_and_markdown(world: dict, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "dedup"
    result = _run(world, world["bench"], out, DedupConfig())
    assert len(result["near_misses"]) == result["test_images"] - len(result["flagged"])  # all 6 renders
    assert max(r["margin"] for r in result["near_misses"]) < result["thresholds"]["margin_threshold"]
    rows = [TransferRow("pretrained", "tiny-1000", 1000, "tiny", 10, "sigmoid", 0, "classification", "frozen",
                        "top1", 0.61, 0.58)]
    paths = build_audit(out, str(world["corpus"]), str(world["bench"]), rows)
    for name in ("gallery", "sweep"):
        with Image.open(paths[name]) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    text = Path(paths["audit"]).read_text()
    assert "![gallery](gallery.png)" in text and "![sweep](sweep.png)" in text
    assert "| classification | test | 7 | 5 | 71.430 |" in text and "| detection | test | 4 | 2 | 50.000 |" in text
    assert "| classification | frozen | tiny-1000 | top1 | 0.610 | 0.580 | -0.030 |" in text


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_within_corpus_duplicate_clusters_are_counted_and_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
              for _ in range(5)]
    files = {f"p{i}.jpg": _jpeg(p) for i, p in enumerate(photos)}
    files["p0_again.jpg"] = _jpeg(photos[0], 70)  # re-encoded
    files["p0_small.jpg"] = _jpeg(photos[0].resize((48, 48), Image.BILINEAR))  # resized
    files["p3_copy.png"] = files["p3.jpg"]  # the same bytes under another name
    for name, data in files.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
        (tmp_path / "in" / name).with_suffix(".txt").write_text("tag\n")
    codes, ok = hash_all([*files.values(), b"not an image"])
    assert ok.tolist() == [True] * 8 + [False]
    clusters = clusters_of(codes, ok)
    names = list(files)
    assert [[names[i] for i in c] for c in clusters] == [["p0.jpg", "p0_again.jpg", "p0_small.jpg"],
                                                         ["p3.jpg", "p3_copy.png"]]
    assert summarise(clusters, 8) == {"images": 8, "clusters": 2, "images_in_clusters": 5, "redundant": 3,
                                      "largest": 3}
    assert keep_mask(clusters, 8).sum() == 5
    cfg = ShardsConfig(input=str(tmp_path / "in"), samples_per_shard=4, heldout_fraction=0.0, subsets=[1.0],
                       vocab=VocabConfig(min_count=1))
    counted = ingest_folder(tmp_path / "counted", cfg)
    assert counted["num_samples"] == 8 and counted["ingest"]["duplicates"]["clusters"] == 2
    cfg.duplicates = "drop"
    dropped = ingest_folder(tmp_path / "dropped", cfg)
    assert dropped["num_samples"] == 5 and dropped["ingest"]["duplicates"]["dropped"] == 3
    cfg.duplicates = "maybe"
    with pytest.raises(ValueError, match="shards.duplicates"):
        ingest_folder(tmp_path / "bad", cfg)


def test_copy_net_trains_describes_and_is_reused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    items = [(f"k{i}", _jpeg(Image.fromarray(im))) for i, im in enumerate(images)]
    cfg = CopyNetConfig(input_size=32, width=8, dim=16, steps=3, batch_size=6, train_images=12)
    net, log = load_or_train(tmp_path / "copynet.pt", cfg, "corpus-a", iter(items))
    assert log["cache"] == "miss" and log["images"] == 12 and np.isfinite(log["last_loss"])
    vectors = descriptors.CopyDescriber(net, 32)(images[:4, :32, :32])
    assert vectors.shape == (4, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again, log2 = load_or_train(tmp_path / "copynet.pt", cfg, "corpus-a", iter([]))  # no images needed
    assert log2["cache"] == "hit" and np.allclose(descriptors.CopyDescriber(again, 32)(images[:4, :32, :32]), vectors)
    with pytest.raises(ValueError, match=">= 2 decodable"):
        load_or_train(tmp_path / "copynet.pt", cfg, "corpus-b", iter(items[:1]))  # another corpus: retrain


def test_gem_pooled_trunk_descriptor_is_global() -> None:
    trunk = load_trunk("", MODEL)
    views = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    gem = descriptors.TrunkGrid(trunk, 32, 3, 4, pool="gem")(views)
    grid = descriptors.TrunkGrid(trunk, 32, 3, 4)(views)
    assert gem.shape == (3, 64) and grid.shape == (3, 64 * 16)
    assert np.allclose(np.linalg.norm(gem, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="cnn_pool"):
        descriptors.TrunkGrid(trunk, 32, 3, 4, pool="max")


def test_cli_report_flag_turns_the_audit_on(capsys: pytest.CaptureFixture) -> None:
    assert main(["dedup", "--report", "--cfg"]) == 0
    assert "report: true" in capsys.readouterr().out
    assert main(["dedup", "--cfg"]) == 0
    assert "report: false" in capsys.readouterr().out

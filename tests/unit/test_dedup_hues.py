"""Hue-shifted test queries (dedup.query_hues): the HSV shift itself, and a colour-jittered copy found through it."""

from __future__ import annotations

import colorsys
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import transfer.dedup as dedup
from pretrain.config import DataConfig, ModelConfig, ShardsConfig, SynthConfig
from pretrain.shards import Dataset
from pretrain.synthweb.dataset import write_synthweb
from transfer.config import DedupConfig
from transfer.descriptors import corpus_descriptors, describe
from transfer.edits import recolour
from transfer.index import build_index
from transfer.views import hue_shifted


def test_hue_shift_is_the_hsv_shift_and_keeps_each_views_rows_together() -> None:
    views = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3)).astype(np.float32)
    views[0, 0, 0] = (90, 90, 90)  # grey: no hue to shift
    turns = [0.1, -0.3]
    shifted = hue_shifted(views, turns)
    assert shifted.shape == (12, 5, 6, 3) and np.array_equal(shifted[0::3], views)  # as is first, per view
    for row, turn in ((1, 0.1), (2, -0.3)):
        for view in range(4):
            expected = [colorsys.hsv_to_rgb((h + turn) % 1.0, s, v)
                        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in views[view].reshape(-1, 3) / 255.0)]
            got = shifted[view * 3 + row].reshape(-1, 3) / 255.0
            assert np.abs(got - np.array(expected)).max() < 1e-5
    assert np.array_equal(shifted[1, 0, 0], views[0, 0, 0])
    assert hue_shifted(views, []).shape == views.shape


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hues") / "corpus"
    write_synthweb(DataConfig(root=str(root), synth=SynthConfig(num_images=200, heldout_images=20, image_size=64),
                              shards=ShardsConfig(samples_per_shard=100, subsets=[1.0])))
    return root


def test_hue_shifted_queries_find_a_colour_jittered_copy(corpus: Path, tmp_path: Path) -> None:
    """A copy with its hue turned by -0.07 (within the jitter edit's +-0.08) matches its corpus image at cosine
    ~0.87-0.91 as it is and ~0.98 shifted back by the default 0.04: its margin rises by ~0.3."""
    cfg = DedupConfig(use_hash=False)
    _, _, describer, _, boxes, side = dedup.corpus_setup(cfg, "", ModelConfig(), 0, str(corpus), str(tmp_path),
                                                         False)
    described = corpus_descriptors(corpus, tmp_path / "c.npz", None, describer, boxes, side, cfg.batch_size,
                                   progress=False)[0]
    index = build_index(described.vectors, described.views, cfg.index)
    urls = Dataset.open(corpus).train_urls(0)
    train = [(s["__key__"], s["jpg"]) for s in wds.tarfile_to_samples()([{"url": u} for u in urls])]
    for key, data in (train[3], train[105]):
        buffer = io.BytesIO()
        recolour(Image.open(io.BytesIO(data)), 1.0, 1.0, 1.0, -0.07).save(buffer, format="JPEG", quality=95)
        found = {}
        for hues in ([], [-0.04, 0.04]):
            settings = replace(cfg, query_hues=hues)
            queries, query_describer, rows = dedup.query_setup(settings, describer)
            vectors = describe([("copy", buffer.getvalue())], None, query_describer, queries, side,
                               settings.batch_size, progress=False).vectors
            assert len(vectors) == rows == 2 * (1 + len(hues))  # as is and mirrored, each with its hue shifts
            matches, margin = dedup.best_orientation(vectors, index, rows, settings)
            assert described.keys[matches.image1[0]] == key
            found[len(hues)] = (float(matches.s1[0]), float(margin[0]))
        assert found[0][0] < 0.95 < 0.97 < found[2][0]
        assert found[2][1] > found[0][1] + 0.2 and found[2][1] > 0.7 > 0.5 > found[0][1]


@pytest.mark.parametrize("hues", [[0.0], [0.6], [-0.5]])
def test_bad_hue_shifts_are_refused(tmp_path: Path, hues: list[float]) -> None:
    # the settings are checked before any corpus or benchmark is read
    with pytest.raises(ValueError, match=r"dedup.query_hues=.*between -0.5 and 0.5"):
        dedup.run_dedup(str(tmp_path / "corpus"), str(tmp_path), str(tmp_path / "out"), DedupConfig(query_hues=hues),
                        "", ModelConfig(), progress=False)

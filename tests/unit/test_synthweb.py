"""The synthetic web: a deterministic world, faithful masks and keypoints, and tags as noisy as configured."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import unicodedata
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pretrain.config import SynthConfig
from pretrain.synthweb import (
    ATTRIBUTE_WORDS,
    COLOURS,
    KEYPOINT_NAMES,
    KEYPOINT_SKELETON,
    NUM_KEYPOINTS,
    SHAPES,
    TEXTURES,
    ObjectSpec,
    corpus_sample,
    iter_corpus,
    make_world,
    noisy_tags,
    render_scene,
    sample_objects,
)

CFG = SynthConfig()


def clean(tag: str) -> str:
    """What a downstream normaliser does: fold unicode and accents, lowercase, strip '#' and punctuation."""
    tag = "".join(ch for ch in unicodedata.normalize("NFKD", tag) if not unicodedata.combining(ch))
    return tag.lower().lstrip("#").rstrip("!.?,")


@pytest.fixture(scope="module")
def world():
    return make_world(CFG.num_concepts, CFG.seed, CFG.zipf)


@pytest.fixture(scope="module")
def corpus(world):
    return list(iter_corpus(world, CFG, "train", 0, 1000))


def test_world_is_deterministic_distinct_and_balanced(world):
    assert make_world(CFG.num_concepts, CFG.seed, CFG.zipf) == world
    other = make_world(CFG.num_concepts, CFG.seed + 1, CFG.zipf)
    assert [c.name for c in other.concepts] != [c.name for c in world.concepts]

    assert len(SHAPES) >= 12 and len(COLOURS) >= 10 and len(TEXTURES) >= 4
    assert len(set(COLOURS.values())) == len(COLOURS)
    combos = {(c.shape, c.colour, c.texture) for c in world.concepts}
    assert len(combos) == CFG.num_concepts
    # Every attribute value recurs, so no single attribute identifies a concept.
    for values, attr in ((SHAPES, "shape"), (COLOURS, "colour"), (TEXTURES, "texture")):
        counts = Counter(getattr(c, attr) for c in world.concepts)
        assert set(counts) == set(values) and min(counts.values()) >= 2, attr

    words = [w for c in world.concepts for w in (c.name, *c.synonyms)]
    assert len(words) == len(set(words)) and all(w.isalpha() and w.isascii() for w in words)
    assert all(1 <= len(c.synonyms) <= 2 for c in world.concepts)
    assert not set(words) & set(world.noise_words) and not set(words) & ATTRIBUTE_WORDS
    assert not set(world.noise_words) & ATTRIBUTE_WORDS and not set(world.noise_words) & set(world.meta_tags)
    assert len(world.noise_words) >= 250 and len(world.meta_tags) >= 50
    c = world.concepts[5]
    assert world.concept_by_name(c.name) is c and world.concept_by_name(c.synonyms[-1]) is c

    assert world.frequencies.sum() == pytest.approx(1.0)
    assert world.frequencies.max() / world.frequencies.min() == pytest.approx(CFG.num_concepts**CFG.zipf)


def test_make_world_rejects_more_concepts_than_combinations():
    limit = len(SHAPES) * len(COLOURS) * len(TEXTURES)
    assert len(make_world(limit, 0, 1.0).concepts) == limit
    with pytest.raises(ValueError, match="combinations"):
        make_world(limit + 1, 0, 1.0)


def test_samples_are_deterministic_per_seed_split_and_index(world, corpus):
    again = corpus_sample(world, CFG, "train", 7)
    assert again["jpg"] == corpus[7]["jpg"] and again["json"] == corpus[7]["json"]
    assert again["__key__"] == "train-00000007"
    # A range generated on its own equals the same slice of a longer run.
    assert [s["jpg"] for s in iter_corpus(world, CFG, "train", 995, 5)] == [s["jpg"] for s in corpus[995:]]
    reseeded = corpus_sample(world, dataclasses.replace(CFG, seed=CFG.seed + 1), "train", 7)
    heldout = corpus_sample(world, CFG, "heldout", 7)
    for different in (reseeded, heldout):
        assert different["jpg"] != again["jpg"] and different["json"]["tags"] != again["json"]["tags"]
    assert len({s["jpg"] for s in corpus}) == len(corpus)


def test_images_decode_at_the_configured_size(world, corpus):
    for sample in corpus[:50]:
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (CFG.image_size, CFG.image_size)
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std() > 10  # objects on a background, not a flat fill
    big = corpus_sample(world, dataclasses.replace(CFG, image_size=96), "train", 0)
    assert Image.open(io.BytesIO(big["jpg"])).size == (96, 96)


def test_concept_frequencies_follow_the_zipf_law(world):
    rng = np.random.default_rng(0)
    counts = Counter(o.concept for _ in range(2000) for o in sample_objects(world, rng, 64, CFG.max_objects))
    head, tail = int(np.argmax(world.frequencies)), int(np.argmin(world.frequencies))
    assert counts[head] > 10 * max(counts[tail], 1)
    total = sum(counts.values())
    assert 2000 <= total <= 2000 * CFG.max_objects
    assert counts[head] / total == pytest.approx(world.frequencies[head], abs=0.03)


def test_objects_are_mostly_inside_and_sized_by_the_image(world):
    rng = np.random.default_rng(1)
    specs = [o for _ in range(500) for o in sample_objects(world, rng, 64, CFG.max_objects)]
    radii = np.array([o.radius for o in specs]) / 64
    assert radii.min() >= 0.18 and radii.max() <= 0.35
    inside = np.mean([0 <= o.x < 64 and 0 <= o.y < 64 for o in specs])
    assert inside > 0.95


def _tag_stats(world, samples):
    """(fraction of tags that are noise words, recall of present concepts, synonym share of concept tags)."""
    noise_words = set(world.noise_words)
    concept_of = {w: c.index for c in world.concepts for w in (c.name, *c.synonyms)}
    known = noise_words | ATTRIBUTE_WORDS | set(world.meta_tags) | set(concept_of)
    n_tags = n_noise = n_present = n_tagged = n_synonym = 0
    for tags, present in samples:
        words = [clean(t) for t in tags]
        assert set(words) <= known, set(words) - known
        assert len(words) == len(set(words))
        n_tags += len(words)
        n_noise += sum(w in noise_words for w in words)
        for index in present:
            c = world.concepts[index]
            n_present += 1
            n_tagged += c.name in words or any(s in words for s in c.synonyms)
            n_synonym += any(s in words for s in c.synonyms)
        # No tag names a concept that is not in the picture.
        assert {concept_of[w] for w in words if w in concept_of} <= set(present)
    return n_noise / n_tags, n_tagged / n_present, n_synonym / max(n_tagged, 1)


def test_corpus_tags_match_configured_noise_and_recall(world, corpus):
    samples = [(s["json"]["tags"], s["json"]["meta"]["concepts"]) for s in corpus]
    noise, recall, synonyms = _tag_stats(world, samples)
    assert noise == pytest.approx(CFG.noise, abs=0.05)
    assert recall == pytest.approx(CFG.recall, abs=0.05)
    assert synonyms == pytest.approx(CFG.synonym_rate, abs=0.06)
    raw = [t for s in corpus for t in s["json"]["tags"]]
    # The raw strings are web-messy, so normalisation downstream has work to do.
    assert sum(t.startswith("#") for t in raw) > 0.03 * len(raw)
    assert sum(not t.isascii() for t in raw) > 0.02 * len(raw)
    assert sum(t != t.lower() for t in raw) > 0.05 * len(raw)
    assert sum(t != clean(t) for t in raw) < 0.6 * len(raw)


@pytest.mark.parametrize("noise, recall", [(0.5, 0.4), (0.05, 0.95)])
def test_noisy_tags_follow_other_rates(world, noise, recall):
    cfg = dataclasses.replace(CFG, noise=noise, recall=recall)
    rng = np.random.default_rng(2)
    samples = []
    for _ in range(1000):
        present = sorted({o.concept for o in sample_objects(world, rng, 64, cfg.max_objects)})
        samples.append((noisy_tags(world, present, rng, cfg), present))
    got_noise, got_recall, _ = _tag_stats(world, samples)
    assert got_noise == pytest.approx(noise, abs=0.05)
    assert got_recall == pytest.approx(recall, abs=0.05)


def test_corpus_meta_describes_the_present_objects(world, corpus):
    for sample in corpus[:200]:
        assert json.loads(json.dumps(sample["json"])) == sample["json"]  # plain JSON types only
        meta = sample["json"]["meta"]
        assert meta["source"] == "synthweb" and meta["user"] and meta["date"][:2] == "20"
        assert meta["concepts"] == sorted({o["concept"] for o in meta["objects"]})
        for obj in meta["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= CFG.image_size and 0 <= y0 < y1 <= CFG.image_size
    assert max(len(s["json"]["meta"]["concepts"]) for s in corpus) >= 3


def test_masks_match_tight_bboxes_and_areas(world):
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(200):
        scene = render_scene(world, sample_objects(world, rng, 64, 4), 64, rng)
        assert scene.image.size == (64, 64) and scene.image.mode == "RGB"
        union = np.zeros((64, 64), dtype=int)
        for obj in scene.objects:
            assert obj.mask.shape == (64, 64) and obj.mask.dtype == bool
            assert obj.area == int(obj.mask.sum()) and obj.area <= obj.full_area * 1.1
            union += obj.mask
            if obj.area == 0:
                assert obj.bbox == (0.0, 0.0, 0.0, 0.0)
                continue
            x0, y0, x1, y1 = (int(b) for b in obj.bbox)
            inside = np.zeros_like(obj.mask)
            inside[y0:y1, x0:x1] = True
            assert not (obj.mask & ~inside).any()  # every mask pixel in the box
            box = obj.mask[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # the box is tight
            checked += 1
        assert union.max() <= 1  # visible masks never overlap
    assert checked > 300


def test_keypoints_are_the_extremes_of_the_drawn_silhouette(world):
    assert NUM_KEYPOINTS == len(KEYPOINT_NAMES) == 5
    assert all(0 <= a < NUM_KEYPOINTS and 0 <= b < NUM_KEYPOINTS for a, b in KEYPOINT_SKELETON)
    circle = next(c for c in world.concepts if c.shape == "circle")
    diamond = next(c for c in world.concepts if c.shape == "diamond")  # |u| / 0.62 + |v| <= 1: tall
    rng = np.random.default_rng(4)
    tall = [(32, 12), (44.4, 32), (32, 52), (19.6, 32), (32, 32)]
    wide = [(32, 19.6), (52, 32), (32, 44.4), (12, 32), (32, 32)]  # a quarter turn lays it on its side
    round_ = [(32, 12), (52, 32), (32, 52), (12, 32), (32, 32)]  # a circle looks the same whatever its turn
    cases = [(circle, 0.0, round_), (circle, math.pi / 2, round_), (circle, 1.0, round_),
             (diamond, 0.0, tall), (diamond, math.pi / 2, wide)]
    for concept, rotation, expected in cases:
        (obj,) = render_scene(world, [ObjectSpec(concept.index, 32, 32, 20, rotation)], 64, rng).objects
        points = np.array([(x, y) for x, y, _ in obj.keypoints])
        np.testing.assert_allclose(points, np.array(expected, dtype=float), atol=0.6)
        assert [v for *_, v in obj.keypoints] == [2] * NUM_KEYPOINTS

    # Half outside the image: those keypoints are flagged 0, and all are flagged by the image bounds.
    for _ in range(100):
        for obj in render_scene(world, sample_objects(world, rng, 64, 4), 64, rng).objects:
            assert len(obj.keypoints) == NUM_KEYPOINTS
            for x, y, v in obj.keypoints:
                assert (v == 0) == (not (0 <= x < 64 and 0 <= y < 64)) and v in (0, 1, 2)
    (edge,) = render_scene(world, [ObjectSpec(circle.index, 2, 32, 15, 0.0)], 64, rng).objects
    assert [v for *_, v in edge.keypoints] == [2, 2, 2, 0, 2]


def test_later_objects_occlude_earlier_ones(world):
    square = next(c for c in world.concepts if c.shape == "square")
    circle = next(c for c in world.concepts if c.shape == "circle")
    rng = np.random.default_rng(5)
    below = ObjectSpec(square.index, 24, 32, 18, 0.0)
    (alone,) = render_scene(world, [below], 64, rng).objects
    under, over = render_scene(world, [below, ObjectSpec(circle.index, 40, 32, 14, 0.0)], 64, rng).objects
    assert alone.area == pytest.approx(alone.full_area, rel=0.05)
    assert 0 < under.area < alone.area - 100
    assert not (under.mask & ~alone.mask).any() and not (under.mask & over.mask).any()
    assert over.area == pytest.approx(over.full_area, rel=0.05)
    assert [v for *_, v in under.keypoints] == [2, 1, 2, 2, 2]  # the square's right edge is under the circle

    # Completely hidden objects are still reported, with an empty mask; callers decide what to do with them.
    cover = ObjectSpec(circle.index, 32, 32, 30, 0.0)
    hidden, _ = render_scene(world, [ObjectSpec(square.index, 32, 32, 8, 0.0), cover], 64, rng).objects
    assert hidden.area == 0 and hidden.visible_fraction == 0.0
    assert all(v == 1 for *_, v in hidden.keypoints)

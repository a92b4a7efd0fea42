"""The noisy web corpus: cluttered images of concepts with the messy tags a web uploader would give them.

Every sample is a pure function of (seed, split, index), so any range of the corpus can be generated in any
order, in parallel, and reproduced bit for bit.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator
from functools import cache

import numpy as np

from ..config import SynthConfig
from .render import ObjectSpec, RenderedObject, Scene, render_scene
from .world import World

# Objects hidden (occluded or off-image) beyond this fraction are not "present": nobody would tag them.
MIN_VISIBLE_FRACTION = 0.25

# How often a raw tag string gets each kind of web mess (case, '#', trailing punctuation, unicode variant).
_MESS_RATES = {"case": 0.15, "hash": 0.1, "punct": 0.06, "accent": 0.06, "fullwidth": 0.02}
_ACCENTS = {"a": "áàâä", "e": "éèêë", "i": "íìîï", "o": "óòôö", "u": "úùûü"}
_TITLE_STEMS = ("IMG_{:04d}", "DSC_{:04d}", "DSCN{:04d}", "P{:07d}", "photo {}", "untitled {}")


def sample_objects(world: World, rng: np.random.Generator, size: int, max_objects: int) -> list[ObjectSpec]:
    """1..max_objects objects with Zipf-drawn concepts, radius 18-35% of the side, mostly inside the image."""
    count = int(rng.integers(1, max_objects + 1))
    concepts = rng.choice(world.num_concepts, size=count, p=world.frequencies)
    specs: list[ObjectSpec] = []
    for concept in concepts:
        radius = float(rng.uniform(0.18, 0.35)) * size
        lo, hi = (0.2 * size, 0.8 * size) if rng.random() < 0.9 else (0.0, float(size))
        # Of a few candidate centres keep the one farthest from the others, so clutter rarely hides an object.
        candidates = rng.uniform(lo, hi, (6, 2))
        if specs:
            gaps = [
                min(math.dist(p, (o.x, o.y)) - 0.6 * (radius + o.radius) for o in specs) for p in candidates
            ]
            x, y = candidates[int(np.argmax(gaps))]
        else:
            x, y = candidates[0]
        specs.append(ObjectSpec(int(concept), float(x), float(y), radius, float(rng.uniform(0, 2 * math.pi))))
    return specs


@cache
def _noise_word_probs(pool_size: int) -> np.ndarray:
    # Zipf-ish: a few noise words are common, as on the web.
    weights = 1.0 / np.arange(1, pool_size + 1) ** 0.8
    return weights / weights.sum()


def _mess_up(tag: str, rng: np.random.Generator) -> str:
    """A raw web spelling of a clean tag; a normaliser (NFKD, strip marks, lowercase, strip '#' and
    punctuation) recovers the clean tag."""
    draws = rng.random(len(_MESS_RATES))
    mess = {kind: bool(d < p) for (kind, p), d in zip(_MESS_RATES.items(), draws, strict=True)}
    if mess["accent"]:
        spots = [i for i, ch in enumerate(tag) if ch in _ACCENTS]
        if spots:
            i = spots[int(rng.integers(len(spots)))]
            options = _ACCENTS[tag[i]]
            tag = tag[:i] + options[int(rng.integers(len(options)))] + tag[i + 1 :]
    if mess["fullwidth"]:
        tag = "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in tag)
    if mess["case"]:
        tag = tag.upper() if rng.random() < 0.3 else tag.title()
    if mess["hash"]:
        tag = "#" + tag
    if mess["punct"]:
        tag += "!.?,"[int(rng.integers(4))]
    return tag


def noisy_tags(
    world: World, concepts_present: list[int], rng: np.random.Generator, cfg: SynthConfig
) -> list[str]:
    """Raw tags for an image showing `concepts_present`: names with recall < 1, synonyms, attribute words,
    meta tags and noise words, in web spellings, shuffled and without duplicates."""
    clean: list[str] = []
    for index in dict.fromkeys(concepts_present):  # distinct, in order
        concept = world.concepts[index]
        if rng.random() < cfg.recall:
            word = concept.name
            if concept.synonyms and rng.random() < cfg.synonym_rate:
                word = concept.synonyms[int(rng.integers(len(concept.synonyms)))]
            clean.append(word)
        clean.extend(word for word in concept.attributes if rng.random() < cfg.attribute_rate)
    n_meta = min(int(rng.poisson(cfg.meta_rate)), len(world.meta_tags))
    clean.extend(world.meta_tags[i] for i in rng.choice(len(world.meta_tags), n_meta, replace=False))
    clean = list(dict.fromkeys(clean))

    # Noise count: its expectation given the k real tags is k * noise / (1 - noise), so noise tags are a
    # `cfg.noise` fraction of all tags in expectation over the corpus.
    noise = min(max(cfg.noise, 0.0), 0.95)
    n_noise = min(int(rng.poisson(len(clean) * noise / (1 - noise))), len(world.noise_words))
    if n_noise:
        pool = len(world.noise_words)
        picks = rng.choice(pool, n_noise, replace=False, p=_noise_word_probs(pool))
        clean.extend(world.noise_words[i] for i in picks)

    order = rng.permutation(len(clean))
    return [_mess_up(clean[i], rng) for i in order]


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))  # stable across processes, unlike hash()


def _present(objects: list[RenderedObject]) -> list[RenderedObject]:
    return [o for o in objects if o.visible_fraction >= MIN_VISIBLE_FRACTION]


def _metadata(world: World, rng: np.random.Generator) -> dict[str, str]:
    stem = _TITLE_STEMS[int(rng.integers(len(_TITLE_STEMS)))]
    title = stem.format(int(rng.integers(10_000)))
    if rng.random() < 0.3:  # some uploaders write words, mostly junk
        title = " ".join(world.noise_words[i] for i in rng.choice(len(world.noise_words), 2, replace=False))
    user = f"{int(rng.integers(200)) * 7919 % 90_000_000 + 10_000_000}@N0{int(rng.integers(1, 9))}"
    year, month, day = int(rng.integers(2009, 2015)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hour, minute, second = (int(x) for x in rng.integers(0, (24, 60, 60)))
    date = f"{year}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    return {"title": title, "user": user, "date": date}


def _draw_scene(world: World, cfg: SynthConfig, split: str, index: int) -> tuple[Scene, np.random.Generator]:
    """The scene of sample (split, index) and the generator, positioned where the tags are drawn next."""
    rng = np.random.default_rng([cfg.seed, _split_code(split), index])
    specs = sample_objects(world, rng, cfg.image_size, cfg.max_objects)
    return render_scene(world, specs, cfg.image_size, rng), rng


def corpus_scene(world: World, cfg: SynthConfig, split: str, index: int) -> Scene:
    """The rendered scene (before JPEG) of corpus sample (split, index), with every object's visible mask,
    box and keypoints: what benchmarks need to plant annotated near-duplicates of corpus images. Encoding
    `scene.image` as JPEG at `cfg.jpeg_quality` gives exactly the sample's `jpg` bytes."""
    return _draw_scene(world, cfg, split, index)[0]


def corpus_sample(world: World, cfg: SynthConfig, split: str, index: int) -> dict:
    """One webdataset-style sample: {"__key__", "jpg": JPEG bytes, "json": {"tags", "meta"}}."""
    scene, rng = _draw_scene(world, cfg, split, index)
    present = _present(scene.objects)
    concepts = sorted({o.concept for o in present})
    tags = noisy_tags(world, concepts, rng, cfg)

    buffer = io.BytesIO()
    scene.image.save(buffer, format="JPEG", quality=cfg.jpeg_quality)
    meta = {
        "source": "synthweb",
        "concepts": concepts,
        "objects": [{"concept": o.concept, "bbox": [round(b, 2) for b in o.bbox]} for o in present],
        **_metadata(world, rng),
    }
    return {"__key__": f"{split}-{index:08d}", "jpg": buffer.getvalue(), "json": {"tags": tags, "meta": meta}}


def iter_corpus(world: World, cfg: SynthConfig, split: str, start: int, count: int) -> Iterator[dict]:
    """Samples start .. start + count - 1 of `split`, in order."""
    for index in range(start, start + count):
        yield corpus_sample(world, cfg, split, index)

"""synthweb: a synthetic web of tagged images, for tests and demos that no download can serve.

`make_world` invents visual concepts (shape x colour x texture, with pseudo-word names and a Zipf law);
`render_scene` draws cluttered, occluded scenes of them with masks, boxes and keypoints; `corpus_sample`
turns a (seed, split, index) into a webdataset-style sample with noisy, messily spelled web tags.
"""

from .corpus import MIN_VISIBLE_FRACTION, corpus_sample, iter_corpus, noisy_tags, sample_objects
from .render import (
    KEYPOINT_NAMES,
    KEYPOINT_SKELETON,
    NUM_KEYPOINTS,
    ObjectSpec,
    RenderedObject,
    Scene,
    render_scene,
)
from .world import ATTRIBUTE_WORDS, COLOURS, SHAPES, TEXTURES, Concept, World, make_world

__all__ = [
    "ATTRIBUTE_WORDS",
    "COLOURS",
    "KEYPOINT_NAMES",
    "KEYPOINT_SKELETON",
    "MIN_VISIBLE_FRACTION",
    "NUM_KEYPOINTS",
    "SHAPES",
    "TEXTURES",
    "Concept",
    "ObjectSpec",
    "RenderedObject",
    "Scene",
    "World",
    "corpus_sample",
    "iter_corpus",
    "make_world",
    "noisy_tags",
    "render_scene",
    "sample_objects",
]

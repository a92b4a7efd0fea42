"""Near-duplicate edits of an image together with its annotations: resize, JPEG, crop, recolour and chains.

Light edits (EDITS, planted in the synthetic benchmarks) and heavy ones (HEAVY_EDITS, planted in the held-out
calibration set of transfer/calibrate.py): a crop down to half the area, JPEG at quality 20, a downscale to a
quarter of the side, strong colour jitter, overlaid text and a horizontal flip.

These are the edits that make a web image turn up again in a test set in slightly different form (a thumbnail,
a re-compressed copy, a crop, a filter). Geometric edits carry per-object masks (nearest neighbour on pixel
centres), boxes (recomputed from the masks) and keypoints (moved; flagged 0 once outside) along with the pixels,
so an edited copy is a fully annotated image. Nothing here knows about benchmarks: calibration sets reuse it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (continuous: pixel i spans [i, i + 1))
Keypoints = list[tuple[float, float, int]]  # (x, y, v): v 0 outside / unlabelled, 1 occluded, 2 visible

EDITS: tuple[str, ...] = ("resize", "jpeg", "crop", "recolour")
COMBINATIONS: tuple[str, ...] = ("crop+jpeg", "resize+jpeg", "recolour+jpeg", "crop+recolour", "crop+recolour+jpeg")
ALL_EDITS: tuple[str, ...] = EDITS + COMBINATIONS
HEAVY_EDITS: tuple[str, ...] = ("crop50", "jpeg20", "downscale4", "jitter", "text", "flip")
STEPS: tuple[str, ...] = EDITS + HEAVY_EDITS

# Parameter ranges: strong enough to change every pixel, mild enough that a person calls it the same photo.
SCALE_RANGE = (0.5, 1.5)  # resize: intermediate scale before going to the target size
QUALITY_RANGE = (15, 40)  # jpeg: re-compression quality, inclusive
AREA_RANGE = (0.6, 0.9)  # crop: fraction of the area kept
ASPECT_RANGE = (0.8, 1.25)  # crop: aspect ratio of the kept region relative to the frame
BRIGHTNESS_RANGE = (0.8, 1.2)
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.7, 1.3)
HUE_RANGE = (-0.03, 0.03)  # fraction of the hue circle
HEAVY_AREA_RANGE = (0.5, 0.55)  # crop50: down to half of the area
HEAVY_QUALITY = 20  # jpeg20
DOWNSCALE = 4  # downscale4: each side to a quarter, then back up (a thumbnail enlarged again)
JITTER_RANGES = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.4, 1.6), "hue": (-0.08, 0.08)}
TEXT_HEIGHT = (0.14, 0.22)  # text: glyph height as a fraction of the image height
WORDS = ("SALE", "photo", "2019", "www.site.com", "(c) news", "LOL", "tag me", "free")


@dataclass
class Edited:
    image: Image.Image
    masks: list[np.ndarray]  # bool H x W per object, at the output size
    boxes: list[Box]  # tight boxes of the edited masks; all 0 for an empty mask
    keypoints: list[Keypoints]
    edit: str  # the edit's name, e.g. "crop+jpeg"
    source_box: Box  # the region of the input image that the output shows (the whole input without a crop)
    params: dict[str, Any] = field(default_factory=dict)  # what was drawn, per step: JSON-ready


def tight_box(mask: np.ndarray) -> Box:
    """(x0, y0, x1, y1) of the True pixels (exclusive ends), or all 0 for an empty mask."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def transform_mask(mask: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The part of `mask` inside `box`, stretched to `size` (W, H) by nearest neighbour on pixel centres."""
    width, height = size
    x0, y0, x1, y1 = box
    src_x = np.floor(x0 + (np.arange(width) + 0.5) * ((x1 - x0) / width)).astype(np.int64)
    src_y = np.floor(y0 + (np.arange(height) + 0.5) * ((y1 - y0) / height)).astype(np.int64)
    ok_x = (src_x >= 0) & (src_x < mask.shape[1])
    ok_y = (src_y >= 0) & (src_y < mask.shape[0])
    out = mask[np.clip(src_y, 0, mask.shape[0] - 1)][:, np.clip(src_x, 0, mask.shape[1] - 1)]
    return out & ok_y[:, None] & ok_x[None, :]


def transform_keypoints(keypoints: Keypoints, box: Box, size: tuple[int, int]) -> Keypoints:
    """Keypoints mapped from `box` to an image of `size` (W, H); those that leave the image get v = 0."""
    width, height = size
    x0, y0, x1, y1 = box
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    out: Keypoints = []
    for x, y, v in keypoints:
        nx, ny = (x - x0) * sx, (y - y0) * sy
        inside = 0 <= nx < width and 0 <= ny < height
        out.append((float(nx), float(ny), int(v) if inside else 0))
    return out


def crop_resize(image: Image.Image, box: Box, size: tuple[int, int] | None = None,
                masks: Sequence[np.ndarray] | None = None, keypoints: Sequence[Keypoints] | None = None) -> Edited:
    """Show region `box` of `image` at `size` (default: the image's size), annotations included."""
    size = size or image.size
    out = image.convert("RGB").resize(size, Image.BICUBIC, box=box)
    return _annotate(out, box, size, masks, keypoints, "crop", {"crop": [round(b, 3) for b in box]})


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip at `quality`."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def recolour(image: Image.Image, brightness: float, contrast: float, saturation: float, hue: float) -> Image.Image:
    """Brightness, contrast and saturation factors (1 = unchanged) and a hue shift (fraction of the circle)."""
    image = ImageEnhance.Brightness(image.convert("RGB")).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    image = ImageEnhance.Color(image).enhance(saturation)
    if hue:
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(hue * 256)) % 256  # uint8 hue wraps around
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    return image


def overlay_text(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict[str, Any]]:
    """A caption in a random colour at a random place (meme text, watermarks); returns it and what was drawn."""
    out = image.convert("RGB").copy()
    height = max(6, round(float(rng.uniform(*TEXT_HEIGHT)) * out.size[1]))
    font = ImageFont.load_default(size=height)  # Pillow's bundled font: nothing to find or download
    word = str(WORDS[int(rng.integers(len(WORDS)))])
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x0, y0, x1, y1 = ImageDraw.Draw(out).textbbox((0, 0), word, font=font)
    x = int(rng.integers(0, max(1, out.size[0] - (x1 - x0)) + 1)) - x0
    y = int(rng.integers(0, max(1, out.size[1] - (y1 - y0)) + 1)) - y0
    ImageDraw.Draw(out).text((x, y), word, fill=colour, font=font)
    return out, {"word": word, "xy": [x, y], "height": height, "colour": list(colour)}


def random_edit(rng: np.random.Generator, choices: Sequence[str] = ALL_EDITS) -> str:
    """One edit name drawn uniformly from `choices`."""
    return str(choices[int(rng.integers(len(choices)))])


def random_chains(steps: Sequence[str], length: int, count: int, rng: np.random.Generator) -> list[str]:
    """`count` edit names of `length` distinct steps each, drawn from `steps` in random order and joined by "+"
    ("jitter+crop50+jpeg20": SSCD-style augmentation chains, run left to right by apply_edit). The same rng
    state gives the same list."""
    pool = list(dict.fromkeys(steps))
    unknown = [s for s in pool if s not in STEPS]
    if unknown:
        raise ValueError(f"edit chains are built from single steps; {unknown} are not among {STEPS}")
    if not 1 <= length <= len(pool):
        raise ValueError(f"edit chain length {length}: must be between 1 and the {len(pool)} distinct steps {pool}")
    return ["+".join(pool[i] for i in rng.permutation(len(pool))[:length]) for _ in range(count)]


def _crop_box(rng: np.random.Generator, width: int, height: int,
              area_range: tuple[float, float] = AREA_RANGE) -> tuple[int, int, int, int]:
    """An integer crop keeping `area_range` of the frame, with a mild aspect change, anywhere inside it."""
    area = rng.uniform(*area_range) * width * height
    aspect = float(np.exp(rng.uniform(*np.log(ASPECT_RANGE)))) * width / height
    w = int(np.clip(round(np.sqrt(area * aspect)), 1, width))
    h = int(np.clip(round(area / w), 1, height))
    x0, y0 = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
    return x0, y0, x0 + w, y0 + h


def apply_edit(image: Image.Image, edit: str | None = None, rng: np.random.Generator | None = None,
               masks: Sequence[np.ndarray] | None = None, keypoints: Sequence[Keypoints] | None = None,
               size: tuple[int, int] | None = None, choices: Sequence[str] = ALL_EDITS) -> Edited:
    """Apply `edit` ("crop", "crop+jpeg", ...: steps run left to right), or one drawn from `choices` when it
    is None, to `image` and its per-object `masks` and `keypoints`. Parameters come from `rng` (seeded: the same
    rng state gives the same copy). The output is `size` (W, H), by default the input's size."""
    rng = rng if rng is not None else np.random.default_rng()
    edit = edit or random_edit(rng, choices)
    steps = edit.split("+")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"edit {edit!r}: unknown step(s) {unknown}; steps are {STEPS}, joined by '+'")
    size = size or image.size
    out = image.convert("RGB")
    # The output frame shows `box` of the input: geometric steps compose into one box, so masks and keypoints
    # are resampled once, from the original annotations.
    box: Box = (0.0, 0.0, float(image.size[0]), float(image.size[1]))
    params: dict[str, Any] = {}
    for step in steps:
        if step == "resize":
            scale = float(rng.uniform(*SCALE_RANGE))
            middle = (max(1, round(out.size[0] * scale)), max(1, round(out.size[1] * scale)))
            out = out.resize(middle, Image.BILINEAR).resize(size, Image.BICUBIC)
            params["scale"] = round(scale, 4)
        elif step in ("crop", "crop50"):
            cx0, cy0, cx1, cy1 = _crop_box(rng, *out.size, AREA_RANGE if step == "crop" else HEAVY_AREA_RANGE)
            fx, fy = (box[2] - box[0]) / out.size[0], (box[3] - box[1]) / out.size[1]
            box = (box[0] + cx0 * fx, box[1] + cy0 * fy, box[0] + cx1 * fx, box[1] + cy1 * fy)
            out = out.resize(size, Image.BICUBIC, box=(cx0, cy0, cx1, cy1))
            params["crop"] = [round(b, 3) for b in box]
        elif step in ("jpeg", "jpeg20"):
            quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1)) if step == "jpeg" else HEAVY_QUALITY
            out = jpeg_recompress(out, quality)
            params["quality"] = quality
        elif step == "downscale4":
            small = (max(1, out.size[0] // DOWNSCALE), max(1, out.size[1] // DOWNSCALE))
            out = out.resize(small, Image.BILINEAR).resize(size, Image.BICUBIC)
            params["downscale"] = DOWNSCALE
        elif step == "flip":
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = (box[2], box[1], box[0], box[3])  # x runs backwards: masks and keypoints follow the mirror
            params["flip"] = True
        elif step == "text":
            out, params["text"] = overlay_text(out, rng)
        elif step == "jitter":
            jitter = {k: float(rng.uniform(*r)) for k, r in JITTER_RANGES.items()}
            out = recolour(out, **jitter)
            params["jitter"] = {k: round(v, 4) for k, v in jitter.items()}
        else:  # recolour
            jitter = {
                "brightness": float(rng.uniform(*BRIGHTNESS_RANGE)),
                "contrast": float(rng.uniform(*CONTRAST_RANGE)),
                "saturation": float(rng.uniform(*SATURATION_RANGE)),
                "hue": float(rng.uniform(*HUE_RANGE)),
            }
            out = recolour(out, **jitter)
            params["recolour"] = {k: round(v, 4) for k, v in jitter.items()}
    if out.size != size:  # non-geometric steps only: still honour the requested size
        out = out.resize(size, Image.BICUBIC)
    return _annotate(out, box, size, masks, keypoints, edit, params)


def _annotate(image: Image.Image, box: Box, size: tuple[int, int], masks: Sequence[np.ndarray] | None,
              keypoints: Sequence[Keypoints] | None, edit: str, params: dict[str, Any]) -> Edited:
    new_masks = [transform_mask(np.asarray(m, dtype=bool), box, size) for m in masks or []]
    new_points = [transform_keypoints(list(k), box, size) for k in keypoints or []]
    return Edited(image, new_masks, [tight_box(m) for m in new_masks], new_points, edit, box, params)

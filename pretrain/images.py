"""Image decoding and the crops of the loader, on uint8 data in the workers; float conversion on the device.

Decoding asks libjpeg for a reduced-size image (DCT scaling, `Image.draft`) when the source is much larger
than the crop, and crops and resizes in one PIL call, so a worker does the least work per sample.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

# ImageNet statistics: the usual choice, and what torchvision's trunks expect after transfer.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def decode_rgb(data: bytes, min_side: int) -> Image.Image:
    """Decode an encoded image to RGB, letting JPEG decode at reduced scale while keeping >= min_side.

    Raises OSError / ValueError for undecodable or truncated data (PIL raises on truncated JPEGs at load).
    """
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    image = image.convert("RGB")
    image.load()
    return image


def random_resized_crop(
    image: Image.Image, size: int, rng: random.Random, min_scale: float, flip: bool = True
) -> np.ndarray:
    """RandomResizedCrop (area in [min_scale, 1], aspect in [3/4, 4/3]) + horizontal flip, as HWC uint8."""
    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.randint(0, width - w)
            y0 = rng.randint(0, height - h)
            box = (x0, y0, x0 + w, y0 + h)
            break
    if box is None:  # fall back to the central square
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    crop = image.resize((size, size), Image.BILINEAR, box=box)
    if flip and rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.uint8)


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """The central square, resized to size x size, as HWC uint8 (evaluation)."""
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float, done on the device so the workers hand over 4x fewer bytes."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std

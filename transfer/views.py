"""Views of an image: boxes (in fractions of its width and height) resized to a small square.

Corpus images are described by several views (`view_boxes`: the full image and zoomed crops on a lattice) so
that a cropped copy in a test set meets a view that shows about the same region; `ViewSampler` computes all of
an image's views at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image's width and height
FULL_VIEW: Box = (0.0, 0.0, 1.0, 1.0)
FLIP_VIEW: Box = (1.0, 0.0, 0.0, 1.0)  # x runs right to left: the mirror image (ViewSampler handles it as any box)


def view_grids(fractions: Sequence[float], grid: int | Sequence[int]) -> list[int]:
    """Positions per axis of each zoom: one value for every fraction, or one per fraction."""
    grids = [grid] * len(fractions) if isinstance(grid, int) else list(grid)
    if len(grids) == 1:
        grids = grids * len(fractions)
    if len(grids) != len(fractions):
        raise ValueError(f"view_grid={list(grids)}: give one value for every zoom or one per view fraction "
                         f"({len(fractions)}: {list(fractions)})")
    if any(g < 1 for g in grids):
        raise ValueError(f"view_grid={list(grids)}: need at least one position per axis")
    return grids


def view_boxes(fractions: Sequence[float], grid: int | Sequence[int]) -> list[Box]:
    """The full image, then for each side fraction f a g x g lattice of f x f boxes spread from the top-left
    to the bottom-right corner (g 3: corners, edge midpoints and centre; g 1: the centre only). `grid` is g for
    every fraction or one g per fraction: the smallest zoom needs the densest lattice, since a crop's window
    can sit anywhere in the 1 - f of slack and only the nearest lattice box meets it."""
    boxes = [FULL_VIEW]
    for f, g in zip(fractions, view_grids(fractions, grid), strict=True):
        if not 0.0 < f < 1.0:
            raise ValueError(f"view fraction {f}: a zoomed view keeps a fraction in (0, 1) of each side")
        steps = [0.5] if g == 1 else [i / (g - 1) for i in range(g)]
        for y in steps:
            for x in steps:
                x0, y0 = x * (1 - f), y * (1 - f)
                boxes.append((round(x0, 6), round(y0, 6), round(x0 + f, 6), round(y0 + f, 6)))
    return boxes


class ViewSampler:
    """All views of an image at size x size in two matrix products, with the weights of PIL's antialiased
    bilinear resize (a triangle filter widened by the downscale factor; equal to it up to rounding), kept per
    image shape: ~4x faster than one `Image.resize(box=...)` per view. `describe` runs it with one BLAS
    thread: more spin on these small products when the cores are shared (2 views of a 92 px image: ~0.02 ms
    on one thread, ~45 ms on two at load 9 on the 2-core machine)."""

    def __init__(self, boxes: Sequence[Box], size: int) -> None:
        self.boxes, self.size = list(boxes), size
        self._weights: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _axis(self, length: int, start: float, stop: float) -> np.ndarray:
        scale = (stop - start) / self.size
        centres = start + (np.arange(self.size) + 0.5) * scale
        taps = np.maximum(0.0, 1.0 - np.abs(np.arange(length) + 0.5 - centres[:, None]) / max(scale, 1.0))
        return taps / taps.sum(axis=1, keepdims=True)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> views x size x size x 3 float32."""
        height, width = image.shape[:2]
        if (height, width) not in self._weights:
            rows = np.concatenate([self._axis(height, y0 * height, y1 * height) for _, y0, _, y1 in self.boxes])
            cols = np.stack([self._axis(width, x0 * width, x1 * width) for x0, _, x1, _ in self.boxes])
            self._weights[height, width] = rows.astype(np.float32), cols.astype(np.float32)
        rows, cols = self._weights[height, width]
        n, s = len(self.boxes), self.size
        tall = (rows @ image.reshape(height, -1).astype(np.float32)).reshape(n, s, width, 3)  # rows resampled
        wide = tall.transpose(0, 2, 1, 3).reshape(n, width, s * 3)
        return (cols @ wide).reshape(n, s, s, 3).transpose(0, 2, 1, 3)  # then columns: n x s(rows) x s x 3



def hue_shifted(views: np.ndarray, turns: Sequence[float]) -> np.ndarray:
    """B x ... x 3 RGB -> (B * (1 + len(turns))) x ... x 3: each view as it is, then with its HSV hue shifted by
    each fraction of the colour circle (value and saturation kept), views of one input kept together. A test
    image searched this way meets a colour-jittered copy shifted back: the HSV shift is the inverse of the
    jitter's hue step (a rotation of YIQ chroma is not, and finds fewer of them)."""
    rgb = views.astype(np.float32)
    value, low = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = value - low
    safe = np.where(delta > 0, delta, 1.0)
    red, green, blue = ((value - rgb[..., c]) / safe for c in range(3))  # distance of each channel from the top
    hue = np.where(rgb[..., 0] == value, blue - green,
                   np.where(rgb[..., 1] == value, 2.0 + red - blue, 4.0 + green - red))
    hue = np.where(delta > 0, hue / 6.0 % 1.0, 0.0)
    saturation = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    out = [rgb]
    for turn in turns:
        sector = (hue + turn) % 1.0 * 6.0
        index, fraction = np.floor(sector).astype(np.int64) % 6, sector - np.floor(sector)
        p = value * (1 - saturation)
        q = value * (1 - saturation * fraction)
        t = value * (1 - saturation * (1 - fraction))
        # (r, g, b) per hue sector 0..5
        table = np.stack([np.stack(c, axis=-1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                                         (p, q, value), (t, p, value), (value, p, q))])
        out.append(np.take_along_axis(table, index[None, ..., None], axis=0)[0])
    return np.stack(out, axis=1).reshape(-1, *views.shape[1:])

"""Drawing cluttered scenes of concept objects, with per-object visible masks, boxes and keypoints.

Shapes are defined analytically in each object's own frame (unit radius, v pointing down) and rasterised with
numpy on the pixel-centre grid, so masks, textures and keypoints all agree exactly and rendering stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from .world import COLOURS, World

NUM_KEYPOINTS = 5
KEYPOINT_NAMES: tuple[str, ...] = ("top", "right", "bottom", "left", "centre")
KEYPOINT_SKELETON: list[tuple[int, int]] = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4), (2, 4), (3, 4)]

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ObjectSpec:
    concept: int  # index into world.concepts
    x: float  # centre, pixels
    y: float
    radius: float  # pixels; every shape fits in the circle of this radius
    rotation: float  # radians, clockwise in image coordinates


@dataclass
class RenderedObject:
    concept: int
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 of the visible pixels; all 0 if none is visible
    mask: np.ndarray  # bool H x W: pixels of this object still visible after later objects are drawn
    area: int  # visible pixels
    full_area: float  # pixels the whole shape would cover, unoccluded and unclipped
    keypoints: list[tuple[float, float, int]]  # NUM_KEYPOINTS of (x, y, v): 2 visible, 1 hidden, 0 outside

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area if self.full_area > 0 else 0.0


@dataclass
class Scene:
    image: Image.Image
    objects: list[RenderedObject]


def _radial_polygon(n: int, inner: float) -> ShapeFn:
    """Star-shaped polygon: n outer vertices at radius 1 (the first pointing up) alternating with n inner
    vertices at radius `inner`; a regular n-gon when `inner` is cos(pi / n)."""
    half = math.pi / n
    ix, iy = inner * math.cos(half), inner * math.sin(half)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        rho = np.hypot(u, v)
        a = np.mod(np.arctan2(u, -v), 2 * half)
        a = np.minimum(a, 2 * half - a)  # fold by symmetry onto the wedge from an outer to an inner vertex
        px, py = rho * np.cos(a), rho * np.sin(a)
        return (ix - 1) * py - iy * (px - 1) >= 0  # same side of the edge as the centre

    return inside


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    head = (v >= -1) & (v <= -0.05) & (np.abs(u) <= 0.75 * (v + 1) / 0.95)
    shaft = (np.abs(u) <= 0.25) & (v > -0.1) & (v <= 1)
    return head | shaft


_SHAPE_FNS: dict[str, ShapeFn] = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.72,
    "triangle": _radial_polygon(3, math.cos(math.pi / 3)),
    "star": _radial_polygon(5, 0.42),
    "cross": lambda u, v: (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 0.95),
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.3),
    "hexagon": _radial_polygon(6, math.cos(math.pi / 6)),
    "diamond": lambda u, v: np.abs(u) / 0.62 + np.abs(v) <= 1,
    # The bite sits towards the upper right, so the crescent has a single top and a single right extreme.
    "crescent": lambda u, v: (u * u + v * v <= 1) & ((u - 0.45) ** 2 + (v + 0.45) ** 2 >= 0.55),
    "arrow": _arrow,
    "pentagon": _radial_polygon(5, math.cos(math.pi / 5)),
    "ellipse": lambda u, v: u * u + (v / 0.58) ** 2 <= 1,
}


@cache
def _shape_geometry(shape: str) -> tuple[float, np.ndarray]:
    """Area (in units of radius^2) and the outline points (unit frame) of a shape, sampled on a fine grid."""
    step = 2.1 / 420
    g = np.arange(-1.05, 1.05, step) + step / 2
    u, v = np.meshgrid(g, g)
    inside = _SHAPE_FNS[shape](u, v)
    padded = np.pad(inside, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = inside & ~interior
    return float(inside.sum() * step * step), np.stack([u[edge], v[edge]], axis=1)


def _keypoints(shape: str, spec: ObjectSpec) -> list[tuple[float, float]]:
    """The topmost, rightmost, bottommost and leftmost points of the object's outline in the image, then its
    centre. Extremes of the silhouette as drawn (not of the shape's own frame), so a model can see them:
    a rotated circle has the same top. On a flat extreme edge the point nearest the edge's middle is used."""
    _, outline = _shape_geometry(shape)
    c, s = math.cos(spec.rotation), math.sin(spec.rotation)
    xs = spec.x + spec.radius * (outline[:, 0] * c - outline[:, 1] * s)
    ys = spec.y + spec.radius * (outline[:, 0] * s + outline[:, 1] * c)
    tolerance = 0.02 * spec.radius
    points = []
    for key, sign in ((ys, -1), (xs, 1), (ys, 1), (xs, -1)):  # top, right, bottom, left
        extreme = sign * key >= (sign * key).max() - tolerance
        cx, cy = xs[extreme], ys[extreme]
        j = int(np.argmin((cx - cx.mean()) ** 2 + (cy - cy.mean()) ** 2))
        points.append((float(cx[j]), float(cy[j])))
    points.append((spec.x, spec.y))
    return points


@cache
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(centres, centres)
    return xs, ys


def _shade(colour: np.ndarray) -> np.ndarray:
    """The texture colour: darker for light colours, lighter for dark ones, so patterns always show."""
    luminance = colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return colour * 0.5 if luminance > 120 else colour + (255 - colour) * 0.5


def _texture(texture: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray | None:
    """Where the shade goes, given object-frame pixel coordinates; scaled with the radius so it rotates and
    zooms with the object."""
    if texture == "striped":
        return np.mod(v / (0.5 * radius), 1.0) < 0.5
    if texture == "dotted":
        period = 0.6 * radius
        du, dv = np.mod(u / period, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        return du * du + dv * dv < 0.09
    if texture == "checkered":
        cell = 0.42 * radius
        return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    return None


@cache
def _noise_table(size: int) -> np.ndarray:
    # Pixel noise is a random window of a fixed Gaussian table: drawing fresh normals would cost as much as
    # the rest of the rendering.
    return np.random.default_rng(0x0153).standard_normal(4 * 3 * size * size, dtype=np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted colour gradient with a few low-contrast blobs and strokes that are not concepts; 3 x H x W
    (channels first, so blending a H x W alpha is a cheap broadcast)."""
    xs, ys = _pixel_grid(size)
    line = xs[0]

    def muted() -> np.ndarray:
        c = rng.uniform(60, 200, 3)
        return (0.5 * c + 0.5 * c.mean()).astype(np.float32)[:, None, None]

    angle = float(rng.uniform(0, 2 * math.pi))
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) * (1 / max(float(t.max() - t.min()), 1e-6))
    c0, c1 = muted(), muted()
    img = c0 + t * (c1 - c0)

    for _ in range(int(rng.integers(1, 3))):  # soft blobs; a Gaussian is separable, so two 1-D profiles do
        bx, by = (float(z) for z in rng.uniform(0, size, 2))
        k = -0.5 / float(size * rng.uniform(0.06, 0.15)) ** 2
        profile_y, profile_x = np.exp(k * (line - by) ** 2), np.exp(k * (line - bx) ** 2)
        alpha = float(rng.uniform(0.15, 0.35)) * profile_y[:, None] * profile_x
        img += alpha * (muted() - img)
    for _ in range(int(rng.integers(1, 4))):  # strokes: thick antialiased segments
        x0, y0, x1, y1 = (float(z) for z in rng.uniform(-0.1 * size, 1.1 * size, 4))
        dx, dy = x1 - x0, y1 - y0
        px, py = xs - x0, ys - y0
        s = np.clip((px * dx + py * dy) * (1.0 / max(dx * dx + dy * dy, 1e-6)), 0, 1)
        ex, ey = px - s * dx, py - s * dy
        width = float(rng.uniform(0.5, 2.0)) * size / 64
        alpha = float(rng.uniform(0.15, 0.35)) * np.clip(width + 0.5 - np.sqrt(ex * ex + ey * ey), 0, 1)
        img += alpha * (muted() - img)
    return img


def render_scene(world: World, objects: list[ObjectSpec], size: int, rng: np.random.Generator) -> Scene:
    """Draw `objects` in order (later ones occlude earlier ones) over a cluttered background."""
    xs, ys = _pixel_grid(size)
    img = _background(size, rng)
    full_masks: list[np.ndarray] = []
    for spec in objects:
        concept = world.concepts[spec.concept]
        mask = np.zeros((size, size), dtype=bool)
        full_masks.append(mask)
        # Work in the object's bounding window only: most of the image cannot be inside it.
        r = spec.radius
        x0, x1 = max(int(spec.x - r) - 1, 0), min(int(spec.x + r) + 2, size)
        y0, y1 = max(int(spec.y - r) - 1, 0), min(int(spec.y + r) + 2, size)
        if x0 >= x1 or y0 >= y1:
            continue
        c, s = math.cos(spec.rotation), math.sin(spec.rotation)
        dx, dy = xs[0, x0:x1][None, :] - spec.x, ys[y0:y1, 0][:, None] - spec.y
        u, v = dx * c + dy * s, dy * c - dx * s  # object frame, pixels
        local = _SHAPE_FNS[concept.shape](u * (1 / r), v * (1 / r))
        if not local.any():
            continue
        mask[y0:y1, x0:x1] = local
        colour = np.clip(np.asarray(COLOURS[concept.colour], np.float32) + rng.normal(0, 8, 3), 0, 255)
        colour = colour.astype(np.float32)
        um, vm = u[local], v[local]
        pattern = _texture(concept.texture, um, vm, r)
        pixels = colour if pattern is None else np.where(pattern[:, None], _shade(colour), colour)
        # Soft light from the object's top, so shapes read as objects rather than flat stencils.
        light = 1.0 + (float(rng.uniform(-0.12, -0.04)) / r) * vm[:, None]
        img[:, y0:y1, x0:x1][:, local] = (pixels * light).T

    table = _noise_table(size)
    start = int(rng.integers(len(table) - img.size))
    img += table[start : start + img.size].reshape(img.shape) * float(rng.uniform(2, 5))
    pixels_hwc = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    image = Image.fromarray(pixels_hwc, "RGB")

    rendered: list[RenderedObject] = []
    covered = np.zeros((size, size), dtype=bool)  # pixels taken by objects drawn after the current one
    for spec, mask in zip(reversed(objects), reversed(full_masks), strict=True):
        visible = mask & ~covered
        shape = world.concepts[spec.concept].shape
        area_unit, _ = _shape_geometry(shape)
        keypoints = []
        for x, y in _keypoints(shape, spec):
            inside = 0 <= x < size and 0 <= y < size
            vis = 0 if not inside else 1 if covered[int(y), int(x)] else 2
            keypoints.append((float(x), float(y), vis))
        rendered.append(
            RenderedObject(
                concept=spec.concept,
                bbox=_tight_bbox(visible),
                mask=visible,
                area=int(visible.sum()),
                full_area=area_unit * spec.radius**2,
                keypoints=keypoints,
            )
        )
        covered |= mask
    rendered.reverse()
    return Scene(image, rendered)


def _tight_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))

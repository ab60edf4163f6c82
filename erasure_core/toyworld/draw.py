"""Procedural drawing of toy-world images: one shape, one colour, one fill style on a light canvas.

Pure numpy, deterministic for a seed. Shapes are rendered 4x supersampled for smooth edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import Scene

IMAGE_SIZE = 32
SUPERSAMPLE = 4
BACKGROUND = np.array([0.93, 0.93, 0.90], dtype=np.float32)
RGB = {
    "red": (0.86, 0.14, 0.12),
    "green": (0.13, 0.68, 0.22),
    "blue": (0.15, 0.30, 0.88),
    "yellow": (0.95, 0.80, 0.10),
}
STRIPE_PERIOD = 6.0  # pixels; stripes and dots are visible but well above the latent's grid
DOT_PERIOD = 6.0


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a supersampled canvas, in output-pixel units."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    return np.meshgrid(coords, coords, indexing="xy")


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at 0 in rotated coordinates (u, v)."""
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "square":
        half = radius * 0.82
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":
        # Upward equilateral triangle inscribed in the circle of `radius`.
        top, bottom = -radius, radius * 0.5
        half_width_at = (v - top) / (bottom - top) * radius * 0.866
        return (v >= top) & (v <= bottom) & (np.abs(u) <= half_width_at)
    if shape == "cross":
        arm = radius * 0.33
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class Placement:
    """Where a shape sits on the canvas: centre (px), circumradius (px) and rotation (radians)."""

    cx: float
    cy: float
    radius: float
    angle: float


def random_placement(shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Placement:
    """The random position, size and rotation every toy-world image is drawn with."""
    cx, cy = size / 2 + rng.uniform(-3, 3, size=2)
    radius = rng.uniform(0.30, 0.40) * size
    angle = 0.0 if shape == "circle" else rng.uniform(-0.25, 0.25)
    return Placement(float(cx), float(cy), float(radius), float(angle))


def _rotated(placement: Placement, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Supersampled pixel centres (x, y) and the same points in the shape's rotated frame (u, v)."""
    x, y = _grid(size)
    cos, sin = np.cos(placement.angle), np.sin(placement.angle)
    u = (x - placement.cx) * cos + (y - placement.cy) * sin
    v = -(x - placement.cx) * sin + (y - placement.cy) * cos
    return x, y, u, v


def _coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Share of each output pixel a supersampled mask covers, (H, W) in [0, 1]."""
    return mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def draw_scene(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE,
               placement: Placement | None = None) -> np.ndarray:
    """One image (H, W, 3) float32 in [0, 1] of `scene`, with random placement, size and rotation
    (or the given `placement`)."""
    placement = placement or random_placement(scene.shape, rng, size)
    x, y, u, v = _rotated(placement, size)
    radius = placement.radius

    inside = shape_mask(scene.shape, u, v, radius)
    if scene.style == "solid":
        paint = inside
    else:
        # Outline keeps the silhouette readable; the fill pattern lives inside it.
        inner = shape_mask(scene.shape, u, v, radius - 1.6)
        outline = inside & ~inner
        phase = rng.uniform(0, STRIPE_PERIOD)
        if scene.style == "striped":
            stripe_angle = rng.choice([0.0, np.pi / 4, np.pi / 2, -np.pi / 4])
            w = x * np.cos(stripe_angle) + y * np.sin(stripe_angle) + phase
            pattern = (w % STRIPE_PERIOD) < STRIPE_PERIOD / 2
        elif scene.style == "dotted":
            px, py = (x + phase) % DOT_PERIOD - DOT_PERIOD / 2, (y + phase) % DOT_PERIOD - DOT_PERIOD / 2
            pattern = px * px + py * py <= (DOT_PERIOD * 0.3) ** 2
        else:
            raise ValueError(f"unknown style {scene.style!r}")
        paint = outline | (inner & pattern)

    colour = np.array(RGB[scene.color], dtype=np.float32) + rng.normal(0, 0.03, size=3).astype(np.float32)
    coverage = _coverage(paint, size)[..., None]
    image = BACKGROUND * (1 - coverage) + colour * coverage
    return np.clip(image, 0, 1).astype(np.float32)


def outline_hint(shape: str, placement: Placement, size: int = IMAGE_SIZE) -> np.ndarray:
    """A control image (H, W, 3) in [0, 1]: the shape's 1-px outline, white on black (as an edge map)."""
    _, _, u, v = _rotated(placement, size)
    line = shape_mask(shape, u, v, placement.radius) & ~shape_mask(shape, u, v, placement.radius - 1.0)
    return np.repeat(_coverage(line, size)[..., None], 3, axis=2).astype(np.float32)


def blob_hint(placement: Placement, size: int = IMAGE_SIZE) -> np.ndarray:
    """A control image (H, W, 3) in [0, 1]: a soft round blob, white on black, centred where the shape
    sits and as wide as it is. The same for every shape and rotation, so it fixes position and size only."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    x, y = np.meshgrid(centres, centres, indexing="xy")
    d2 = (x - placement.cx) ** 2 + (y - placement.cy) ** 2
    blob = np.exp(-d2 / (2 * (0.5 * placement.radius) ** 2))
    return np.repeat(blob[..., None], 3, axis=2).astype(np.float32)


def blank_canvas(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The empty canvas: what the toy world shows when nothing is asked for."""
    tint = rng.normal(0, 0.01, size=3).astype(np.float32)
    return np.clip(np.broadcast_to(BACKGROUND + tint, (size, size, 3)), 0, 1).astype(np.float32)


def draw_batch(scenes: list[Scene], seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Images (N, H, W, 3) for a list of scenes, deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    return np.stack([draw_scene(s, rng, size) for s in scenes])

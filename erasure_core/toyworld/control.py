"""The toy world under ControlNet: its control images, and judging generations made under control.

Two kinds of control image, both drawn from a shape's placement (draw.Placement):
- "outline": the shape's 1-px outline, white on black (an edge map). It fixes the shape, its
  position, size and rotation; not the colour, not the fill.
- "blob": a soft round blob where the shape sits, as wide as it is. It fixes position and size
  only: the same blob for every shape, so shape, colour and fill are all left to the prompt.
One toy ControlNet (erasure_core/toyworld/assets/controlnet) reads both.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from .draw import IMAGE_SIZE, BACKGROUND, Placement, blob_hint, draw_scene, outline_hint, random_placement
from .world import Scene, all_scenes, caption

CONTROL_KINDS = ("outline", "blob")
# What each kind fixes (beyond position and size); the rest is the prompt's.
FORCED = {"outline": ("shape",), "blob": ()}
CAPTION_DROPOUT = 0.15  # share of training examples with the empty prompt: the control alone must draw


def control_image(kind: str, shape: str, placement: Placement, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the control image of `kind` for a shape placed at `placement`."""
    if kind == "outline":
        return outline_hint(shape, placement, size)
    if kind == "blob":
        return blob_hint(placement, size)
    raise ValueError(f"unknown control kind {kind!r}; one of {CONTROL_KINDS}")


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) arrays -> (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def controlled_batch(rng: np.random.Generator, prng: random.Random, size: int,
                     caption_dropout: float = CAPTION_DROPOUT):
    """Training examples for the ControlNet: images (N,3,H,W) in [0,1], their control images (same
    layout) and captions. Kinds alternate; a share of captions is empty (the control alone draws)."""
    scenes = all_scenes()
    images, hints, captions = [], [], []
    for i in range(size):
        scene = scenes[prng.randrange(len(scenes))]
        placement = random_placement(scene.shape, rng)
        images.append(draw_scene(scene, rng, placement=placement))
        hints.append(control_image(CONTROL_KINDS[i % len(CONTROL_KINDS)], scene.shape, placement))
        captions.append("" if prng.random() < caption_dropout else caption(scene, prng))
    return to_tensor(images), to_tensor(hints), captions


def shape_centre(images: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """(N, 2) centre (x, y) in pixels of what differs from the canvas's background; NaN for an empty image."""
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    painted = ((images.float() - background).abs().amax(dim=1) > threshold).float()  # (N, H, W)
    size = images.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    mass = painted.sum(dim=(1, 2))
    cx = (painted.sum(dim=1) * coords).sum(dim=1) / mass
    cy = (painted.sum(dim=2) * coords).sum(dim=1) / mass
    return torch.stack([cx, cy], dim=1)


def placed_right(images: torch.Tensor, placements: list[Placement], tolerance: float = 2.0) -> list[bool]:
    """Whether each image's shape sits where its placement says: its painted pixels' centre within
    `tolerance` px of the placement's centre (every toy shape's centre of area is that centre)."""
    centres = shape_centre(images)
    out = []
    for (cx, cy), placement in zip(centres.tolist(), placements):
        out.append(bool(np.hypot(cx - placement.cx, cy - placement.cy) <= tolerance))
    return out

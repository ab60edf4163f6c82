"""Scrambled Grid (Degeneration-Tuning, arXiv 2308.02552 §3): cut an image into g x g patches
and shuffle them, so local statistics survive while the concept's structure is destroyed.

When the side is not a multiple of g, the image is cropped to the largest multiple (centred)
for the shuffle and the uncovered border is kept in place: every pixel of the input appears
exactly once in the output (the same multiset of pixels), only its arrangement changes.
"""
from __future__ import annotations

import torch

from .errors import ErasureInputError


def scramble_grid(images: torch.Tensor, grid: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle a g x g grid of patches in each image of a (N, C, H, W) batch.

    Each image gets its own random permutation from `generator` (deterministic for its seed).
    Returns a new tensor; the input is not modified.
    """
    if images.ndim != 4:
        raise ErasureInputError("images", f"expected a (N, C, H, W) batch, got shape {tuple(images.shape)}",
                                "give a batch of images of one size")
    n, c, h, w = images.shape
    if not 2 <= grid <= min(h, w):
        raise ErasureInputError("grid size", f"must be between 2 and the image's shorter side ({min(h, w)}), "
                                f"got {grid}", "pick a grid size such as 4")
    ph, pw = h // grid, w // grid
    top, left = (h - ph * grid) // 2, (w - pw * grid) // 2
    out = images.clone()
    core = images[:, :, top:top + ph * grid, left:left + pw * grid]
    # (N, C, g, ph, g, pw) -> (N, g*g, C, ph, pw): one row per patch.
    patches = core.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    order = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(n)])
    shuffled = torch.gather(patches, 1, order.view(n, -1, 1, 1, 1).expand_as(patches).to(patches.device))
    shuffled = shuffled.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)
    out[:, :, top:top + ph * grid, left:left + pw * grid] = shuffled
    return out

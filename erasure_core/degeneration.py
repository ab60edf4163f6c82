"""What Degeneration-Tuning turns a concept's images into (Ni et al., arXiv 2308.02552: "keep the concept's text,
break its image").

- "scramble": the Scrambled Grid of the paper (`scrambled_grid.scramble_grid`): g x g patches shuffled. It breaks
  shapes and, with patches smaller than the texture, textures; but every pixel keeps its colour, so a scramble of a
  red thing is still red: it cannot erase a colour.
- "desaturate": the image without its hue (Rec. 601 luma in every channel). It breaks a colour and keeps
  everything else (shape, texture, layout), so "a red dotted circle" becomes a grey dotted circle.
"""
from __future__ import annotations

import torch

from .errors import ErasureInputError
from .scrambled_grid import scramble_grid

DEGENERATIONS = ("scramble", "desaturate")
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights of R, G, B


def desaturate(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> the same images in grey (luma in every channel)."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True).expand_as(images).clone()


def degenerate(images: torch.Tensor, how: str, grid: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The degenerated images DT trains the concept's prompts on."""
    if how == "scramble":
        return scramble_grid(images, grid, generator)
    if how == "desaturate":
        return desaturate(images)
    raise ErasureInputError("degeneration", f"unknown degeneration {how!r}", f"use one of {', '.join(DEGENERATIONS)}")

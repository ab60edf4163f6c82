"""Turning users' images into one batch the methods can use."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ErasureInputError


def stack_images(images: list[torch.Tensor], size: int | None = None) -> torch.Tensor:
    """(C, H, W) images in [0, 1] -> one (N, 3, H, W) batch.

    With `size`, every image is centre-cropped to a square and resized to size x size; without
    it, images must already share one size. Channel counts must be 3 (RGB).
    """
    if not images:
        raise ErasureInputError("images", "no images were given", "give at least one image of the concept")
    channels = {int(im.shape[0]) for im in images}
    if channels != {3}:
        raise ErasureInputError("images", f"channel counts differ from RGB ({sorted(channels)})",
                                "convert every image to RGB (drop alpha, expand greyscale)")
    if size is None:
        sizes = {tuple(im.shape[1:]) for im in images}
        if len(sizes) > 1:
            raise ErasureInputError("images", f"sizes differ ({', '.join(f'{w}x{h}' for h, w in sorted(sizes))})",
                                    "resize the images to one size, or set a training resolution to resize them")
        return torch.stack([im.float() for im in images])
    out = []
    for im in images:
        h, w = im.shape[1:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = im[:, top:top + side, left:left + side].float()[None]
        out.append(F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)

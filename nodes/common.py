"""What the pack's nodes share: the category, text-list parsing, the erasure's LORA_MODEL type."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

CATEGORY = "Concept Eraser"
# {"images": (N, 3, H, W) in [0, 1], "grid": g}: the concept's own images, scrambled (several times each) for DT.
Dataset = io.Custom("SCRAMBLED_GRID_DATASET")


class ErasureLora(dict):
    """A LORA_MODEL (plain dict of kohya tensors, so core LoraModelLoader/SaveLoRA accept it) that
    also carries the erasure's metadata for Save Erasure."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        super().__init__(tensors)
        self.metadata = dict(metadata)


def lines(text: str) -> list[str]:
    """One entry per non-empty line (prompts may contain commas, so lines are the separator)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def node_id(cls) -> str | None:
    """The node's id in the running prompt (None when called headless)."""
    return getattr(getattr(cls, "hidden", None), "unique_id", None)


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> ComfyUI IMAGE (N, H, W, 3), float in [0, 1], on the CPU."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def from_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (N, H, W, C) -> (N, 3, H, W); alpha dropped, greyscale expanded. Cloned: the
    executor's tensors are inference tensors."""
    x = images.detach().float().clone()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = x[..., :3] if x.shape[-1] >= 3 else x[..., :1].expand(*x.shape[:-1], 3)
    return x.permute(0, 3, 1, 2).contiguous()


def pil_to_image(img) -> torch.Tensor:
    """A PIL image -> ComfyUI IMAGE (1, H, W, 3)."""
    return torch.from_numpy(np.array(img.convert("RGB"))).float().div(255).unsqueeze(0)

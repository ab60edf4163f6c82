"""Before/after comparison grids as PNG (written atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .safe_files import atomic_path

LABEL_WIDTH = 150


def to_pil(images: torch.Tensor, scale: int) -> list[Image.Image]:
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for a in arr]


def labelled_rows(rows: list[tuple[str, torch.Tensor]], scale: int = 3, pad: int = 4,
                  column_labels: list[str] | None = None) -> Image.Image:
    """One row of images per (label, images) pair, label on the left; optional labels above the columns."""
    tiles = [(label, to_pil(images, scale)) for label, images in rows]
    cols = max(len(t) for _, t in tiles)
    w, h = tiles[0][1][0].size
    top = 18 if column_labels else 0
    canvas = Image.new("RGB", (LABEL_WIDTH + cols * (w + pad) + pad, top + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels or []):
        draw.text((LABEL_WIDTH + pad + c * (w + pad) + 4, 4), label, fill="black")
    for r, (label, images) in enumerate(tiles):
        y = top + pad + r * (h + pad)
        draw.multiline_text((6, y + h // 2 - 12), label, fill="black")
        for c, img in enumerate(images):
            canvas.paste(img, (LABEL_WIDTH + pad + c * (w + pad), y))
    return canvas


def comparison_grid(path: Path, concepts: list[tuple[str, torch.Tensor, torch.Tensor]], other_before, other_after,
                    columns: int = 8) -> Path:
    """Rows: for each concept (name, before, after) its prompts before and after; then the prompts without any of
    them before and after (same seeds)."""
    rows = []
    for concept, before, after in concepts:
        rows += [(f"with '{concept}'\nbefore", before[:columns]), (f"with '{concept}'\nafter", after[:columns])]
    label = "without it" if len(concepts) == 1 else "without any"
    rows += [(f"{label}\nbefore", other_before[:columns]), (f"{label}\nafter", other_after[:columns])]
    return save_png(labelled_rows(rows), path)


def save_png(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def spread(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` images evenly spread through a batch (so a grid shows every kind of prompt)."""
    if len(images) <= count:
        return images
    idx = torch.linspace(0, len(images) - 1, count).round().long()
    return images[idx]

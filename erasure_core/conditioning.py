"""Text conditioning made of several tensors (SDXL's), usable wherever the methods use a text embedding.

An SD1 model's `encode_text` returns one tensor (N, L, C). SDXL's UNet also takes a pooled text
embedding and six size/crop numbers per row, so an SDXL model's `encode_text` returns a
`Conditioning`: named tensors that share the row (prompt) axis. The methods only ever index rows,
concatenate rows, expand one row, count rows and move rows to a device, and `Conditioning` does
exactly those, so the methods' code is the same for both. Each backend names its own parts and
reads them back in its `predict_noise`:
- diffusers: `context`, `pooled` (text_encoder_2's projection) and `time_ids`;
- ldm UNets (ComfyUI, the webui's sgm model, Forge): `context` and `y` (pooled + embedded sizes, which the
  host computes with its own code).
"""
from __future__ import annotations

import torch


class Conditioning:
    """Named tensors whose first axis is the prompt (row) axis."""

    def __init__(self, **parts: torch.Tensor):
        rows = {name: len(t) for name, t in parts.items()}
        if not parts or len(set(rows.values())) != 1:
            raise ValueError(f"conditioning parts must share their row count, got {rows}")
        self.parts = parts

    def __getitem__(self, name_or_rows):
        if isinstance(name_or_rows, str):
            return self.parts[name_or_rows]
        return self.map(lambda t: t[name_or_rows])

    def __len__(self) -> int:
        return len(next(iter(self.parts.values())))

    def __repr__(self) -> str:
        return f"Conditioning({', '.join(f'{k}={tuple(v.shape)}' for k, v in self.parts.items())})"

    def map(self, fn) -> "Conditioning":
        return Conditioning(**{name: fn(t) for name, t in self.parts.items()})

    def expand(self, rows: int, *_) -> "Conditioning":
        """One row repeated `rows` times (a view), like `tensor.expand(rows, -1, -1)`."""
        return self.map(lambda t: t.expand(rows, *t.shape[1:]))

    def to(self, *args, **kwargs) -> "Conditioning":
        return self.map(lambda t: t.to(*args, **kwargs))

    def float(self) -> "Conditioning":
        return self.map(lambda t: t.float())

    def detach(self) -> "Conditioning":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Conditioning":
        return self.map(lambda t: t.clone())

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts.values())).device

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """`torch.cat` of Conditionings with the same parts: row-wise, part by part."""
        kwargs = kwargs or {}
        if func is torch.cat:
            rows = list(args[0])
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim != 0 or not all(isinstance(r, Conditioning) and r.parts.keys() == rows[0].parts.keys()
                                   for r in rows):
                raise TypeError("only Conditionings with the same parts concatenate, along the row axis")
            return Conditioning(**{name: torch.cat([r.parts[name] for r in rows]) for name in rows[0].parts})
        return NotImplemented


def cross_attention_context(text: torch.Tensor | Conditioning) -> torch.Tensor:
    """What cross-attention's keys and values read: the tensor itself, or SDXL's `context` part."""
    return text["context"] if isinstance(text, Conditioning) else text


def zero_empty_prompts(conditioning: Conditioning, prompts: list[str], keep: tuple[str, ...] = ()) -> Conditioning:
    """Zero the rows of empty prompts in every part except `keep`: SDXL's "no prompt" (its trainers dropped
    captions as zeroed embeddings; diffusers' `force_zeros_for_empty_prompt`, the webui's zeroed negative)."""
    empty = torch.tensor([not p.strip() for p in prompts])
    if not empty.any():
        return conditioning
    out = {}
    for name, t in conditioning.parts.items():
        if name in keep:
            out[name] = t
        else:
            mask = (~empty).to(t.device, t.dtype).view(-1, *([1] * (t.ndim - 1)))
            out[name] = t * mask
    return Conditioning(**out)

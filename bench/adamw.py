"""The optimiser step alone: torch's AdamW implementations on the weights each method trains.

    python bench/adamw.py

Times gradient clipping + one AdamW step (median of 25 after 5 warm-up steps) with torch's default
(per-tensor on CPU), multi-tensor (`foreach`) and `fused` implementations, on the toy world's
parameter groups and on the shapes of SD1.5's cross-attention weights. The shared training loop
(erasure_core/training.py: adamw) uses the fused kernel wherever torch has one.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def sd15_cross_attn_shapes() -> list[tuple[int, ...]]:
    """attn2's to_q, to_k, to_v, to_out weight and bias in SD1.5's 16 transformer blocks."""
    shapes = []
    for dim, blocks in ((320, 5), (640, 5), (1280, 6)):
        shapes += [(dim, dim), (dim, 768), (dim, 768), (dim, dim), (dim,)] * blocks
    return shapes


def toy_shapes(group: str) -> list[tuple[int, ...]]:
    from erasure_core.model import load_diffusers_model
    from erasure_core.toyworld import MODEL_DIR
    from erasure_core.trainable import select_modules

    unet = load_diffusers_model(MODEL_DIR).unet
    return [tuple(p.shape) for _, m in select_modules(unet, group) for p in m.parameters(recurse=False)]


def step_ms(shapes: list[tuple[int, ...]], kind: str, steps: int = 30, warmup: int = 5) -> float:
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **KINDS[kind])
    times = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    kept = sorted(times[warmup:])
    return kept[len(kept) // 2] * 1000


def main() -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; clip + AdamW step, median ms")
    print("| weights | tensors | parameters (M) | " + " | ".join(KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    worlds = [(f"toy world, {g}", toy_shapes(g)) for g in ("cross_attn", "no_cross_attn", "all")]
    worlds.append(("SD1.5 cross_attn", sd15_cross_attn_shapes()))
    for name, shapes in worlds:
        n = sum(torch.Size(s).numel() for s in shapes) / 1e6
        cells = [f"{step_ms(shapes, kind):.1f}" for kind in KINDS]
        print(f"| {name} | {len(shapes)} | {n:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Frozen-model trajectories, sampled once per run and reused at every training step.

ESD re-samples a partial DDIM trajectory at every step; the x_t it needs do not change while
the frozen model is fixed, so we sample them once (every DDIM step of a few trajectories per
prompt) and cache the frozen predictions each method needs at those points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..model import DiffusionModel
from ..progress import report
from ..sampling import sample_latents


@dataclass
class TrajectoryCache:
    x_t: torch.Tensor  # (M, C, H, W) latents visited by the frozen model
    t: torch.Tensor  # (M,) their DDPM timesteps
    prompt_index: torch.Tensor  # (M,) which prompt each point's trajectory was sampled for
    final: torch.Tensor | None = None  # (K, C, H, W) where each trajectory ended: the frozen model's images
    final_prompt_index: torch.Tensor | None = None  # (K,)

    def __len__(self) -> int:
        return len(self.t)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(len(self), (size,), generator=generator)


@torch.no_grad()
def sample_trajectories(model: DiffusionModel, prompts: list[str], per_prompt: int, seed: int, steps: int,
                        guidance: float, desc: str = "the original model's trajectories of the concept prompts",
                        batch: int = 32, keep_final: bool = False) -> TrajectoryCache:
    """Every intermediate x_t of `per_prompt` DDIM trajectories of the frozen model per prompt; with `keep_final`
    also where each ended (the robust option's attacks learn from those images)."""
    expanded = [p for p in prompts for _ in range(per_prompt)]
    index = torch.tensor([i for i in range(len(prompts)) for _ in range(per_prompt)])
    chunk_starts = iter(range(0, len(expanded), batch))  # sample_latents draws `batch` prompts at a time
    xs, ts, idx, start = [], [], [], 0

    def keep(step: int, t: torch.Tensor, x: torch.Tensor) -> None:  # called at every DDIM step
        nonlocal start
        if step == 0:
            start = next(chunk_starts)
        xs.append(x.detach().clone())
        ts.append(torch.full((len(x),), int(t)))
        idx.append(index[start:start + len(x)])

    final = sample_latents(model, expanded, [seed + i for i in range(len(expanded))], steps=steps, guidance=guidance,
                           batch_size=batch, trajectory_hook=keep, desc=desc)
    if not keep_final:
        return TrajectoryCache(torch.cat(xs), torch.cat(ts), torch.cat(idx))
    return TrajectoryCache(torch.cat(xs), torch.cat(ts), torch.cat(idx), final, index)


@torch.no_grad()
def frozen_predictions(model: DiffusionModel, cache: TrajectoryCache, contexts: torch.Tensor,
                       batch: int = 64, desc: str = "the original model's predictions on its trajectories"
                       ) -> torch.Tensor:
    """eps*(x_t, t, c) at every cached point, with c = contexts[prompt_index] (one row per prompt)."""
    out = []
    for s in range(0, len(cache), batch):
        x = cache.x_t[s:s + batch]
        ctx = contexts[cache.prompt_index[s:s + batch].to(contexts.device)]
        out.append(model.predict_noise(model.unet, x, cache.t[s:s + batch].to(x.device), ctx).float())
        report(desc, min(s + batch, len(cache)), len(cache))
    return torch.cat(out)


class PreserveRows(NamedTuple):
    """Points of the frozen model's own trajectories of the preserve prompts, with its predictions there."""

    x_t: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    frozen_eps: torch.Tensor


@dataclass
class PreservePool:
    """Distillation targets for preservation, computed once per run: every point of the frozen model's
    trajectories of the preserve prompts, and the frozen prediction for its prompt there."""

    points: TrajectoryCache
    context: torch.Tensor  # one row per preserve prompt
    frozen_eps: torch.Tensor  # one row per point

    def batch(self, size: int, generator: torch.Generator) -> PreserveRows:
        j = self.points.batch(size, generator)
        x_t = self.points.x_t[j]
        return PreserveRows(x_t, self.points.t[j].to(x_t.device),
                            self.context[self.points.prompt_index[j].to(self.context.device)], self.frozen_eps[j])


def preserve_pool(model: DiffusionModel, prompts: list[str], per_prompt: int, seed: int, steps: int,
                  guidance: float) -> PreservePool:
    points = sample_trajectories(model, prompts, per_prompt, seed, steps, guidance,
                                 desc="the original model's trajectories of the preserve prompts")
    context = model.encode_text(prompts)
    return PreservePool(points, context, frozen_predictions(
        model, points, context, desc="the original model's predictions for the preserve prompts"))

"""Concept-vector attack in the style of Ring-A-Bell (Tsai et al., ICLR 2024, arXiv 2310.10012).

The concept's direction in text-embedding space, c = mean over templates of E(prompt with the concept) −
E(the same prompt without it), is added with strength η to innocent prompts (the templates without the
concept): the UNet is conditioned on E(innocent) + η c. E is the text encoder's output, what the UNet reads,
so no token access is needed and every host supports this attack. Ring-A-Bell picks η by hand and then
searches a typed prompt near the result; here η is chosen white-box among a few strengths (the budget) by the
erased model's denoising loss on the original model's images, and the conditioning itself is used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import checks
from ..errors import ErasureCancelled, ErasureInputError
from ..training import CancelFn, ProgressFn
from .common import AttackConfig, AttackResult, ConceptLatents, concept_latents, draw_batch
from .text import fill


@dataclass
class ConceptVectorConfig(AttackConfig):
    steps: int = 8  # loss batches per strength
    strengths: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0])

    def validate(self) -> None:
        super().validate()
        if not self.strengths:
            raise ErasureInputError("strengths", "is empty", "give a few strengths such as 1, 2, 4")
        self.strengths = [checks.real_number("strengths", s, 0.0, 100.0, "use strengths such as 1, 2, 4")
                          for s in self.strengths]

    def budget(self) -> str:
        return f"{len(self.strengths)} strengths × {self.steps} batches"


@torch.no_grad()
def concept_vector(model, config: AttackConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, E(innocent prompts)): the concept's mean direction (L, C) and the innocent prompts' contexts."""
    with_concept = model.encode_text(config.concept_prompts())
    innocent = model.encode_text([fill(t, "") for t in config.slot_templates()])
    return (with_concept - innocent).mean(0), innocent


@torch.no_grad()
def attack_concept_vector(model, unet, config: ConceptVectorConfig, pool: ConceptLatents | None = None,
                          progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> AttackResult:
    """E(innocent) + η c with the η (of `config.strengths`) under which `unet` denoises the concept best."""
    config.validate()
    started = time.time()
    vector, innocent = concept_vector(model, config)
    pool = pool if pool is not None else concept_latents(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    batches = [draw_batch(pool, config.batch_size, gen) for _ in range(config.steps)]
    losses = []
    total = len(config.strengths) * len(batches)
    for s, strength in enumerate(config.strengths):
        contexts = innocent + strength * vector
        parts = []
        for b, batch in enumerate(batches):
            if should_cancel is not None and should_cancel():
                raise ErasureCancelled(f"cancelled at strength {strength}; nothing was written")
            parts.append(float(batch.loss(model, unet, contexts)))
            if progress is not None:
                progress(s * len(batches) + b + 1, total, parts[-1])
        losses.append(sum(parts) / len(parts))
    best = min(range(len(losses)), key=losses.__getitem__)
    strength = config.strengths[best]
    shown = [f"{fill(t, '')} + {strength:g}·c" for t in config.slot_templates()]
    return AttackResult("concept_vector", shown, innocent + strength * vector, f"strength η = {strength:g}",
                        config.budget(), losses, time.time() - started, embedding=vector.cpu(),
                        extra={"losses_by_strength": dict(zip(config.strengths, losses))})

"""A judge for any model, with no classifier of its own: the original model as a diffusion classifier.

Li et al. (ICCV 2023, arXiv 2303.16203) read a text-to-image model as a classifier: an image belongs to the
prompt under which the model predicts the noise added to it best. Here each attack image is noised at the same
`samples` (timestep, noise) pairs (paired comparison: the differences do not hinge on the draw) and the ORIGINAL
model's denoising error is measured under the concept's prompt and under neutral prompts (the same template
with the concept left out, or another word in its place). The image reads as the concept when the concept's
prompt predicts best; the margin (best neutral error − concept error) ranks images by how clearly they show it.
Checked against the toy world's judge in bench/robustness.py (agreement in the README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import checks
from .methods.common import add_noise
from .model import DiffusionModel


@dataclass
class DiffusionClassifier:
    model: DiffusionModel  # the ORIGINAL model: it knows what the concept looks like
    concept: str
    templates: list[str]  # "{}" for the concept; an image is compared under its own template
    neutral: list[str] = field(default_factory=lambda: [""])  # words in the concept's place for the neutral prompts
    samples: int = 16  # (timestep, noise) pairs per image
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self):
        self.samples = checks.whole_number("classifier samples", self.samples, 1, 1024, "use e.g. 16")
        self.neutral = [n.strip() for n in self.neutral]
        if not self.neutral:
            self.neutral = [""]
        words = [self.concept] + [n for n in self.neutral if n.lower() != self.concept.lower()]
        prompts = [" ".join(t.format(w).split()) for t in self.templates for w in words]
        self.classes = len(words)
        contexts = self.model.encode_text(prompts)
        self.contexts = contexts.view(len(self.templates), self.classes, *contexts.shape[1:])
        gen = torch.Generator().manual_seed(self.seed)
        # stratified timesteps over the schedule, so every image is compared at the same noise levels
        steps = len(self.model.alphas_cumprod)
        self.t = ((torch.arange(self.samples) + 0.5) * steps / self.samples).long().clamp(0, steps - 1)
        self.noise = torch.randn((self.samples, *self.model.latent_shape), generator=gen)

    @torch.no_grad()
    def errors(self, latents: torch.Tensor, template_index: torch.Tensor) -> torch.Tensor:
        """(N, classes) mean squared error of the original model's noise prediction; class 0 is the concept."""
        n, s, k = len(latents), self.samples, self.classes
        rows = torch.arange(n * s * k)
        image, sample, cls = rows // (s * k), (rows // k) % s, rows % k  # every image x sample x class
        template = template_index.cpu()[image]
        out = []
        for i in range(0, len(rows), self.batch_size):
            sl = slice(i, i + self.batch_size)
            t = self.t[sample[sl]].to(self.model.device)
            noise = self.noise[sample[sl]].to(self.model.device)
            x_t = add_noise(self.model.alphas_cumprod, latents[image[sl].to(latents.device)].to(noise), noise, t)
            ctx = self.contexts[template[sl].to(self.contexts.device), cls[sl].to(self.contexts.device)]
            eps = self.model.predict_noise(self.model.unet, x_t, t, ctx).float()
            out.append((eps - noise.float()).pow(2).flatten(1).mean(1).cpu())
        return torch.cat(out).view(n, s, k).mean(1)

    def read(self, latents: torch.Tensor, template_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shows the concept (N,) bool, margin (N,)): the concept's prompt predicts the noise best, and by how much."""
        err = self.errors(latents, template_index)
        margin = err[:, 1:].min(1).values - err[:, 0]
        return margin > 0, margin

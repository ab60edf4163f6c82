"""What every attack shares: its request and budget, the original model's images of the concept it learns
from, its loss, and its result.

An attack is white-box on the erased model: it reads the erased UNet's noise predictions (and their
gradients) and searches for text conditioning under which the erased model denoises the ORIGINAL model's
images of the concept as well as it can (the loss of textual inversion and of UnlearnDiffAtk). What it finds
is then prompted on seeds the attack never saw, and the share of those images that still show the concept is
the attack success rate (erasure_core/audit.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import checks
from ..errors import ErasureInputError
from ..methods.common import DEFAULT_TEMPLATES, add_noise, random_timesteps
from ..model import DiffusionModel
from ..sampling import sample_latents
from .text import SLOT

MAX_TOKENS = 16  # attack tokens in one prompt; the toy world's prompts hold 16 tokens in all
# The attack learns from seeds seed, seed+1, ...; its images are judged on seeds from here on (never learnt from).
EVAL_SEED_OFFSET = 1_000_000


@dataclass
class AttackConfig:
    """The request and the budget every attack has. Attack configs extend it."""

    concept: str
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))  # "{}" is the concept
    steps: int = 100  # optimisation steps (the budget)
    tokens: int = 2  # attack tokens (soft-prompt embeddings, or words of the discrete prompt)
    seed: int = 0
    images_per_template: int = 2  # the original model's images of the concept the attack learns from
    batch_size: int = 8
    sample_steps: int = 25  # DDIM steps for the original model's images and the attack images
    guidance: float = 7.5  # the toy world uses 1.5 (toyworld.evaluate.EVAL_GUIDANCE)

    def validate(self) -> None:
        """Every option checked before any work; ErasureInputError names the field and the fix."""
        self.concept = checks.prompt_text("concept", self.concept)
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        self.templates = [checks.prompt_template(t) for t in self.templates or []]
        if not self.templates:
            raise ErasureInputError("templates", "there is no prompt template", "use templates such as 'a photo of {}'")
        self.steps = checks.steps(self.steps)
        self.tokens = checks.whole_number("tokens", self.tokens, 1, MAX_TOKENS, "use e.g. 2")
        self.seed = checks.whole_number("seed", self.seed, 0, checks.MAX_SEED - 2 * EVAL_SEED_OFFSET,
                                        "use a whole number such as 0")
        self.images_per_template = checks.whole_number("images per template", self.images_per_template, 1,
                                                       checks.MAX_PER_PROMPT, "use e.g. 2")
        self.batch_size = checks.whole_number("batch size", self.batch_size, 1, checks.MAX_BATCH, "use e.g. 8")
        self.sample_steps = checks.whole_number("sampling steps", self.sample_steps, 1, checks.MAX_SAMPLING_STEPS,
                                                "use e.g. 25")
        self.guidance = checks.real_number("guidance", self.guidance, 0.0, 100.0, "use e.g. 7.5")

    def concept_prompts(self) -> list[str]:
        return [t.format(self.concept) for t in self.templates]

    def slot_templates(self) -> list[str]:
        """The templates with the concept's place kept as the slot for the attack's tokens."""
        return [t.format(SLOT) for t in self.templates]

    def budget(self) -> str:
        return f"{self.steps} steps, {self.tokens} tokens"


@dataclass
class ConceptLatents:
    """The original model's images of the concept (as latents), each with the template it was drawn for."""

    latents: torch.Tensor  # (M, C, H, W)
    template_index: torch.Tensor  # (M,)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(len(self.latents), (size,), generator=generator)


@torch.no_grad()
def concept_latents(model: DiffusionModel, config: AttackConfig) -> ConceptLatents:
    """The ORIGINAL model's images of the concept: every template, `images_per_template` seeds from `seed`."""
    prompts = config.concept_prompts()
    index = torch.arange(len(prompts)).repeat_interleave(config.images_per_template)
    seeds = [config.seed + i for i in range(len(index))]
    latents = sample_latents(model, [prompts[i] for i in index], seeds, steps=config.sample_steps,
                             guidance=config.guidance, desc="the original model's images of the concept")
    return ConceptLatents(latents, index)


def denoising_loss(model: DiffusionModel, unet, z0: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
    """||eps_erased(x_t, t, c) − ε||² on the original model's concept latents: how well the erased UNet draws the
    concept under the attack's conditioning c (the loss of textual inversion and of UnlearnDiffAtk)."""
    x_t = add_noise(model.alphas_cumprod, z0, noise, t)
    return F.mse_loss(model.predict_noise(unet, x_t, t, contexts).float(), noise)


@dataclass
class LossBatch:
    """One draw of (latents, their templates, noise, timesteps): fixed, it compares candidates fairly."""

    z0: torch.Tensor
    template_index: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor

    def loss(self, model, unet, contexts_per_template: torch.Tensor) -> torch.Tensor:
        ctx = contexts_per_template[self.template_index.to(contexts_per_template.device)]
        return denoising_loss(model, unet, self.z0, ctx, self.noise, self.t)


def draw_batch(pool: ConceptLatents, size: int, generator: torch.Generator) -> LossBatch:
    i = pool.batch(size, generator)
    z0 = pool.latents[i.to(pool.latents.device)]
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    return LossBatch(z0, pool.template_index[i], noise, random_timesteps(size, generator, z0.device))


@dataclass
class AttackResult:
    """What an attack found: the text conditioning of each attack prompt (one per template), and in words."""

    attack: str
    prompts: list[str]  # the attack prompts, readable ("<2 learned tokens>" stands for a soft prompt)
    contexts: torch.Tensor  # (P, L, C): what the UNet is conditioned on for each attack prompt
    found: str  # the learned prompt, the strength chosen, ...
    budget: str
    losses: list[float]
    seconds: float
    embedding: torch.Tensor | None = None  # learned token embeddings (soft prompt) or the concept vector
    extra: dict = field(default_factory=dict)

"""Degeneration-Tuning with a Scrambled Grid (Ni et al., ACM MM 2023, arXiv 2308.02552).

Keep the concept's text, break its image: the model is tuned so the concept's prompt denoises
towards scrambled-grid versions of the concept's own images (meaningless texture with the
concept's local statistics), while prompts to preserve keep the frozen model's predictions.

Everything the frozen model and the VAE contribute is computed once, before training: a few
scrambles of each concept image (each with its own permutation) encoded to latents, and the
frozen model's predictions along its own trajectories of the preserve prompts (the
distillation targets). A training step is then one UNet call (bench/results/speed.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import checks
from ..errors import ErasureInputError
from ..model import DiffusionModel
from ..progress import report
from ..sampling import sample_images
from ..defaults import SETTINGS
from ..degeneration import DEGENERATIONS, degenerate
from ..split_rows import rows_split
from ..offload import text_encoders_on_cpu
from ..trainable import make_trainable
from ..training import CancelFn, ProgressFn, optimise
from ..memory import checkpointing_for
from .common import EraseConfig, ErasureResult, add_noise, finish, guard_memory, prepare, random_timesteps
from .trajectories import PreserveRows, preserve_pool


COLOR_WARNINGS = {  # degeneration -> why DT cannot erase a colour with it, and what to use instead
    "scramble": "a scramble moves pixels but keeps their colour, so the erased prompts still draw it",
    "desaturate": "tuning the prompts towards grey images left the colour in 0.625 of them on the toy world's "
                  "tuning colour (it keeps shape and fill, 0.917)",
}
COLOR_WARNING = ("Degeneration-Tuning does not erase a colour ({concepts}) with the degeneration '{how}': {why}. "
                 "Use the classifier-guidance method (cg) with another colour as the alternative.")
_OBJECT = SETTINGS["dt"]["object"]  # the defaults (erasure_core/defaults.py); other kinds: defaults.settings


@dataclass
class DTConfig(EraseConfig):
    grid: int = _OBJECT["grid"]  # g x g patches; larger g destroys more structure (paper §3.2)
    images_per_prompt: int = _OBJECT["images_per_prompt"]  # frozen-model images per concept prompt (none supplied)
    concept_images: torch.Tensor | None = None  # (N, 3, H, W) in [0, 1]: the user's own concept images
    # What the concept's images become (erasure_core/degeneration.py): the paper's scrambled grid, or for a colour
    # the image without its hue; "auto": the default for the concepts' kind.
    degeneration: str = "auto"
    # Scrambles per concept image, each with its own permutation, VAE-encoded once before training (the
    # paper's "new permutation per image and per epoch" for this many epochs).
    scrambles_per_image: int = 8
    # Weight of the preservation term against the degeneration term (README "Choosing the defaults").
    preserve_weight: float = _OBJECT["preserve_weight"]
    # Frozen-model trajectories per preserve prompt (the distillation points). On the toy world 4 against 1 took
    # the divergence of the other prompts from 0.037 to 0.028 (README "Choosing the defaults").
    preserve_images_per_prompt: int = 4
    group: str = _OBJECT["group"]  # the paper tunes the UNet as a whole...
    # ...through a LoRA of rank 8: full weights of the whole SD1.5 UNet need ~14 GB for weights, gradients and AdamW
    # states alone, a rank-8 LoRA fits an 8 GB GPU (README "Will it fit?"). On the tuning concept it erased as fully
    # and preserved as well as the full weights did at lr 1e-4 (README "Choosing the defaults").
    rank: int | None = _OBJECT["rank"]
    lr: float = _OBJECT["lr"]
    supports_adversarial = True

    def chosen_degeneration(self) -> str:
        if self.degeneration == "auto":
            return SETTINGS["dt"][self.concept_kind()].get("degeneration", "scramble")
        return self.degeneration

    def warnings(self) -> list[str]:
        how = self.chosen_degeneration()
        if self.concept_kind() == "color":
            return [COLOR_WARNING.format(concepts=", ".join(map(repr, self.concepts)), how=how, why=COLOR_WARNINGS[how])]
        return []

    def validate(self) -> None:
        super().validate()
        self.grid = checks.whole_number("grid size", self.grid, 2, 4096, "use e.g. 4")
        self.scrambles_per_image = checks.whole_number("scrambles per image", self.scrambles_per_image, 1,
                                                       checks.MAX_PER_PROMPT, "use e.g. 8")
        self.images_per_prompt = checks.whole_number("images per prompt", self.images_per_prompt, 1,
                                                     checks.MAX_PER_PROMPT, "use e.g. 2")
        self.preserve_images_per_prompt = checks.whole_number(
            "preserve images per prompt", self.preserve_images_per_prompt, 1, checks.MAX_PER_PROMPT, "use e.g. 4")
        self.preserve_weight = checks.weight("preserve weight", self.preserve_weight, 4.0)
        if self.degeneration not in ("auto", *DEGENERATIONS):
            raise ErasureInputError("degeneration", f"unknown degeneration {self.degeneration!r}",
                                    f"use one of auto, {', '.join(DEGENERATIONS)}")

    def rows_per_element(self) -> int:  # a concept row, and a preserve row when preservation is on
        return 2 if self.preserve_weight > 0 else 1

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        given = self.concept_images is not None  # the user's images stay in the config
        images = len(self.concept_images) if given else self.n_concept_prompts() * self.images_per_prompt
        per_image = self.scrambles_per_image if self.chosen_degeneration() == "scramble" else 1
        scrambles = images * per_image  # a latent, a text context and an image index each
        keep_prompts = len(set(self.preserve_prompts) | {""}) if self.preserve_weight > 0 else 0
        keep_points = keep_prompts * self.preserve_images_per_prompt * self.sample_steps  # x_t and eps* each
        return ((images * image if given else 0) + scrambles * (latent + context + 8)
                + keep_points * (2 * latent + 16) + keep_prompts * context + self.adversarial_bytes(latent, context))


def dt_loss(model: DiffusionModel, tuned, z0, context, noise, t, keep: PreserveRows | None = None,
            preserve_weight: float = 0.0) -> torch.Tensor:
    """L = ||eps_θ(x_t, t, c_e) − ε||² + w ||eps_θ(x_t', t', p) − eps*(x_t', t', p)||²   (the last term only with `keep`).

    z0 are scrambled concept latents, paired with the concept's prompts (degeneration: plain
    denoising towards the scramble). `keep` holds points of the frozen model's own trajectories
    of the preserve prompts with its predictions there (preservation: distillation). Both go
    through one UNet call; each term is the mean over its own rows, so this equals one call per
    term, and is faster.
    """
    x_t = add_noise(model.alphas_cumprod, z0, noise, t)
    rows = [(x_t, t, context)]
    if keep is not None:
        rows.append((keep.x_t, keep.t, keep.context))
    eps = model.predict_noise(tuned, *(torch.cat(column) for column in zip(*rows))).float()
    n = len(z0)
    loss = F.mse_loss(eps[:n], noise)
    if keep is not None:
        loss = loss + preserve_weight * F.mse_loss(eps[n:], keep.frozen_eps)
    return loss


def check_images(images: torch.Tensor, grid: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ErasureInputError("images", f"expected RGB images as one (N, 3, H, W) batch, got {shape}",
                                "give RGB images of one size (convert RGBA/greyscale to RGB)")
    if images.shape[0] == 0:
        raise ErasureInputError("images", "no images were given", "give at least one image of the concept")
    if grid > min(images.shape[2:]):
        raise ErasureInputError("grid size", f"{grid} is larger than the image side ({min(images.shape[2:])} px)",
                                "use a grid size no larger than the image side, e.g. 4")


def frozen_images(model: DiffusionModel, prompts: list[str], per_prompt: int, seed: int, config: EraseConfig):
    """The frozen model's own images of `prompts` (`per_prompt` seeds each) and their prompt list."""
    expanded = [p for p in prompts for _ in range(per_prompt)]
    seeds = [seed + i for i in range(len(expanded))]
    images = sample_images(model, expanded, seeds, steps=config.sample_steps, guidance=config.guidance,
                           desc="the original model's images of the concept")
    return images, expanded


@torch.no_grad()
def scrambled_latents(model: DiffusionModel, images: torch.Tensor, grid: int, per_image: int,
                      generator: torch.Generator, batch: int = 32, degeneration: str = "scramble"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_image` degenerations of every image (each scramble its own permutation), VAE-encoded; and each one's
    image index. A desaturation has no randomness: one per image."""
    per_image = per_image if degeneration == "scramble" else 1
    index = torch.arange(len(images)).repeat(per_image)
    latents = []
    for s in range(0, len(index), batch):
        latents.append(model.encode_images(degenerate(images[index[s:s + batch]], degeneration, grid, generator)))
        report("degenerating and encoding the concept's images", min(s + batch, len(index)), len(index))
    return torch.cat(latents), index


@guard_memory
def erase_dt(model: DiffusionModel, config: DTConfig, progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> ErasureResult:
    """Run Degeneration-Tuning; the model's own UNet is not modified."""
    config.validate()
    config, plan = prepare(model, "dt", config)
    started = time.time()
    gen = torch.Generator().manual_seed(config.seed)
    concept_prompts = [p for c in config.concepts for p in config.concept_prompts(c)]
    if config.concept_images is not None:
        images = config.concept_images.float()
        prompts = [concept_prompts[i % len(concept_prompts)] for i in range(len(images))]
    else:
        images, prompts = frozen_images(model, concept_prompts, config.images_per_prompt, config.seed, config)
    check_images(images, config.grid)
    latents, image_index = scrambled_latents(model, images, config.grid, config.scrambles_per_image, gen,
                                             degeneration=config.chosen_degeneration())
    concept_context = model.encode_text(prompts)[image_index.to(model.device)]
    adversary, row_prompt = None, None  # row_prompt: each scramble's concept prompt, for the robust option
    if config.adversarial is not None:  # the robust option: its attacks learn from the unscrambled images
        from ..attacks.common import ConceptLatents  # here: the attacks package imports this one's package
        from .robust import AdversarialPool

        prompt_index = torch.tensor([concept_prompts.index(p) for p in prompts])
        clean = ConceptLatents(model.encode_images(images), prompt_index)
        adversary = AdversarialPool(model, config.adversarial, [(c, config.templates_for(c)) for c in config.concepts],
                                    clean, config.seed)
        row_prompt = prompt_index[image_index]
    del images  # training keeps the scrambles' latents only (what the memory plan counts)

    keep = None
    if config.preserve_weight > 0:
        preserve = list(dict.fromkeys(list(config.preserve_prompts) + [""]))  # the empty prompt always: CFG needs it
        keep = preserve_pool(model, preserve, config.preserve_images_per_prompt, config.seed + 100_000,
                             config.sample_steps, config.guidance)

    tuned, params = make_trainable(model.unet, config.group, config.rank, checkpointing_for(config, model.device),
                                   config.seed)
    tuned.train()
    trainer = rows_split(model, config)  # the model as the training step calls it (split_rows.py)

    def loss_fn(step: int, b: int) -> torch.Tensor:
        i = torch.randint(len(latents), (b,), generator=gen)
        z0 = latents[i.to(latents.device)]
        noise = torch.randn(z0.shape, generator=gen).to(z0)
        t = random_timesteps(b, gen, z0.device)
        kept = keep.batch(b, gen) if keep is not None else None
        context = concept_context[i.to(concept_context.device)]
        if adversary is not None:
            adversary.refresh(step, tuned, params, should_cancel)
            context = adversary.mix(context, row_prompt[i])
        return dt_loss(trainer, tuned, z0, context, noise, t, kept, config.preserve_weight)

    with text_encoders_on_cpu(model, config):  # no training step encodes text but the robust option's (offload.py)
        losses = optimise(params, loss_fn, config.steps, config.lr, model.device, progress, should_cancel,
                          precision=config.precision, batch_size=config.batch_size,
                          micro_batch=config.micro_batch)
    return finish("dt", config, model.unet, tuned, losses, started, plan, adversary)

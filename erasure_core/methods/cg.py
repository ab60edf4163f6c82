"""Surgical classifier-guidance erasure ("All but One", Hong, Lee, Woo, AAAI 2024, arXiv 2312.12807).

eps(x, c) = eps(x, ∅) + g(x, c), with g the implicit classifier-guidance term. The tuned
model's guidance term for the concept is sent to the frozen model's guidance term for the
alternative (or to zero), while its unconditional score is pinned where the frozen model had
it, so the image prior and the layout of every other sample do not drift.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
import torch
import torch.nn.functional as F

from .. import checks
from ..model import DiffusionModel
from ..split_rows import rows_split
from ..offload import text_encoders_on_cpu
from ..trainable import make_trainable
from ..training import CancelFn, ProgressFn, optimise
from ..defaults import SETTINGS
from ..memory import checkpointing_for
from .common import ErasureResult, TrajectoryConfig, finish, guard_memory, prepare
from .trajectories import PreserveRows, frozen_predictions, preserve_pool, sample_trajectories


_OBJECT = SETTINGS["cg"]["object"]  # the defaults (erasure_core/defaults.py)


@dataclass
class CGConfig(TrajectoryConfig):
    uses_anchor = True
    drift_weight: float = _OBJECT["drift_weight"]  # λ on L_uncond (README "Choosing the defaults")
    # Distillation on preserve prompts at their own trajectories; 10 (with lr 5e-4) kept the toy world's other
    # prompts within 0.02 of their accuracy where 1 lost 0.13 (README "Choosing the defaults").
    preserve_weight: float = _OBJECT["preserve_weight"]
    group: str = _OBJECT["group"]  # "surgical": only the layers that read the text
    lr: float = _OBJECT["lr"]
    supports_adversarial = True

    def validate(self) -> None:
        super().validate()
        self.drift_weight = checks.weight("drift weight (λ)", self.drift_weight, 1.0)
        self.preserve_weight = checks.weight("preserve weight", self.preserve_weight, 10.0)

    def rows_per_element(self) -> int:  # concept and unconditional rows, and a preserve row when there are any
        return 3 if self.preserve_prompts and self.preserve_weight > 0 else 2

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        # every trajectory point: x_t, the frozen unconditional prediction and the target (+ t, prompt index)
        points = self.trajectory_points()
        keep = bool(self.preserve_prompts) and self.preserve_weight > 0
        keep_points = len(self.preserve_prompts) * self.sample_steps if keep else 0  # x_t and eps* each
        contexts = self.n_concept_prompts() + 1 + (len(self.preserve_prompts) if keep else 0)
        return (points * (3 * latent + 16) + keep_points * (2 * latent + 16) + contexts * context
                + self.adversarial_bytes(latent, context))


def cg_loss(model: DiffusionModel, tuned, x_t, t, concept_ctx, uncond_ctx, target_guidance, frozen_uncond,
            drift_weight: float, keep: PreserveRows | None = None, preserve_weight: float = 0.0) -> torch.Tensor:
    """L = ||g_θ(x_t, c_e) − sg(g*(x_t, c_a))||² + λ ||eps_θ(x_t, ∅) − eps*(x_t, ∅)||²
           + w ||eps_θ(x_t', p) − eps*(x_t', p)||²   (the last term only with `keep`).

    g_θ(x_t, c_e) = eps_θ(x_t, c_e) − eps_θ(x_t, ∅), gradients through both branches;
    target_guidance = g*(x_t, c_a) from the frozen model, or zeros when there is no alternative.
    The preservation term distils the frozen model at `keep`. All rows go through one UNet call;
    each term is the mean over its own rows, so this equals one call per term, and is faster.
    """
    # rows: concept, unconditional (same x_t), then the preserve points; one column each of x_t, t, context
    rows = [(x_t, t, concept_ctx), (x_t, t, uncond_ctx)]
    if keep is not None:
        rows.append((keep.x_t, keep.t, keep.context))
    eps = model.predict_noise(tuned, *(torch.cat(column) for column in zip(*rows))).float()
    b = len(x_t)
    eps_concept, eps_uncond, eps_keep = eps[:b], eps[b:2 * b], eps[2 * b:]
    loss = F.mse_loss(eps_concept - eps_uncond, target_guidance) + drift_weight * F.mse_loss(eps_uncond, frozen_uncond)
    if keep is not None:
        loss = loss + preserve_weight * F.mse_loss(eps_keep, keep.frozen_eps)
    return loss


@guard_memory
def erase_cg(model: DiffusionModel, config: CGConfig, progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> ErasureResult:
    """Run the classifier-guidance erasure; the model's own UNet is not modified."""
    config.validate()
    config, plan = prepare(model, "cg", config)
    started = time.time()
    gen = torch.Generator().manual_seed(config.seed)
    concept_prompts, alt_prompts = config.prompt_pairs()

    cache = sample_trajectories(model, concept_prompts, config.trajectories_per_prompt, config.seed,
                                config.sample_steps, config.guidance, keep_final=config.adversarial is not None)
    concept_ctx = model.encode_text(concept_prompts)
    uncond_ctx = model.encode_text([""])
    frozen_uncond = frozen_predictions(model, cache, uncond_ctx.expand(len(concept_prompts), -1, -1))
    target = torch.zeros_like(frozen_uncond)
    has_alt = torch.tensor([a is not None for a in alt_prompts])
    if has_alt.any():
        alt_eps = frozen_predictions(model, cache, model.encode_text([a or "" for a in alt_prompts]))
        use = has_alt[cache.prompt_index]
        target[use] = (alt_eps - frozen_uncond)[use]
        del alt_eps  # training keeps the targets only (what the memory plan counts)

    keep = None
    if config.preserve_prompts and config.preserve_weight > 0:
        keep = preserve_pool(model, list(config.preserve_prompts), 1, config.seed + 100_000,
                             config.sample_steps, config.guidance)

    adversary = None
    if config.adversarial is not None:  # the robust option: its attacks learn from where the trajectories ended
        from ..attacks.common import ConceptLatents  # here: the attacks package imports this one's package
        from .robust import AdversarialPool

        adversary = AdversarialPool(model, config.adversarial, [(c, config.templates_for(c)) for c in config.concepts],
                                    ConceptLatents(cache.final, cache.final_prompt_index), config.seed)

    tuned, params = make_trainable(model.unet, config.group, config.rank, checkpointing_for(config, model.device),
                                   config.seed)
    tuned.train()
    trainer = rows_split(model, config)  # the model as the training step calls it (split_rows.py)

    def loss_fn(step: int, b: int) -> torch.Tensor:
        i = cache.batch(b, gen)
        t = cache.t[i].to(model.device)
        ctx = concept_ctx[cache.prompt_index[i].to(concept_ctx.device)]
        if adversary is not None:
            adversary.refresh(step, tuned, params, should_cancel)
            ctx = adversary.mix(ctx, cache.prompt_index[i])
        kept = keep.batch(b, gen) if keep is not None else None
        return cg_loss(trainer, tuned, cache.x_t[i], t, ctx, uncond_ctx.expand(b, -1, -1), target[i],
                       frozen_uncond[i], config.drift_weight, kept, config.preserve_weight)

    with text_encoders_on_cpu(model, config):  # no training step encodes text but the robust option's (offload.py)
        losses = optimise(params, loss_fn, config.steps, config.lr, model.device, progress, should_cancel,
                          precision=config.precision, batch_size=config.batch_size,
                          micro_batch=config.micro_batch)
    return finish("cg", config, model.unet, tuned, losses, started, plan, adversary)

"""Concept Ablation, a baseline (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023),
model-based variant: the concept's prompt is tuned to predict what the frozen model predicts for an anchor
prompt at the same x_t, so p(x | c_e) becomes p(x | c_anchor):

    L = ||eps_θ(x_t, t, c_e) − sg(eps*(x_t, t, c_anchor))||²

The anchor prompt is the concept's prompt with the alternative in its place ("a red striped circle" ->
"a red striped square"); without an alternative, the empty prompt (the concept falls back to the unconditional
image). x_t are points of the frozen model's own trajectories for the anchor prompts (the paper noises images the
frozen model drew for them; a trajectory point is such an image at its noise level), cached once per run.
Parameters: cross-attention keys and values (the paper's "cross-attn" group, `attn2.to_k/to_v`). The paper's
optional preservation (its "prior preservation" on anchor images) is the same distillation on the preserve
prompts the other methods use, off by default as in the paper.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import checks
from ..defaults import SETTINGS
from ..memory import checkpointing_for
from ..model import DiffusionModel
from ..split_rows import rows_split
from ..offload import text_encoders_on_cpu
from ..trainable import make_trainable
from ..training import CancelFn, ProgressFn, optimise
from .common import ErasureResult, TrajectoryConfig, finish, guard_memory, prepare
from .trajectories import PreserveRows, frozen_predictions, preserve_pool, sample_trajectories


_OBJECT = SETTINGS["ca"]["object"]  # the defaults (erasure_core/defaults.py)


@dataclass
class CAConfig(TrajectoryConfig):
    uses_anchor = True
    preserve_weight: float = 0.0
    group: str = _OBJECT["group"]
    lr: float = _OBJECT["lr"]

    def validate(self) -> None:
        super().validate()
        self.preserve_weight = checks.weight("preserve weight", self.preserve_weight, 1.0)

    def keeps(self) -> bool:
        return bool(self.preserve_prompts) and self.preserve_weight > 0

    def rows_per_element(self) -> int:  # a concept row, and a preserve row when preservation is on
        return 2 if self.keeps() else 1

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        # every anchor trajectory point: x_t and the frozen anchor prediction (+ t, prompt index); contexts
        points = self.trajectory_points()
        keep_points = len(self.preserve_prompts) * self.sample_steps if self.keeps() else 0
        contexts = 2 * self.n_concept_prompts() + (len(self.preserve_prompts) if self.keeps() else 0)
        return points * (2 * latent + 16) + keep_points * (2 * latent + 16) + contexts * context


def ca_loss(model: DiffusionModel, tuned, x_t, t, concept_ctx, anchor_eps, keep: PreserveRows | None = None,
            preserve_weight: float = 0.0) -> torch.Tensor:
    """L = ||eps_θ(x_t, c_e) − sg(eps*(x_t, c_anchor))||² + w ||eps_θ(x_t', p) − eps*(x_t', p)||² (with `keep`)."""
    rows = [(x_t, t, concept_ctx)]
    if keep is not None:
        rows.append((keep.x_t, keep.t, keep.context))
    eps = model.predict_noise(tuned, *(torch.cat(column) for column in zip(*rows))).float()
    loss = F.mse_loss(eps[:len(x_t)], anchor_eps)
    if keep is not None:
        loss = loss + preserve_weight * F.mse_loss(eps[len(x_t):], keep.frozen_eps)
    return loss


@guard_memory
def erase_ca(model: DiffusionModel, config: CAConfig, progress: ProgressFn | None = None,
             should_cancel: CancelFn | None = None) -> ErasureResult:
    config.validate()
    config, plan = prepare(model, "ca", config)
    started = time.time()
    gen = torch.Generator().manual_seed(config.seed)
    concept_prompts, alt_prompts = config.prompt_pairs()
    anchor_prompts = [a if a is not None else "" for a in alt_prompts]  # no alternative: the unconditional
    cache = sample_trajectories(model, anchor_prompts, config.trajectories_per_prompt, config.seed,
                                config.sample_steps, config.guidance)
    anchor_eps = frozen_predictions(model, cache, model.encode_text(anchor_prompts))
    concept_ctx = model.encode_text(concept_prompts)
    keep = None
    if config.keeps():
        keep = preserve_pool(model, list(config.preserve_prompts), 1, config.seed + 100_000, config.sample_steps,
                             config.guidance)

    tuned, params = make_trainable(model.unet, config.group, config.rank, checkpointing_for(config, model.device),
                                   config.seed)
    tuned.train()
    trainer = rows_split(model, config)  # the model as the training step calls it (split_rows.py)

    def loss_fn(step: int, rows: int) -> torch.Tensor:
        i = cache.batch(rows, gen)
        ctx = concept_ctx[cache.prompt_index[i].to(concept_ctx.device)]
        kept = keep.batch(rows, gen) if keep is not None else None
        return ca_loss(trainer, tuned, cache.x_t[i], cache.t[i].to(model.device), ctx, anchor_eps[i], kept,
                       config.preserve_weight)

    with text_encoders_on_cpu(model, config):  # no training step encodes text (offload.py)
        losses = optimise(params, loss_fn, config.steps, config.lr, model.device, progress, should_cancel,
                          precision=config.precision, batch_size=config.batch_size, micro_batch=config.micro_batch)
    return finish("ca", config, model.unet, tuned, losses, started, plan)

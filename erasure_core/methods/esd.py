"""ESD, the baseline (Gandikota et al., ICCV 2023): negative guidance as the target.

target = eps*(x_t, ∅) − η [eps*(x_t, c_e) − eps*(x_t, ∅)];  L = ||eps_θ(x_t, c_e) − target||².
ESD-x tunes cross-attention (group "cross_attn"), ESD-u everything else ("no_cross_attn"); the defaults are ESD-x
for every kind (erasure_core/defaults.py says why).
Its unconditional score is left free to drift: the flaw the classifier-guidance method fixes.
x_t come from the frozen model's cached trajectories (the original re-samples them with the
model being trained at every step; caching is the diffusers port's speed-up taken further).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import checks
from ..model import DiffusionModel
from ..offload import text_encoders_on_cpu
from ..trainable import make_trainable
from ..training import CancelFn, ProgressFn, optimise
from ..defaults import SETTINGS
from ..memory import checkpointing_for
from .common import ErasureResult, TrajectoryConfig, finish, guard_memory, prepare
from .trajectories import frozen_predictions, sample_trajectories


_OBJECT = SETTINGS["esd"]["object"]  # the defaults (erasure_core/defaults.py)


@dataclass
class ESDConfig(TrajectoryConfig):
    eta: float = _OBJECT["eta"]  # negative-guidance strength (original code: 1.0)
    group: str = _OBJECT["group"]
    lr: float = _OBJECT["lr"]

    def validate(self) -> None:
        super().validate()
        self.eta = checks.weight("eta (η)", self.eta, 1.0)

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        points = self.trajectory_points()
        return points * (2 * latent + 16) + self.n_concept_prompts() * context  # x_t and the target per point


def esd_loss(model: DiffusionModel, tuned, x_t, t, concept_ctx, target) -> torch.Tensor:
    """||eps_θ(x_t, c_e) − (eps*(x_t, ∅) − η (eps*(x_t, c_e) − eps*(x_t, ∅)))||²."""
    return F.mse_loss(model.predict_noise(tuned, x_t, t, concept_ctx).float(), target)


@guard_memory
def erase_esd(model: DiffusionModel, config: ESDConfig, progress: ProgressFn | None = None,
              should_cancel: CancelFn | None = None) -> ErasureResult:
    config.validate()
    config, plan = prepare(model, "esd", config)
    started = time.time()
    gen = torch.Generator().manual_seed(config.seed)
    prompts = [p for c in config.concepts for p in config.concept_prompts(c)]
    cache = sample_trajectories(model, prompts, config.trajectories_per_prompt, config.seed, config.sample_steps,
                                config.guidance)
    concept_ctx = model.encode_text(prompts)
    eps_concept = frozen_predictions(model, cache, concept_ctx)
    eps_uncond = frozen_predictions(model, cache, model.encode_text([""]).expand(len(prompts), -1, -1))
    target = eps_uncond - config.eta * (eps_concept - eps_uncond)
    del eps_concept, eps_uncond  # training keeps the targets only (what the memory plan counts)

    tuned, params = make_trainable(model.unet, config.group, config.rank, checkpointing_for(config, model.device),
                                   config.seed)
    tuned.train()

    def loss_fn(step: int, rows: int) -> torch.Tensor:
        i = cache.batch(rows, gen)
        ctx = concept_ctx[cache.prompt_index[i].to(concept_ctx.device)]
        return esd_loss(model, tuned, cache.x_t[i], cache.t[i].to(model.device), ctx, target[i])

    with text_encoders_on_cpu(model, config):  # no training step encodes text (offload.py)
        losses = optimise(params, loss_fn, config.steps, config.lr, model.device, progress, should_cancel,
                          precision=config.precision, batch_size=config.batch_size,
                          micro_batch=config.micro_batch)
    return finish("esd", config, model.unet, tuned, losses, started, plan)

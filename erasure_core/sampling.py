"""Sampling through the model interface with a diffusers scheduler (DDIM by default) and CFG.

Each image's starting noise comes from its own seed, so an image is the same whatever batch
it is drawn in: before/after comparisons use the same seeds and see the same noise.
"""
from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler

from .controlnet import ControlledUNet, prepare_hint
from .errors import ErasureInputError
from .model import DiffusionModel


def initial_noise(model: DiffusionModel, seeds: list[int]) -> torch.Tensor:
    noise = [torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(model.device)


def _control_hints(model, controlnet, control_image, count: int) -> torch.Tensor | None:
    """One ControlNet hint per prompt, or None without a ControlNet."""
    if controlnet is None and control_image is None:
        return None
    if controlnet is None or control_image is None:
        raise ErasureInputError("controlnet", "a ControlNet and a control image go together; got only one",
                                "give both (--controlnet and --control-image) or neither")
    if control_image.shape[0] not in (1, count):
        raise ErasureInputError("control image", f"{control_image.shape[0]} control images for {count} prompts",
                                "give one control image, or one per prompt")
    hints = prepare_hint(control_image, model.latent_shape[1:])
    return hints.expand(count, -1, -1, -1) if hints.shape[0] == 1 else hints


@torch.no_grad()
def sample_latents(model: DiffusionModel, prompts: list[str], seeds: list[int], unet=None, steps: int = 25,
                   guidance: float = 7.5, negative_prompt: str = "", batch_size: int = 32,
                   scheduler=None, trajectory_hook: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                   controlnet=None, control_image: torch.Tensor | None = None, control_scale: float = 1.0
                   ) -> torch.Tensor:
    """Latents of `prompts` (one seed each) by classifier-free guidance.

    `unet` defaults to the model's own; pass a tuned one to sample an erased model.
    `negative_prompt` replaces the empty prompt in the guidance (the negative-prompt baseline).
    `trajectory_hook(step_index, timesteps, x_t)` sees every intermediate latent (used to cache
    frozen-model trajectories for training).
    `controlnet` (a diffusers ControlNetModel) with `control_image` ((N, 3, H, W) in [0, 1], one per prompt,
    or one for all) drives the UNet as ComfyUI's ControlNetApplyAdvanced does: on both guidance branches.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts and seeds must pair up, got {len(prompts)} prompts and {len(seeds)} seeds")
    unet = unet if unet is not None else model.unet
    hints = _control_hints(model, controlnet, control_image, len(prompts))
    outputs = []
    uncond_all = model.encode_text([negative_prompt])
    for start in range(0, len(prompts), batch_size):
        chunk_prompts = prompts[start:start + batch_size]
        sched = scheduler or DDIMScheduler.from_config(model.scheduler_config)
        sched.set_timesteps(steps)
        x = initial_noise(model, seeds[start:start + batch_size]) * sched.init_noise_sigma
        cond = model.encode_text(chunk_prompts)
        uncond = uncond_all.expand(len(chunk_prompts), -1, -1)
        context = torch.cat([uncond, cond])
        chunk_unet = unet
        if hints is not None:
            chunk_unet = ControlledUNet(unet, controlnet, hints[start:start + batch_size], control_scale)
        for i, t in enumerate(sched.timesteps):
            if trajectory_hook is not None:
                trajectory_hook(i, t, x)
            x_in = sched.scale_model_input(torch.cat([x, x]), t)
            eps_uncond, eps_cond = model.predict_noise(chunk_unet, x_in, t.to(model.device), context).chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            x = sched.step(eps, t, x).prev_sample
        outputs.append(x)
    return torch.cat(outputs)


def sample_images(model: DiffusionModel, prompts: list[str], seeds: list[int], **kwargs) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1]; same arguments as `sample_latents`."""
    latents = sample_latents(model, prompts, seeds, **kwargs)
    return torch.cat([model.decode_latents(latents[i:i + 32]) for i in range(0, len(latents), 32)]).cpu()

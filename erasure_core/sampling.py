"""Sampling through the model interface with a diffusers scheduler (DDIM by default) and CFG.

Each image's starting noise comes from its own seed, so an image is the same whatever batch
it is drawn in: before/after comparisons use the same seeds and see the same noise.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from diffusers import DDIMScheduler

from .controlnet import ControlledUNet, check_controlnet_fits, prepare_hint
from .errors import ErasureInputError
from .model import DiffusionModel
from .progress import report


def initial_noise(model: DiffusionModel, seeds: list[int], latent_shape: tuple[int, int, int] | None = None
                  ) -> torch.Tensor:
    shape = tuple(latent_shape or model.latent_shape)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(model.device)


def _control_hints(model, controlnet, control_image, count: int, latent_shape=None) -> torch.Tensor | None:
    """One ControlNet hint per prompt, or None without a ControlNet."""
    if controlnet is None and control_image is None:
        return None
    if controlnet is None or control_image is None:
        raise ErasureInputError("controlnet", "a ControlNet and a control image go together; got only one",
                                "give both (--controlnet and --control-image) or neither")
    check_controlnet_fits(model, controlnet)
    if control_image.shape[0] not in (1, count):
        raise ErasureInputError("control image", f"{control_image.shape[0]} control images for {count} prompts",
                                "give one control image, or one per prompt")
    hints = prepare_hint(control_image, tuple(latent_shape or model.latent_shape)[1:])
    return hints.expand(count, -1, -1, -1) if hints.shape[0] == 1 else hints


@torch.no_grad()
def sample_latents(model: DiffusionModel, prompts: list[str], seeds: list[int], unet=None, steps: int = 25,
                   guidance: float = 7.5, negative_prompt: str = "", batch_size: int = 32,
                   scheduler=None, trajectory_hook: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                   controlnet=None, control_image: torch.Tensor | None = None, control_scale: float = 1.0,
                   desc: str = "sampling", latent_shape: tuple[int, int, int] | None = None,
                   contexts: torch.Tensor | None = None) -> torch.Tensor:
    """Latents of `prompts` (one seed each) by classifier-free guidance.

    `unet` defaults to the model's own; pass a tuned one to sample an erased model.
    `negative_prompt` replaces the empty prompt in the guidance (the negative-prompt baseline).
    `trajectory_hook(step_index, timesteps, x_t)` sees every intermediate latent (used to cache
    frozen-model trajectories for training). `contexts` (one row per prompt) conditions the UNet instead of the
    prompts' own encoding (an attack's conditioning; `prompts` then only count the images).
    `controlnet` (a diffusers ControlNetModel) with `control_image` ((N, 3, H, W) in [0, 1], one per prompt,
    or one for all) drives the UNet as ComfyUI's ControlNetApplyAdvanced does: on both guidance branches.
    Every DDIM step is reported as `desc` (erasure_core.progress); `latent_shape` overrides the
    model's (C, H, W) for this call (a smaller image size samples faster).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts and seeds must pair up, got {len(prompts)} prompts and {len(seeds)} seeds")
    unet = unet if unet is not None else model.unet
    hints = _control_hints(model, controlnet, control_image, len(prompts), latent_shape)
    # the scheduler reads the model's own prediction type (v for v-prediction models; see model.py)
    predict = model.predict if model.scheduler_config.get("prediction_type") == "v_prediction" else model.predict_noise
    outputs = []
    uncond_all = model.encode_text([negative_prompt])
    chunks = -(-len(prompts) // batch_size)
    for chunk, start in enumerate(range(0, len(prompts), batch_size)):
        chunk_prompts = prompts[start:start + batch_size]
        sched = scheduler or DDIMScheduler.from_config(model.scheduler_config)
        sched.set_timesteps(steps)
        x = initial_noise(model, seeds[start:start + batch_size], latent_shape) * sched.init_noise_sigma
        cond = (model.encode_text(chunk_prompts) if contexts is None
                else contexts[start:start + batch_size].to(model.device))
        uncond = uncond_all.expand(len(chunk_prompts), -1, -1)
        context = torch.cat([uncond, cond])
        chunk_unet = unet
        if hints is not None:
            chunk_unet = ControlledUNet(unet, controlnet, hints[start:start + batch_size], control_scale)
        for i, t in enumerate(sched.timesteps):
            if trajectory_hook is not None:
                trajectory_hook(i, t, x)
            x_in = sched.scale_model_input(torch.cat([x, x]), t)
            out_uncond, out_cond = predict(chunk_unet, x_in, t.to(model.device), context).chunk(2)
            guided = out_uncond + guidance * (out_cond - out_uncond)  # CFG is the same in epsilon and in v
            x = sched.step(guided, t, x).prev_sample
            report(desc, chunk * steps + i + 1, chunks * steps)
        outputs.append(x)
    return torch.cat(outputs)


def sample_images(model: DiffusionModel, prompts: list[str], seeds: list[int], **kwargs) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1]; same arguments as `sample_latents`."""
    latents = sample_latents(model, prompts, seeds, **kwargs)
    return torch.cat([model.decode_latents(latents[i:i + 32]) for i in range(0, len(latents), 32)]).cpu()


def latent_shape_for(model: DiffusionModel, image_size: int | None, field: str = "image size"
                     ) -> tuple[int, int, int]:
    """The (C, H, W) latent of `image_size` px images for this model (None or 0: the model's own)."""
    if not image_size:
        return tuple(model.latent_shape)
    factor = int(getattr(model, "vae_factor", 8))  # pixels per latent cell
    if not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ErasureInputError(field, f"must be a whole multiple of {factor} px, got {image_size!r}",
                                f"use e.g. {factor * model.latent_shape[1]} (the model's own size) or a smaller "
                                f"multiple of {factor} for speed")
    return (model.latent_shape[0], image_size // factor, image_size // factor)


def at_image_size(model: DiffusionModel, image_size: int | None) -> DiffusionModel:
    """The same model (nothing copied but the wrapper) drawing `image_size` px images (None: unchanged)."""
    shape = latent_shape_for(model, image_size)
    if shape == tuple(model.latent_shape):
        return model
    resized = copy.copy(model)
    resized.latent_shape = shape
    return resized

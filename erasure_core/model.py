"""The one small interface every erasure method uses to reach a model, and its diffusers backend.

A method needs only: noise prediction eps(x_t, t, c) from a UNet, the noise schedule, text
encoding, and image <-> latent conversion. Hosts (ComfyUI, the webui) provide the same
interface over their own model objects, so the methods never see a host.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .errors import ErasureInputError


class DiffusionModel(Protocol):
    """What an erasure method may ask of a model. Tensors are (N, C, H, W); latents are scaled."""

    unet: nn.Module
    alphas_cumprod: torch.Tensor  # (T,) on CPU, float32: the DDPM schedule the UNet was trained with
    scheduler_config: dict  # a diffusers scheduler config matching that schedule
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent at the model's native size
    device: torch.device

    def predict_noise(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                      text_embeddings: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, prompts: list[str]) -> torch.Tensor: ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DiffusersModel:
    """A Stable Diffusion 1.x-type model held as diffusers modules (UNet, VAE, CLIP text encoder).

    `unet` is the frozen original; methods train a copy (see `erasure_core.trainable`) and pass
    whichever UNet they need to `predict_noise`.
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = ""

    def __post_init__(self):
        from diffusers import DDPMScheduler

        self.alphas_cumprod = DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod.float().cpu()
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False).eval()
        size = self.unet.config.sample_size
        self.latent_shape = (self.unet.config.in_channels, size, size)
        self.vae_scale = self.vae.config.scaling_factor

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell along a side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.latent_shape[1] * self.vae_factor

    def predict_noise(self, unet, latents, timesteps, text_embeddings):
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        weights = self.unet.dtype
        if weights != torch.float32 and not torch.is_autocast_enabled(self.device.type):
            # 16-bit frozen weights (fp32 masters only for what is trained): always run under autocast, so the
            # 16-bit and the trained fp32 layers meet in one compute dtype
            with torch.autocast(self.device.type, dtype=weights):
                return unet(latents, timesteps, encoder_hidden_states=text_embeddings).sample.float()
        return unet(latents, timesteps, encoder_hidden_states=text_embeddings).sample

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state.float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> scaled latents (the distribution's mean, deterministic)."""
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean.float() * self.vae_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (N, 3, H, W) in [0, 1]."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae_scale).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    def with_unet(self, unet: nn.Module) -> "DiffusersModel":
        """The same model with another UNet (shares VAE and text encoder; nothing is copied)."""
        clone = copy.copy(self)
        clone.unet = unet
        return clone

    def save_pretrained(self, folder: Path) -> Path:
        """Write a complete diffusers folder (e.g. a merged checkpoint after an erasure), atomically."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        from .safe_files import atomic_folder

        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        with atomic_folder(Path(folder)) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
        return Path(folder)


def load_diffusers_model(path: str | Path, device: str | torch.device = "cpu", config: str | Path | None = None,
                         dtype: torch.dtype | None = None) -> DiffusersModel:
    """Load a local diffusers folder, or a single-file SD1.x `.safetensors` checkpoint, offline.

    A single file needs `config`: a local diffusers folder of the same architecture whose
    component configs describe it. Nothing is ever downloaded. `dtype` is how the frozen weights
    are kept: by default fp16 on CUDA (half the memory; what ComfyUI and the webui do) and fp32
    elsewhere; the trained weights always have fp32 masters.
    """
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    path = Path(path)
    if not path.exists():
        raise ErasureInputError("model", f"{path} does not exist", "give a diffusers model folder or a .safetensors file")
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ErasureInputError("model", f"{path} has no model_index.json, so it is not a diffusers model folder",
                                    "point at the folder that holds model_index.json, unet/, vae/, text_encoder/")
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                       safety_checker=None, requires_safety_checker=False)
    else:
        from .safe_files import check_safetensors

        check_safetensors(path, "model")
        if config is None or not Path(config, "model_index.json").exists():
            raise ErasureInputError(
                "config", f"a single-file checkpoint ({path.name}) needs a local diffusers folder describing its "
                "architecture, and none was given", "pass --config with a local SD1.x diffusers folder "
                "(nothing is downloaded)")
        pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                        dtype=dtype, safety_checker=None,
                                                        requires_safety_checker=False)
    device = torch.device(device)
    return DiffusersModel(unet=pipe.unet.to(device), vae=pipe.vae.to(device), text_encoder=pipe.text_encoder.to(device),
                          tokenizer=pipe.tokenizer, scheduler_config=dict(pipe.scheduler.config), device=device,
                          source=str(path))

"""The one small interface every erasure method uses to reach a model, and its diffusers backend.

A method needs only: noise prediction eps(x_t, t, c) from a UNet, the noise schedule, text
encoding, and image <-> latent conversion. Hosts (ComfyUI, the webui) provide the same
interface over their own model objects, so the methods never see a host.

Text encoding returns one tensor for SD1.x/SD2.x and a `Conditioning` (conditioning.py) for SDXL;
the methods treat both alike. `predict_noise` always returns epsilon (v-prediction models are
converted), which is what the methods' losses are written in; `predict` returns the UNet's own
prediction type, which the sampler uses with the model's own scheduler config: with a
zero-terminal-SNR schedule epsilon cannot give x0 at the last timestep, v can.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .conditioning import Conditioning, zero_empty_prompts
from .errors import ErasureInputError


class DiffusionModel(Protocol):
    """What an erasure method may ask of a model. Tensors are (N, C, H, W); latents are scaled."""

    unet: nn.Module
    alphas_cumprod: torch.Tensor  # (T,) on CPU, float32: the DDPM schedule the UNet was trained with
    scheduler_config: dict  # a diffusers scheduler config matching that schedule
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent at the model's native size
    device: torch.device

    def predict_noise(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                      text_embeddings: torch.Tensor | Conditioning) -> torch.Tensor: ...

    def predict(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                text_embeddings: torch.Tensor | Conditioning) -> torch.Tensor: ...  # scheduler_config's prediction type

    def encode_text(self, prompts: list[str]) -> torch.Tensor | Conditioning: ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...


def epsilon_from(output: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                 v_prediction: bool) -> torch.Tensor:
    """The UNet's output as epsilon: a v-prediction v gives eps = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t."""
    if not v_prediction:
        return output
    a = alphas_cumprod.to(output.device)[timesteps.long().to(output.device)].view(-1, 1, 1, 1).to(output.dtype)
    return a.sqrt() * output + (1 - a).sqrt() * latents.to(output)


class EpsilonFromPrediction:
    """`predict_noise` for a backend that defines `predict` (its UNet's own output), `alphas_cumprod` and
    `v_prediction`."""

    def predict_noise(self, unet, latents, timesteps, text_embeddings):
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        out = self.predict(unet, latents, timesteps, text_embeddings)
        return epsilon_from(out, latents, timesteps, self.alphas_cumprod, self.v_prediction)

    def with_unet(self, unet: nn.Module):
        """The same model with another UNet (shares VAE and text encoder; nothing is copied)."""
        clone = copy.copy(self)
        clone.unet = unet
        return clone


class TokenEmbeddingText(Protocol):
    """What the embedding-level attacks (erasure_core/attacks) also ask of a model: text encoding whose input
    token embeddings can be replaced, with gradients. `erasure_core.attacks.text` replaces the embeddings of a
    marker word through a forward hook on `token_embedding_module()`, so a backend needs no attack code.

    Implemented by the diffusers backend and the ComfyUI backend (any SD1/SD2 CLIP); not by the webui's.
    """

    def token_embedding_module(self) -> nn.Module: ...  # token ids (N, L) -> embeddings (N, L, D), in the encoder

    def token_ids(self, text: str) -> list[int]: ...  # the ids of `text`, without start/end tokens

    def vocabulary(self) -> dict[str, int]: ...  # the tokenizer's entries: token string -> id

    def encode_text_with_grad(self, prompts: list[str]) -> torch.Tensor: ...  # `encode_text`, gradients kept


def single_token_words(model: TokenEmbeddingText) -> dict[str, int]:
    """Whole words (letters only) that the tokenizer turns into exactly one token, each with that token's id.
    Kept on the model: SD's vocabulary takes a few seconds to check."""
    words = getattr(model, "_single_token_words", None)
    if words is None:
        words = {}
        for entry, index in model.vocabulary().items():
            word = entry[:-len("</w>")] if entry.endswith("</w>") else None
            if word and word.isalpha() and model.token_ids(word) == [index]:
                words[word] = index
        model._single_token_words = words
    return words


@dataclass
class DiffusersModel(EpsilonFromPrediction):
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
        self.v_prediction = self.scheduler_config.get("prediction_type", "epsilon") == "v_prediction"
        for module in self.modules():
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

    def modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.text_encoder]

    def predict(self, unet, latents, timesteps, text_embeddings):
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        if self.unet.dtype != torch.float32 and not torch.is_autocast_enabled(self.device.type):
            # 16-bit frozen weights (fp32 masters only for what is trained): always run under autocast, so the
            # 16-bit and the trained fp32 layers meet in one compute dtype
            with torch.autocast(self.device.type, dtype=self.unet.dtype):
                return unet(latents, timesteps, **self.unet_inputs(text_embeddings)).sample.float()
        return unet(latents, timesteps, **self.unet_inputs(text_embeddings)).sample

    def unet_inputs(self, text_embeddings) -> dict:
        return {"encoder_hidden_states": text_embeddings}

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.encode_text_with_grad(prompts)

    # -- TokenEmbeddingText ------------------------------------------------------------------------
    def encode_text_with_grad(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state.float()

    def token_embedding_module(self) -> nn.Module:
        return self.text_encoder.get_input_embeddings()

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def vocabulary(self) -> dict[str, int]:
        return dict(self.tokenizer.get_vocab())

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

    def save_pretrained(self, folder: Path) -> Path:
        """Write a complete diffusers folder (e.g. a merged checkpoint after an erasure), atomically."""
        from .safe_files import atomic_folder

        with atomic_folder(Path(folder)) as tmp:
            self.pipeline().save_pretrained(tmp, safe_serialization=True)
        return Path(folder)

    def pipeline(self):
        """The diffusers pipeline of these components (shares them; the scheduler samples what the UNet predicts)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )


@dataclass
class DiffusersXLModel(DiffusersModel):
    """An SDXL-type model held as diffusers modules: two text encoders (their penultimate hidden states
    concatenated, the second one's projection as pooled embedding) and the UNet's size/crop time ids.

    `encode_text` returns a `Conditioning(context, pooled, time_ids)` computed by diffusers' own
    `StableDiffusionXLPipeline.encode_prompt`; the time ids say "drawn at the native size, uncropped" (what the
    pipeline passes). With `force_zeros_for_empty_prompt` (SDXL base's setting) the empty prompt is zeros, as
    the pipeline's unconditional branch is.
    """

    text_encoder_2: nn.Module = None
    tokenizer_2: object = None
    force_zeros_for_empty_prompt: bool = True

    def modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.text_encoder, self.text_encoder_2]

    def unet_inputs(self, text_embeddings: Conditioning) -> dict:
        return {"encoder_hidden_states": text_embeddings["context"],
                "added_cond_kwargs": {"text_embeds": text_embeddings["pooled"], "time_ids": text_embeddings["time_ids"]}}

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Conditioning:
        prompts = list(prompts)
        context, _, pooled, _ = self.pipeline().encode_prompt(prompts, device=self.device,
                                                              do_classifier_free_guidance=False)
        side = self.image_size
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=context.dtype, device=self.device)
        cond = Conditioning(context=context, pooled=pooled, time_ids=time_ids.expand(len(prompts), -1))
        return zero_empty_prompts(cond, prompts, keep=("time_ids",)) if self.force_zeros_for_empty_prompt else cond

    def pipeline(self):
        from diffusers import DDIMScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, add_watermarker=False,
        )


# diffusers pipeline classes -> family; anything else is refused with its name
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd1", "StableDiffusionImg2ImgPipeline": "sd1",
                     "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl"}
UNSUPPORTED_NAMES = {"StableDiffusion3Pipeline": "SD3", "FluxPipeline": "Flux", "StableDiffusionXLInpaintPipeline":
                     "SDXL inpainting", "StableDiffusionInpaintPipeline": "SD inpainting", "StableCascadeCombinedPipeline":
                     "Stable Cascade", "PixArtAlphaPipeline": "PixArt", "AuraFlowPipeline": "AuraFlow",
                     "HunyuanDiTPipeline": "Hunyuan-DiT", "KolorsPipeline": "Kolors", "SanaPipeline": "Sana",
                     "LuminaText2ImgPipeline": "Lumina", "CogView4Pipeline": "CogView4", "QwenImagePipeline": "Qwen-Image"}
SUPPORTED = "Stable Diffusion 1.x/2.x and SDXL (and its fine-tunes)"


def unsupported(what: str) -> ErasureInputError:
    return ErasureInputError("model", f"{what} models are not supported", f"use a {SUPPORTED} model")


def folder_family(folder: Path) -> str:
    """'sd1' or 'sdxl' from a diffusers folder's model_index.json; other pipelines are refused by name."""
    import json

    index = json.loads(Path(folder, "model_index.json").read_text())
    name = index.get("_class_name", "")
    family = PIPELINE_FAMILIES.get(name)
    if family is None:
        raise unsupported(UNSUPPORTED_NAMES.get(name, name or "unknown"))
    if family == "sdxl" and not (index.get("text_encoder") or [None])[0]:
        raise unsupported("SDXL refiner (one text encoder, aesthetic-score conditioning)")
    return family


def checkpoint_family(keys) -> str | None:
    """The family of a single-file checkpoint from its tensor names (None: not recognised; diffusers decides)."""
    keys = set(keys)
    if any(k.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for k in keys):
        raise unsupported("SD3")
    if any(k.startswith(("model.diffusion_model.double_blocks.", "double_blocks.")) for k in keys):
        raise unsupported("Flux")
    if "model.diffusion_model.label_emb.0.0.weight" in keys:
        if not any(k.startswith("conditioner.embedders.1.") for k in keys):
            raise unsupported("SDXL refiner (one text encoder, aesthetic-score conditioning)")
        return "sdxl"
    if "model.diffusion_model.input_blocks.0.0.weight" in keys:
        return "sd1"
    return None


def load_diffusers_model(path: str | Path, device: str | torch.device = "cpu", config: str | Path | None = None,
                         dtype: torch.dtype | None = None) -> DiffusersModel:
    """Load a local diffusers folder, or a single-file SD1.x/SDXL `.safetensors` checkpoint, offline.

    A single file needs `config`: a local diffusers folder of the same architecture whose
    component configs describe it. Nothing is ever downloaded. SD3, Flux and other architectures
    are refused by name. `dtype` is how the frozen weights are kept: by default fp16 on CUDA (half
    the memory; what ComfyUI and the webui do) and fp32 elsewhere; the trained weights always have
    fp32 masters. A VAE that asks for it (`force_upcast`, SDXL's) stays in fp32, as diffusers keeps it.
    """
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    path = Path(path)
    if not path.exists():
        raise ErasureInputError("model", f"{path} does not exist", "give a diffusers model folder or a .safetensors file")
    pipelines = {"sd1": (StableDiffusionPipeline, dict(safety_checker=None, requires_safety_checker=False)),
                 "sdxl": (StableDiffusionXLPipeline, dict(add_watermarker=False))}
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ErasureInputError("model", f"{path} has no model_index.json, so it is not a diffusers model folder",
                                    "point at the folder that holds model_index.json, unet/, vae/, text_encoder/")
        family = folder_family(path)
        cls, options = pipelines[family]
        pipe = cls.from_pretrained(path, local_files_only=True, dtype=dtype, **options)
    else:
        from safetensors import safe_open

        from .safe_files import check_safetensors

        check_safetensors(path, "model")
        with safe_open(str(path), "pt") as f:
            in_file = checkpoint_family(f.keys())
        if config is None or not Path(config, "model_index.json").exists():
            raise ErasureInputError(
                "config", f"a single-file checkpoint ({path.name}) needs a local diffusers folder describing its "
                "architecture, and none was given", "pass --config with a local SD1.x or SDXL diffusers folder "
                "(nothing is downloaded)")
        family = folder_family(Path(config))
        if in_file is not None and in_file != family:
            names = {"sd1": "SD1.x/SD2.x", "sdxl": "SDXL"}
            raise ErasureInputError("config", f"{path.name} is an {names[in_file]} checkpoint but {config} describes "
                                    f"an {names[family]} model", f"pass --config with a local {names[in_file]} "
                                    "diffusers folder")
        cls, options = pipelines[family]
        pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True, dtype=dtype, **options)
    device = torch.device(device)
    if family == "sdxl" and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (what StableDiffusionXLPipeline upcasts for)
    parts = dict(unet=pipe.unet.to(device), vae=pipe.vae.to(device), text_encoder=pipe.text_encoder.to(device),
                 tokenizer=pipe.tokenizer, scheduler_config=dict(pipe.scheduler.config), device=device, source=str(path))
    if family == "sdxl":
        return DiffusersXLModel(**parts, text_encoder_2=pipe.text_encoder_2.to(device), tokenizer_2=pipe.tokenizer_2,
                                force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt))
    return DiffusersModel(**parts)

"""The model interface over an ldm-layout UNet (`openaimodel.UNetModel`, as in the webui and ComfyUI).

The UNet is called as `unet(x, timesteps=t, context=c)`; text encoding and the VAE come from
the host as plain functions, so this module imports no host and is tested on ComfyUI's own
ldm UNetModel. Erasure files leave with diffusers-path kohya keys
(`lora_unet_down_blocks_1_attentions_0_...`), the convention every backend of this project
writes, so a file made in the webui applies in the CLI and ComfyUI alike.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import erasure_file
from ..conditioning import Conditioning
from ..errors import ErasureInputError
from ..layers import weight_layers
from ..model import EpsilonFromPrediction


def scheduler_config_for(alphas_cumprod: torch.Tensor, v_prediction: bool = False) -> dict:
    """A diffusers scheduler config with exactly this ᾱ (as trained betas) and prediction type, for the core's
    DDIM sampling."""
    a = alphas_cumprod.double().cpu()
    prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
    betas = (1 - a / prev).clamp(0, 0.999)
    return {"num_train_timesteps": len(a), "trained_betas": betas.tolist(), "beta_schedule": "linear",
            "prediction_type": "v_prediction" if v_prediction else "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
            "timestep_spacing": "leading"}


def saved_activation_copies():
    """Autograd keeps a copy of each activation it saves for the backward pass (weights as they are), so a UNet
    may go on adding to an activation in place after a layer saved it; the gradients are those of the same
    UNet written without in-place additions (tests/test_app_webui.py)."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t if isinstance(t, nn.Parameter) else t.clone(),
                                                    lambda t: t)


@dataclass
class LdmModel(EpsilonFromPrediction):
    """`erasure_core.model.DiffusionModel` over an ldm UNet plus host-supplied text and VAE functions.

    `encode_text(prompts) -> (B, 77, C)`, or for SDXL a `Conditioning(context, y)` (the UNet's `context` and
    `y` inputs); `encode_images(x in [0,1]) -> scaled latents`, `decode_latents(latents) -> images in [0,1]`.
    `unet` is only read: the methods train a copy. `v_prediction`: the UNet predicts v (converted to epsilon).
    """

    unet: nn.Module
    alphas_cumprod: torch.Tensor
    text_fn: Callable[[list[str]], torch.Tensor]
    encode_fn: Callable[[torch.Tensor], torch.Tensor]
    decode_fn: Callable[[torch.Tensor], torch.Tensor]
    latent_shape: tuple[int, int, int] = (4, 64, 64)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vae_factor: int = 8  # pixels per latent cell along a side (SD's VAE)
    # The UNet adds to its activations in place (Forge's transformer blocks: `x += n`), which autograd refuses
    # for activations it saved: while training, saved activations are then kept as copies.
    inplace_activations: bool = False
    v_prediction: bool = False

    def __post_init__(self):
        self.alphas_cumprod = self.alphas_cumprod.detach().float().cpu()
        self.scheduler_config = scheduler_config_for(self.alphas_cumprod, self.v_prediction)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def diffusers_equivalent(self) -> nn.Module:
        """For the memory plan: the diffusers UNet of this ldm UNet's layout, on `meta`."""
        return meta_diffusers_unet(self.unet)

    def predict(self, unet, latents, timesteps, text_embeddings):
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        dtype = next(unet.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        inputs = dict(text_embeddings.to(self.device, dtype).parts) if isinstance(text_embeddings, Conditioning) \
            else {"context": text_embeddings.to(self.device, dtype)}
        copies = saved_activation_copies() if self.inplace_activations and torch.is_grad_enabled() else nullcontext()
        with copies:
            out = unet(latents.to(self.device, dtype), timesteps=timesteps.to(self.device), **inputs)
        return out.float()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor | Conditioning:
        with torch.inference_mode(False):
            ctx = self.text_fn(list(prompts))
        # Hosts may compute under inference mode; a clone made here is an ordinary tensor autograd accepts.
        return ctx.detach().clone().float().to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False):
            z = self.encode_fn(images.to(self.device))
        return z.detach().clone().float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False):
            x = self.decode_fn(latents)
        return x.detach().clone().float().clamp(0, 1)


# -- ldm module paths -> diffusers module paths --------------------------------------------------
RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
TOP_LEVEL = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}


def _block_part(rest: str, prefix: str) -> str:
    """Inside a res block, rename its ldm layer names; inside a transformer, names are shared."""
    for ldm, diff in RESNET_PARTS.items():
        if rest == ldm or rest.startswith(ldm + "."):
            return f"{prefix}.{diff}{rest[len(ldm):]}"
    return f"{prefix}.{rest}" if rest else prefix


def ldm_to_diffusers_name(name: str, num_res_blocks: int) -> str | None:
    """The diffusers UNet2DConditionModel path of an ldm UNet module path (None if unknown).

    Same layout as SD1/SD2: each resolution level has `num_res_blocks` res blocks (+ attention).
    """
    n = num_res_blocks
    for ldm, diff in TOP_LEVEL.items():
        if name == ldm or name.startswith(ldm + "."):
            return diff + name[len(ldm):]
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)(?:\.(.*))?", name)
    if m:
        index, part, rest = int(m[1]), int(m[2]), m[3] or ""
        level, j = divmod(index - 1, n + 1)
        if j == n:  # the last block of a level is its downsampler
            return f"down_blocks.{level}.downsamplers.0.conv" if rest == "op" else None
        kind = "resnets" if part == 0 else "attentions"
        return _block_part(rest, f"down_blocks.{level}.{kind}.{j}")
    m = re.fullmatch(r"middle_block\.(\d+)(?:\.(.*))?", name)
    if m:
        part, rest = int(m[1]), m[2] or ""
        prefix = {0: "mid_block.resnets.0", 1: "mid_block.attentions.0", 2: "mid_block.resnets.1"}[part]
        return _block_part(rest, prefix)
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)(?:\.(.*))?", name)
    if m:
        index, part, rest = int(m[1]), int(m[2]), m[3] or ""
        level, j = divmod(index, n + 1)
        if rest == "conv" and part > 0:  # an Upsample (ldm nests it after the res block and attention)
            return f"up_blocks.{level}.upsamplers.0.conv"
        kind = "resnets" if part == 0 else "attentions"
        return _block_part(rest, f"up_blocks.{level}.{kind}.{j}")
    return None


def diffusers_layout(unet: nn.Module) -> dict:
    """The UNet2DConditionModel config with the layers of an SD1/SD2/SDXL-type ldm UNetModel (ComfyUI's, the
    webui's), read off the module itself: widths, levels, attention levels, transformer depth, text width, and
    SDXL's added embedding."""
    from diffusers.models.attention import BasicTransformerBlock  # noqa: F401  (diffusers is the reference layout)

    nrb, levels = unet_layout(unet)
    mult = list(unet.channel_mult)
    attn, depth, context, linear, groups = [], [], None, False, 32
    for level in range(levels):
        block = unet.input_blocks[1 + level * (nrb + 1)]
        transformer = block[1] if len(block) > 1 else None
        attn.append(transformer is not None)
        depth.append(len(transformer.transformer_blocks) if transformer is not None else 1)
        if transformer is not None and context is None:
            context = transformer.transformer_blocks[0].attn2.to_k.weight.shape[1]
            linear = transformer.proj_in.weight.ndim == 2
            groups = transformer.norm.num_groups
    config = dict(sample_size=64, in_channels=unet.in_channels, out_channels=unet.out_channels, layers_per_block=nrb,
                  block_out_channels=[unet.model_channels * m for m in mult],
                  down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                  up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                  cross_attention_dim=context or 768, transformer_layers_per_block=depth,
                  use_linear_projection=linear, norm_num_groups=groups, attention_head_dim=8)
    label_emb = getattr(unet, "label_emb", None)
    if label_emb is not None:  # SDXL: the pooled text and six sizes embedded at 256 each (ComfyUI, sgm, Forge)
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=label_emb[0][0].in_features)
    return config


def meta_diffusers_unet(unet: nn.Module) -> nn.Module:
    """diffusers' UNet of an ldm UNet's layout, shapes only: what the memory plan runs its count on, since a
    host's own attention code (ComfyUI's, the webui's) cannot run on the `meta` device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return nn.Module.to(UNet2DConditionModel(**diffusers_layout(unet)), next(unet.parameters()).dtype)


def unet_layout(unet: nn.Module) -> tuple[int, int]:
    """(res blocks per level, levels) of an ldm UNetModel."""
    nrb = getattr(unet, "num_res_blocks", None)
    nrb = nrb[0] if isinstance(nrb, (list, tuple)) else nrb
    mult = getattr(unet, "channel_mult", None)
    if not isinstance(nrb, int) or mult is None:
        raise ErasureInputError("model", f"{type(unet).__name__} is not an ldm UNetModel (no num_res_blocks/"
                                "channel_mult)", "load a Stable Diffusion 1.x checkpoint")
    return nrb, len(mult)


def to_diffusers_keys(state_dict: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """Rename kohya keys of ldm module paths to diffusers module paths (the project's file convention)."""
    nrb, _ = unet_layout(unet)
    rename = {}
    for name, _ in weight_layers(unet):
        diff = ldm_to_diffusers_name(name, nrb)
        if diff is not None:
            rename[erasure_file.module_key(name)] = erasure_file.module_key(diff)
    out = {}
    for key, tensor in state_dict.items():
        module, suffix = erasure_file.split_key(key)
        if module not in rename:
            raise ErasureInputError("erasure", f"layer {module!r} has no diffusers name",
                                    "train a parameter group of attention or res-block layers")
        out[rename[module] + suffix] = tensor
    return out

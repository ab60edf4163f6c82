"""Model families and the layer names their erasure files use.

- SD1.x/SD2.x files name layers by their diffusers module paths (`lora_unet_down_blocks_1_attentions_0_…`),
  the convention this project started with; every host converts to it.
- SDXL files name layers by their ldm module paths (`lora_unet_input_blocks_4_1_transformer_blocks_0_…`),
  the layout kohya's sd-scripts writes for SDXL and the one SDXL LoRAs are shared in; ComfyUI's LoraLoader and
  the A1111/Forge Lora networks read it as it is. A diffusers SDXL UNet's layers are renamed to it here.

The family is read off the UNet itself: a diffusers UNet with `addition_embed_type "text_time"`, or an ldm
UNet with a `label_emb` (the pooled-text and size embedding; the hosts refuse other ldm UNets that have one).
"""
from __future__ import annotations

import re

from torch import nn

FAMILIES = {  # family -> (modelspec.architecture, ss_base_model_version): what LoRA lists file a model under
    "sd1": ("stable-diffusion-v1", "sd_v1"),
    "sdxl": ("stable-diffusion-xl-v1-base", "sdxl_base_v1-0"),
}


def family_of(unet: nn.Module) -> str:
    if getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time":  # diffusers
        return "sdxl"
    # ldm: A1111's sgm and ComfyUI's UNetModel, and Forge's, which also carries a (ldm-style) diffusers config
    if is_ldm(unet) and getattr(unet, "label_emb", None) is not None:
        return "sdxl"
    return "sd1"


def is_ldm(unet: nn.Module) -> bool:
    """Whether the UNet has ldm module paths (input_blocks…), not diffusers ones (down_blocks…)."""
    return hasattr(unet, "input_blocks")


# diffusers resnet layer names -> ldm ones (the inverse of backends.ldm.RESNET_PARTS)
RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_TO_LDM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet_part(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return RESNET_TO_LDM.get(head, head) + (f".{tail}" if tail else "")


def diffusers_to_ldm_name(name: str, layers_per_block: int, up_attention: list[bool]) -> str:
    """The ldm module path of a diffusers UNet2DConditionModel module path.

    `layers_per_block`: res blocks per down level (up levels have one more); `up_attention[i]`: whether up
    level i has attentions (ldm nests an upsampler after them, so its index moves from 1 to 2).
    """
    n = layers_per_block
    for diff, ldm in TOP_TO_LDM.items():
        if name == diff or name.startswith(diff + "."):
            return ldm + name[len(diff):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(?:\.(.*))?", name)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * (n + 1)}.0.op"
        index = 1 + level * (n + 1) + j
        return f"input_blocks.{index}.0.{_resnet_part(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_resnet_part(rest)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(?:\.(.*))?", name)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "upsamplers":
            return f"output_blocks.{level * (n + 1) + n}.{2 if up_attention[level] else 1}.conv"
        index = level * (n + 1) + j
        return f"output_blocks.{index}.0.{_resnet_part(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    raise ValueError(f"{name!r} is not a diffusers UNet2DConditionModel module path")


def file_layer_name(unet: nn.Module):
    """name -> the layer's name in an erasure file, for this UNet's module paths."""
    if family_of(unet) != "sdxl" or is_ldm(unet):  # SD1: diffusers paths as they are; an ldm SDXL UNet's own paths
        return lambda name: name
    config = unet.config
    up_attention = [t.startswith("CrossAttn") for t in config.up_block_types]
    return lambda name: diffusers_to_ldm_name(name, config.layers_per_block, up_attention)

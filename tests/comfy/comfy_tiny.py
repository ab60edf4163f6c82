"""Small real ComfyUI objects for the headless harness: a MODEL built from a unet_config with the
toy world's UNet weights, a real comfy CLIP (SD1 tokenizer, 2-layer 64-wide text model) and a real
comfy VAE (TAESD layout). Weights that the toy world does not provide are random but fixed."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

CPU = torch.device("cpu")


def toy_model_dir() -> Path:
    """The trained toy world if it is there, else an untrained model of the same layout."""
    from erasure_core.toyworld import MODEL_DIR

    for candidate in (os.environ.get("CONCEPT_ERASER_TOY_MODEL"), MODEL_DIR, "/tmp/smoke/model"):
        if candidate and Path(candidate, "unet", "config.json").exists():
            return Path(candidate)
    raise FileNotFoundError("no toy-world model found (set CONCEPT_ERASER_TOY_MODEL)")


def unet_config_for(d: dict) -> dict:
    """ComfyUI's unet_config for a diffusers SD1-type UNet config (one res block layout per level)."""
    levels = len(d["block_out_channels"])
    layers = d["layers_per_block"]
    attn = [t.startswith("CrossAttn") for t in d["down_block_types"]]
    up_attn = list(reversed(attn))
    return {
        "image_size": d["sample_size"], "in_channels": d["in_channels"], "out_channels": d["out_channels"],
        "model_channels": d["block_out_channels"][0], "num_res_blocks": [layers] * levels,
        "channel_mult": [c // d["block_out_channels"][0] for c in d["block_out_channels"]],
        "transformer_depth": [int(a) for a in attn for _ in range(layers)],
        # output blocks: layers + 1 per level, listed from the lowest level (comfy pops from the end)
        "transformer_depth_output": [int(up_attn[levels - 1 - i]) for i in range(levels) for _ in range(layers + 1)],
        "transformer_depth_middle": 1, "context_dim": d["cross_attention_dim"],
        "use_linear_in_transformer": bool(d.get("use_linear_projection", False)), "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "use_checkpoint": False,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def group_norm_ops(groups: int):
    """ComfyUI hard-codes GroupNorm(32, ...) in the UNet; the toy UNet uses `groups`."""
    class Ops(comfy.ops.disable_weight_init):
        class GroupNorm(comfy.ops.disable_weight_init.GroupNorm):
            def __init__(self, num_groups, num_channels, *args, **kwargs):
                super().__init__(groups, num_channels, *args, **kwargs)
    return Ops


def build_model(diffusers_unet):
    """A ComfyUI MODEL (ModelPatcher) holding exactly `diffusers_unet`'s weights."""
    config = unet_config_for(dict(diffusers_unet.config))
    model_config = comfy.supported_models.SD15(config)
    model_config.custom_operations = group_norm_ops(diffusers_unet.config.norm_num_groups)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    names = comfy.utils.unet_to_diffusers(base.model_config.unet_config)
    base.diffusion_model.load_state_dict({names[k]: v for k, v in diffusers_unet.state_dict().items()}, strict=True)
    base.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(base, load_device=CPU, offload_device=CPU)


TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                   vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                   projection_dim=64, bos_token_id=0, eos_token_id=49407, pad_token_id=1)


class TinyClipL(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, textmodel_json_config=TEXT_CONFIG, return_projected_pooled=False,
                         model_options=model_options)


def build_clip(seed: int = 0):
    """A real comfy CLIP (SD1 tokenizer and encoder code) with a small random text model."""
    from transformers import CLIPTextConfig, CLIPTextModel

    target = comfy.supported_models_base.ClipTarget(
        functools.partial(comfy.sd1_clip.SD1Tokenizer,
                          tokenizer=functools.partial(comfy.sd1_clip.SDTokenizer, embedding_size=64)),
        functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TinyClipL))
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    torch.manual_seed(seed)
    hf = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in hf.state_dict().items()}
    sd["text_projection.weight"] = torch.eye(64)
    clip.load_sd(sd)
    return clip


def build_vae(seed: int = 0):
    """A real comfy VAE in the TAESD layout (8x down/up-scaling, 4 latent channels), random weights."""
    from comfy.taesd.taesd import TAESD

    gen = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(v.shape, generator=gen) * 0.05 if v.ndim > 0 else torch.tensor(1.0))
          for k, v in TAESD().state_dict().items()}
    return comfy.sd.VAE(sd=sd)

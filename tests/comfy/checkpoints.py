"""Random-weight model files that ComfyUI's own loaders accept, as small as detection allows.

CheckpointLoaderSimple recognises SD1.5 by model_channels 320, context_dim 768 and the ldm layout,
not by depth: a one-level UNet (no downsampling, one res block, one transformer) is detected as
SD1.5 and runs through every core node like the real thing. The text encoder must be a full
CLIP-L (its config is fixed in ComfyUI), and the VAE is a TAESD-layout one (ComfyUI's VAE loader
detects that layout inside a checkpoint too). fp16, about 280 MB in all instead of 2 GB.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file

SHALLOW_SD15 = {
    "image_size": 32, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
    "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_checkpoint": False,
}


def random_like(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Plausible random weights: norm scales (every 1-D weight) at 1, biases at 0, matrices ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) <= 1:
            value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        out[name] = value.half().contiguous()
    return out


def meta_shapes(module_factory) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = module_factory()
    return {k: v.shape for k, v in module.state_dict().items()}


def unet_shapes() -> dict[str, torch.Size]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = dict(SHALLOW_SD15, out_channels=4, transformer_depth_output=[1, 1])
    return meta_shapes(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init))


def clip_l_shapes() -> dict[str, torch.Size]:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
    shapes = meta_shapes(lambda: CLIPTextModel(config))
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in shapes.items()
            if "position_ids" not in k}


def taesd_shapes() -> dict[str, torch.Size]:
    from comfy.taesd.taesd import TAESD

    return meta_shapes(TAESD)


def write_checkpoint(path, seed: int = 0) -> None:
    sd = {f"model.diffusion_model.{k}": v for k, v in random_like(unet_shapes(), seed).items()}
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in random_like(clip_l_shapes(), seed + 1).items()})
    vae = random_like(taesd_shapes(), seed + 2)
    vae["vae_scale"], vae["vae_shift"] = torch.tensor(1.0).half(), torch.tensor(0.0).half()
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    save_file(sd, str(path))


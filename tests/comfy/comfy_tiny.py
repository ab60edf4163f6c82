"""Small real ComfyUI objects for the headless harness: a MODEL with the toy world's UNet weights
(erasure_core.backends.comfy_toyworld.build_model), a real comfy CLIP (SD1 tokenizer, 2-layer 64-wide
text model) and a real comfy VAE (TAESD layout). CLIP and VAE weights are random but fixed: the node
tests need SD's own tokenizer and 8x latents (the toy world's own are in comfy_toyworld)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
from erasure_core.backends.comfy_toyworld import build_model  # noqa: F401  (the MODEL: the package's own)


def toy_model_dir() -> Path:
    """The trained toy world if it is there, else an untrained model of the same layout."""
    from erasure_core.toyworld import MODEL_DIR

    for candidate in (os.environ.get("CONCEPT_ERASER_TOY_MODEL"), MODEL_DIR, "/tmp/smoke/model"):
        if candidate and Path(candidate, "unet", "config.json").exists():
            return Path(candidate)
    raise FileNotFoundError("no toy-world model found (set CONCEPT_ERASER_TOY_MODEL)")


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

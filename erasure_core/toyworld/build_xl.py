"""The XL toy world: the SDXL architecture at toy widths, trained on the same procedural world as the SD1 toy.

Run: `python -m erasure_core toyworld-train --xl [--out DIR]`. The result is an ordinary diffusers
`StableDiffusionXLPipeline` folder (loadable offline with `from_pretrained(path)`):
- a UNet in SDXL's layout: three levels, the first without attention, two res blocks per level, a deeper
  transformer at the lowest level, linear projections in the transformers, and `addition_embed_type
  "text_time"` (the pooled text embedding plus the six size/crop numbers are added to the time embedding);
- two text encoders as SDXL has them, a `CLIPTextModel` and a `CLIPTextModelWithProjection`, whose
  penultimate hidden states are concatenated into the cross-attention context and whose second one's
  projection is the pooled embedding (diffusers' `encode_prompt` computes both, in training too);
- the SD1 toy world's VAE and tokenizer (both tokenizers are the toy one).

The empty prompt: SDXL was trained with dropped captions as *zeroed* embeddings, hence diffusers'
`force_zeros_for_empty_prompt`; here the empty caption is trained on the empty canvas (README: why) with
zeroed context and pooled embedding, so the model expects zeros for "no prompt" exactly as SDXL does.
The size/crop numbers are drawn at random for every example: the pictures do not depend on them, so the
model learns to ignore them and any host's choice (ComfyUI passes the latent size times 8) is in range.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from . import MODEL_DIR
from .build import DiffusionRecipe, build_info, scheduler_config, toy_tokenizer, train_diffusion
from .draw import IMAGE_SIZE
from .tokenizer import MAX_LENGTH

TIME_EMBED_DIM = 256  # per size/crop number, as SDXL (ComfyUI, sgm and Forge embed them at 256 whatever the model)
TEXT_WIDTHS = (32, 64)  # hidden sizes of the two text encoders (SDXL: 768 and 1280); context = their sum
POOLED_DIM = 64  # text_encoder_2's projection (SDXL: 1280)


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=2,
        # 32 norm groups: the ldm UNets of ComfyUI, sgm (A1111) and Forge fix GroupNorm at 32, so each holds it as
        # it is. 64 channels at the first level, so a group holds two: with 32, each channel is normalised on its
        # own, which drops the ratios between channels that carry colour (a 32-channel build drew colour 0.32).
        block_out_channels=(64, 64, 64), norm_num_groups=32, cross_attention_dim=sum(TEXT_WIDTHS),
        attention_head_dim=(8, 8, 8), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=POOLED_DIM + 6 * TIME_EMBED_DIM,
    )


def text_config(tokenizer: CLIPTokenizer, width: int, act: str) -> CLIPTextConfig:
    # Three layers: SDXL reads the penultimate hidden state, so the context passes two of them.
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=3,
        num_attention_heads=width // 16, max_position_embeddings=MAX_LENGTH, projection_dim=POOLED_DIM,
        hidden_act=act, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def xl_modules(tokenizer: CLIPTokenizer) -> dict[str, torch.nn.Module]:
    return {
        "unet": make_unet(),
        "text_encoder": CLIPTextModel(text_config(tokenizer, TEXT_WIDTHS[0], "quick_gelu")),  # CLIP ViT-L's act
        "text_encoder_2": CLIPTextModelWithProjection(text_config(tokenizer, TEXT_WIDTHS[1], "gelu")),  # bigG's
    }


def pipeline(vae, tokenizer: CLIPTokenizer, modules: dict) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=vae, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=DDIMScheduler(**scheduler_config()),
        force_zeros_for_empty_prompt=True, add_watermarker=False, **modules,
    )


def random_time_ids(rng: np.random.Generator, n: int) -> torch.Tensor:
    """(n, 6) original (h, w), crop (top, left), target (h, w): sizes 32-1024, half the crops zero."""
    sizes = rng.integers(32, 1025, size=(n, 4))
    crops = rng.integers(0, 257, size=(n, 2)) * (rng.random((n, 1)) < 0.5)
    return torch.tensor(np.concatenate([sizes[:, :2], crops, sizes[:, 2:]], axis=1), dtype=torch.float32)


def xl_conditioner(modules: dict, tokenizer: CLIPTokenizer):
    pipe = pipeline(None, tokenizer, modules)

    def condition(captions: list[str], rng: np.random.Generator) -> dict:
        context, _, pooled, _ = pipe.encode_prompt(captions, device=torch.device("cpu"),
                                                   do_classifier_free_guidance=False)
        keep = torch.tensor([bool(c) for c in captions], dtype=context.dtype)  # the empty caption: zeros
        return {"encoder_hidden_states": context * keep[:, None, None],
                "added_cond_kwargs": {"text_embeds": pooled * keep[:, None],
                                      "time_ids": random_time_ids(rng, len(captions))}}
    return condition


def save_xl(folder: Path, vae, tokenizer: CLIPTokenizer, modules: dict) -> None:
    pipeline(vae, tokenizer, modules).save_pretrained(folder, safe_serialization=True)


SDXL = DiffusionRecipe(make=xl_modules, conditioner=xl_conditioner, save=save_xl)


def build_xl(out: Path, diffusion_steps: int = 4000, batch: int = 64, seed: int = 0, log=print,
             checkpoint_dir: Path | None = None, schedule_steps: int | None = None,
             vae_dir: Path = MODEL_DIR / "vae") -> dict:
    """Train the XL toy into `out/model` (the SD1 toy's VAE from `vae_dir`), and write `out/build_info.json`."""
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = toy_tokenizer()
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)

    def checkpoint(modules, step):
        save_xl(checkpoint_dir / f"checkpoint-{step}", vae, tokenizer, modules)

    modules = train_diffusion(vae, tokenizer, diffusion_steps, batch, seed, log,
                              checkpoint if checkpoint_dir else None, schedule_steps, recipe=SDXL)
    timings = {"diffusion_seconds": time.time() - started}
    save_xl(out / "model", vae, tokenizer, modules)
    info = build_info(
        f"python -m erasure_core toyworld-train --xl --steps {diffusion_steps}"
        + (f" --schedule-steps {schedule_steps}" if schedule_steps else ""),
        seed, batch, timings, started, diffusion_steps=diffusion_steps,
        lr_schedule_steps=schedule_steps or diffusion_steps, vae="the SD1 toy world's (model/vae)")
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info

"""Deterministic training of the toy world: VAE, then text encoder + UNet, then the judge.

Run: `python -m erasure_core toyworld-train [--out DIR]`. The result is an ordinary diffusers
`StableDiffusionPipeline` folder (loadable offline with `from_pretrained(path)`) plus the judge.

Design choice (documented in the README): the empty prompt is trained on the *empty canvas*
rather than on the data marginal. In a real model the unconditional distribution contains any
given concept only rarely; with just four shapes, a marginal-trained toy model would draw the
erased shape in a quarter of its unconditional samples and make erasure unmeasurable.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from . import judge as judge_mod
from .draw import IMAGE_SIZE, blank_canvas, draw_scene
from .tokenizer import MAX_LENGTH, write_tokenizer
from .world import all_scenes, caption, vocabulary_words

UNCOND_RATE = 0.12  # share of training examples that teach "empty prompt -> empty canvas"


def scheduler_config() -> dict:
    """Stable Diffusion 1.x's noise schedule, so the toy model behaves like SD under every sampler."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), sample_size=IMAGE_SIZE,
    )


def make_unet() -> UNet2DConditionModel:
    # Self-attention at 16x16 costs 2.5x the step on a CPU; the lower two levels carry the text.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=16, cross_attention_dim=64, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) in [0,1] -> (N,3,H,W) in [-1,1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul(2).sub(1)


def sample_batch(rng: np.random.Generator, prng: random.Random, size: int, uncond_rate: float):
    """Procedural images and captions; a share of them empty canvases with the empty caption."""
    scenes = all_scenes()
    images, captions = [], []
    for _ in range(size):
        if prng.random() < uncond_rate:
            images.append(blank_canvas(rng))
            captions.append("")
        else:
            scene = scenes[prng.randrange(len(scenes))]
            images.append(draw_scene(scene, rng))
            captions.append(caption(scene, prng))
    return to_model_space(np.stack(images)), captions


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(steps: int, batch: int, seed: int, log) -> AutoencoderKL:
    torch.manual_seed(seed)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 50))
    for step in range(steps):
        x, _ = sample_batch(rng, prng, batch, uncond_rate=0.05)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.5f}")
    vae.eval()
    # Latents are scaled to unit variance, as SD's 0.18215 does for its VAE.
    with torch.no_grad():
        x, _ = sample_batch(rng, prng, 1024, uncond_rate=0.0)
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    log(f"vae scaling_factor {vae.config.scaling_factor}")
    return vae


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@dataclass
class DiffusionRecipe:
    """What one toy model family trains: its modules, how captions become the UNet's conditioning, how it is saved.

    `make(tokenizer)` returns the trainable modules by pipeline name, in creation order (the order sets the
    random initialisation); `conditioner(modules, tokenizer)` returns `condition(captions, rng)`, the UNet's
    keyword arguments for a batch; `save(folder, vae, tokenizer, modules)` writes the diffusers folder.
    """

    make: Callable[[CLIPTokenizer], dict[str, torch.nn.Module]]
    conditioner: Callable[[dict, CLIPTokenizer], Callable[[list[str], np.random.Generator], dict]]
    save: Callable[[Path, AutoencoderKL, CLIPTokenizer, dict], None]


def sd1_modules(tokenizer: CLIPTokenizer) -> dict[str, torch.nn.Module]:
    return {"unet": make_unet(), "text_encoder": make_text_encoder(tokenizer)}


def sd1_conditioner(modules: dict, tokenizer: CLIPTokenizer):
    def condition(captions: list[str], rng: np.random.Generator) -> dict:
        ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        return {"encoder_hidden_states": modules["text_encoder"](ids).last_hidden_state}
    return condition


def save_sd1(folder: Path, vae, tokenizer, modules: dict) -> None:
    save_pipeline(folder, vae, modules["text_encoder"], tokenizer, modules["unet"])


SD1 = DiffusionRecipe(make=sd1_modules, conditioner=sd1_conditioner, save=save_sd1)


def train_diffusion(vae, tokenizer, steps: int, batch: int, seed: int, log, checkpoint=None,
                    schedule_steps: int | None = None, recipe: DiffusionRecipe = SD1) -> dict[str, torch.nn.Module]:
    """The recipe's modules (UNet and text encoders) trained jointly from scratch with the ordinary denoising
    loss; returns their EMA copies by name.

    `schedule_steps` is the cosine learning-rate horizon (default: `steps`); training may stop
    before it.
    """
    torch.manual_seed(seed)
    rng, prng = np.random.default_rng(seed + 1), random.Random(seed + 1)
    modules = recipe.make(tokenizer)
    ema = {name: copy.deepcopy(module).eval() for name, module in modules.items()}
    condition = recipe.conditioner(modules, tokenizer)
    noise_sched = DDIMScheduler(**scheduler_config())
    params = [p for module in modules.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.01)
    horizon = schedule_steps or steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, horizon, 200))
    scale = vae.config.scaling_factor
    started = time.time()
    for step in range(steps):
        x, captions = sample_batch(rng, prng, batch, UNCOND_RATE)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        noisy = noise_sched.add_noise(latents, noise, t)
        loss = F.mse_loss(modules["unet"](noisy, t, **condition(captions, rng)).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        for name, module in modules.items():
            ema_update(ema[name], module, decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"diffusion step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if checkpoint and step > 0 and step % 1000 == 0:
            checkpoint(ema, step)
    return ema


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def toy_tokenizer() -> CLIPTokenizer:
    """The toy world's tokenizer, learned from its vocabulary (deterministic)."""
    with tempfile.TemporaryDirectory() as tok_dir:
        write_tokenizer(vocabulary_words(), Path(tok_dir))
        return CLIPTokenizer.from_pretrained(tok_dir)


def build_info(command: str, seed: int, batch: int, timings: dict, started: float, **settings) -> dict:
    """What a build ran, how long it took and where (written beside the model)."""
    return {
        "command": command, "seed": seed, **settings, "batch": batch, **{k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.time() - started, 1), "device": f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)", "torch": torch.__version__,
    }


def build(out: Path, vae_steps: int = 600, diffusion_steps: int = 7000, batch: int = 64,
          judge_steps: int = 1200, seed: int = 0, log=print, checkpoint_dir: Path | None = None,
          schedule_steps: int | None = None) -> dict:
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()
    tokenizer = toy_tokenizer()
    vae = train_vae(vae_steps, 32, seed, log)
    timings["vae_seconds"] = time.time() - t0

    model_dir = out / "model"

    def checkpoint(modules, step):
        save_sd1(checkpoint_dir / f"checkpoint-{step}", vae, tokenizer, modules)

    t1 = time.time()
    modules = train_diffusion(vae, tokenizer, diffusion_steps, batch, seed, log,
                              checkpoint if checkpoint_dir else None, schedule_steps)
    timings["diffusion_seconds"] = time.time() - t1
    save_sd1(model_dir, vae, tokenizer, modules)

    t2 = time.time()
    judge_mod.save_judge(judge_mod.train_judge(vae, judge_steps, seed, log), out / "judge.safetensors")
    timings["judge_seconds"] = time.time() - t2

    info = build_info(
        f"python -m erasure_core toyworld-train --steps {diffusion_steps} --vae-steps {vae_steps} "
        f"--judge-steps {judge_steps}" + (f" --schedule-steps {schedule_steps}" if schedule_steps else ""),
        seed, batch, timings, t0, vae_steps=vae_steps, diffusion_steps=diffusion_steps,
        lr_schedule_steps=schedule_steps or diffusion_steps, judge_steps=judge_steps)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def build_judge(out: Path, judge_steps: int = 1200, seed: int = 0, log=print) -> dict:
    """Retrain only the judge, on the VAE already in `out`/model (the same judge a full build trains: the judge's
    training is seeded on its own), and record it in build_info.json."""
    torch.use_deterministic_algorithms(True)
    started = time.time()
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae").eval()
    judge_mod.save_judge(judge_mod.train_judge(vae, judge_steps, seed, log), out / "judge.safetensors")
    info_path = out / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update(judge_steps=judge_steps, judge_seconds=round(time.time() - started, 1),
                judge_command=f"python -m erasure_core toyworld-train --judge-only --judge-steps {judge_steps}",
                judge_device=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    info_path.write_text(json.dumps(info, indent=2))
    return info

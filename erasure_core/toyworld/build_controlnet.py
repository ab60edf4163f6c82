"""Deterministic training of the toy world's ControlNet on the toy world's own drawings.

Run: `python -m erasure_core toyworld-train-controlnet [--out DIR]`. A diffusers `ControlNetModel`
made from the toy UNet (`ControlNetModel.from_unet`: a copy of its encoder and zero-initialised
output convolutions) learns to steer the frozen toy model from a control image
(erasure_core/toyworld/control.py: the shape's outline, or a blob that fixes position and size
only). Its hint encoder is the SD-family one (three stride-2 convolutions, 8x the latent's side),
so ComfyUI's ControlNet code runs it unchanged.
"""
from __future__ import annotations

import copy
import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler

from ..controlnet import prepare_hint
from .build import cosine_lr, ema_update, scheduler_config
from .control import CAPTION_DROPOUT, CONTROL_KINDS, controlled_batch


NEW_PARTS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
EMA_DECAY = 0.99  # a ~100-step window: a ControlNet starts following its hint suddenly, the average must keep up
NEW_LR_FACTOR = 10  # the new parts (hint encoder, output convolutions) learn at 10x the copied encoder's rate


def training_timesteps(batch: int, total: int) -> torch.Tensor:
    """Timesteps biased to high noise (t = T * sqrt(u): 3/4 of them above T/2), where the layout is still open and
    the control is what decides it; near t = 0 the image is already there and the control adds nothing."""
    return (total * torch.rand(batch).sqrt()).long().clamp(max=total - 1)


def init_hint_encoder(encoder: torch.nn.Module) -> None:
    """He initialisation for the hint encoder, its last convolution random rather than zero.

    diffusers' default initialisation shrinks the control's signal about 2-3x in each of the hint encoder's 8
    convolutions, and `from_unet` zeroes the last one. What the runs before this recipe measured (every other
    setting as now unless said): diffusers' initialisation, lr 2e-4 for all, uniform timesteps, 15% empty
    captions, EMA 0.999: after 500 steps the hint changed the residuals by 1e-5 of their size and was ignored;
    the last convolution random, new parts at 5x: the same at 500 steps (the hint reached the ControlNet at 1/30
    of its size); He initialisation: ignored at 300 steps (shape right with the empty prompt 0.25, chance);
    with half the captions empty: still chance at 300 and 400 steps. With the timesteps biased to high noise
    and the new parts at 10x, the outline was followed from about step 400. The zero output convolutions
    (controlnet_down_blocks) still keep the UNet untouched at the start."""
    for conv in [encoder.conv_in, *encoder.blocks]:
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)
    torch.nn.init.kaiming_normal_(encoder.conv_out.weight, nonlinearity="linear")
    torch.nn.init.zeros_(encoder.conv_out.bias)


def train_controlnet(model, steps: int, batch: int, seed: int, lr: float, log, checkpoint=None,
                     schedule_steps: int | None = None) -> ControlNetModel:
    """A ControlNet for `model` (the toy world's DiffusersModel, kept frozen), trained with the denoising loss.
    `schedule_steps` is the cosine learning-rate horizon (default: `steps`); training may stop before it."""
    torch.manual_seed(seed)
    rng, prng = np.random.default_rng(seed + 3), random.Random(seed + 3)
    controlnet = ControlNetModel.from_unet(model.unet).train()
    controlnet.requires_grad_(True)
    init_hint_encoder(controlnet.controlnet_cond_embedding)
    ema = copy.deepcopy(controlnet).eval().requires_grad_(False)
    noise_sched = DDIMScheduler(**scheduler_config())
    new = [p for n, p in controlnet.named_parameters() if n.startswith(NEW_PARTS)]
    copied = [p for n, p in controlnet.named_parameters() if not n.startswith(NEW_PARTS)]
    opt = torch.optim.AdamW([{"params": copied, "lr": lr}, {"params": new, "lr": lr * NEW_LR_FACTOR}],
                            weight_decay=0.01)
    horizon = schedule_steps or steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, horizon, 100))
    started = time.time()
    for step in range(steps):
        images, hints, captions = controlled_batch(rng, prng, batch)
        latents = model.encode_images(images)
        context = model.encode_text(captions)
        noise = torch.randn_like(latents)
        t = training_timesteps(batch, noise_sched.config.num_train_timesteps)
        noisy = noise_sched.add_noise(latents, noise, t)
        down, mid = controlnet(noisy, t, encoder_hidden_states=context,
                               controlnet_cond=prepare_hint(hints, latents.shape[-2:]), return_dict=False)
        eps = model.unet(noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, controlnet, min(EMA_DECAY, (1 + step) / (10 + step)))
        if step % 50 == 0 or step == steps - 1:
            log(f"controlnet step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if checkpoint and step > 0 and step % 100 == 0:
            checkpoint(ema, step)
    return ema


def build_controlnet(model, out: Path, steps: int = 4000, batch: int = 16, seed: int = 0, lr: float = 2e-4,
                     log=print, checkpoint_dir: Path | None = None, schedule_steps: int | None = None) -> dict:
    """Train and save the ControlNet (a diffusers folder) in `out`, with its build_info.json."""
    from ..safe_files import atomic_folder

    torch.use_deterministic_algorithms(True)
    started = time.time()

    def checkpoint(controlnet, step):
        controlnet.save_pretrained(Path(checkpoint_dir) / f"checkpoint-{step}", safe_serialization=True)

    controlnet = train_controlnet(model, steps, batch, seed, lr, log, checkpoint if checkpoint_dir else None,
                                  schedule_steps)
    info = {
        "command": f"python -m erasure_core toyworld-train-controlnet --steps {steps} --batch {batch} --lr {lr} "
                   f"--threads {torch.get_num_threads()}" + (f" --schedule-steps {schedule_steps}" if schedule_steps else ""),
        "seed": seed, "steps": steps, "lr_schedule_steps": schedule_steps or steps, "batch": batch, "lr": lr, "control_kinds": list(CONTROL_KINDS),
        "caption_dropout": CAPTION_DROPOUT, "seconds": round(time.time() - started, 1),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }
    with atomic_folder(Path(out)) as tmp:
        controlnet.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "build_info.json").write_text(json.dumps(info, indent=2))
    return info

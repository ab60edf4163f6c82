"""One command, one table: each method's training step against a plain diffusers training loop.

    python bench/speed.py [--out DIR] [--quick] [--compile] [--worlds toy,sd15,sdxl]
    python bench/speed.py --memory [--worlds sd15,sdxl]      # only the memory rows, merged into DIR/speed.json
    python bench/speed.py --merge A/speed.json B/speed.json --out DIR   # the parts of a run split up (bench/gpu.sh)
    python bench/speed.py --render [--replan] --out DIR      # DIR/speed.md again; --replan: plans by today's code

Writes DIR/speed.json and DIR/speed.md (default DIR: bench/results). Every row runs in its own
subprocess, so its peak memory (CUDA peak allocated on a GPU, peak RSS on CPU) is its own. The
ratio to the plain loop comes from a paired row: the method and the plain loop alternating step
by step in one process (`measure_paired`), so both see the same machine and allocator state.
Worlds:
- toy:  the toy world (16x16x4 latents) on CPU, each method with the settings bench/quality.py
        uses, run to a finished erasure (300 steps);
- sd15: a full-size SD1.5-shaped model with RANDOM weights (nothing is downloaded): the SD1.5
        UNet and VAE configs, a stub text encoder returning random (N, 77, 768) contexts. 256 px
        on CPU for a few steps; 512 px on a GPU when there is one.
- sdxl: a full-size SDXL-shaped UNet (SDXL base's config, 2.6B parameters) with RANDOM weights
        stored in bf16 (fp32 would not fit a 6 GB process), LoRA rank 4 on cross_attn, bf16 autocast,
        128 px = 16x16 latents on CPU, stub text encoders (random SDXL-shaped context, pooled
        embedding, size ids) and a stub VAE; DT with gradient checkpointing too. On a GPU: 1024 px, and
        (--memory) each default as `memory: auto` fits it to a 24 GB card, run.
The plain loop is the one in diffusers' examples/text_to_image/train_text_to_image.py
(add_noise, unet(...).sample, F.mse_loss, AdamW with default settings, backward, clip, step,
zero_grad) on the same model, batch, precision and trainable weights.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import nullcontext
from pathlib import Path

from types import SimpleNamespace

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from erasure_core.backends.webui import SDXL_DIFFUSERS_CONFIG  # noqa: E402

# What one step of each loop does: (UNet rows trained, forward+backward, per batch element; in words).
STEP_WORK = {
    "plain": (1, "1 row forward+backward"),
    "esd": (1, "1 row forward+backward (targets cached before training)"),
    "cg": (3, "3 rows forward+backward in one call: concept, unconditional, preserve (targets cached)"),
    "dt": (2, "2 rows forward+backward in one call: scrambled concept, preserve (scrambles encoded and "
              "preserve targets cached before training)"),
}
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, in_channels=4, out_channels=4,
                 layers_per_block=2, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = {k: v for k, v in SDXL_DIFFUSERS_CONFIG.items() if k != "sample_size"}  # SDXL base
SDXL_LORA_RANK = 4
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                scaling_factor=0.18215)


# -- models -------------------------------------------------------------------------------------

def random_sd15_modules(pixels: int, weights: Path | None = None):
    """SD1.5-shaped UNet and VAE: random (seed 0), or the random weights saved in `weights` by an earlier row."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    if weights is None:
        torch.manual_seed(0)
        return UNet2DConditionModel(sample_size=pixels // 8, **SD15_UNET), AutoencoderKL(sample_size=pixels, **SD15_VAE)
    with torch.device("meta"):  # no initialisation: every weight comes from the file
        unet = UNet2DConditionModel(sample_size=pixels // 8, **SD15_UNET)
        vae = AutoencoderKL(sample_size=pixels, **SD15_VAE)
    unet.load_state_dict(load_file(weights / "unet.safetensors"), assign=True)
    vae.load_state_dict(load_file(weights / "vae.safetensors"), assign=True)
    return unet, vae


def save_random_sd15(folder: Path) -> Path:
    """Random SD1.5 weights, made once per run so that every row trains the very same model."""
    from safetensors.torch import save_file

    unet, vae = random_sd15_modules(256)
    save_file(unet.state_dict(), str(folder / "unet.safetensors"))
    save_file(vae.state_dict(), str(folder / "vae.safetensors"))
    return folder


def sd15_model(device: str, pixels: int, weights: Path | None = None):
    """An SD1.5-shaped DiffusersModel with random weights; its text encoder is a stub (speed only)."""
    from erasure_core.model import DiffusersModel
    from erasure_core.toyworld import MODEL_DIR

    class RandomTextModel(DiffusersModel):
        def encode_text(self, prompts):  # a fixed random (77, 768) context per prompt: CLIP's output shape
            rows = [torch.randn(77, 768, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                    for p in prompts]
            return torch.stack(rows).to(self.device)

    unet, vae = random_sd15_modules(pixels, weights)
    scheduler = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())  # SD1.5's DDIM schedule
    return RandomTextModel(unet=unet.to(device), vae=vae.to(device), text_encoder=torch.nn.Identity(), tokenizer=None,
                           scheduler_config=scheduler, device=torch.device(device), source="random SD1.5-shaped")


def random_sdxl_unet(pixels: int, dtype=torch.bfloat16, device: str = "cpu"):
    """SDXL base's UNet with random weights made directly in `dtype` on `device` (no fp32 copy ever exists): each
    tensor from its own seeded generator, so every row on one device trains the very same model. Norm scales 1,
    biases 0, matrices N(0, 1/fan_in)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=pixels // 8, **SDXL_UNET).to(dtype)
    unet = unet.to_empty(device=device)  # allocated in `dtype`: no fp32 copy
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim <= 1:
                p.fill_(1.0 if name.endswith("weight") and "norm" in name else 0.0)
            else:
                gen = torch.Generator(device).manual_seed(zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=gen, device=device) / p[0].numel() ** 0.5)
    return unet


def sdxl_model(device: str, pixels: int):
    """An SDXL-shaped DiffusersXLModel: random bf16 UNet, stub text encoders and VAE (speed and memory only)."""
    from erasure_core.conditioning import Conditioning, zero_empty_prompts
    from erasure_core.model import DiffusersXLModel
    from erasure_core.toyworld import MODEL_DIR

    class RandomXLModel(DiffusersXLModel):
        def encode_text(self, prompts):  # SDXL's shapes: (77, 2048) context, 1280 pooled, 6 size numbers
            gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
            cond = Conditioning(context=torch.stack([torch.randn(77, 2048, generator=g) for g in gens]),
                                pooled=torch.stack([torch.randn(1280, generator=g) for g in gens]),
                                time_ids=torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]] * len(prompts),
                                                      dtype=torch.float32))
            return zero_empty_prompts(cond, prompts, keep=("time_ids",)).to(self.device)

        def encode_images(self, images):  # a stub VAE: 8x down-scaling to 4 channels
            return torch.nn.functional.avg_pool2d(images.to(self.device) * 2 - 1, 8).repeat(1, 2, 1, 1)[:, :4]

        def decode_latents(self, latents):
            return torch.nn.functional.interpolate(latents[:, :3], scale_factor=8).clamp(0, 1)

        @property
        def image_size(self):
            return pixels

    scheduler = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())  # SDXL's schedule too
    vae = torch.nn.Module()  # stands in for the VAE: the stub encodes and decodes
    vae.config = SimpleNamespace(scaling_factor=0.13025, block_out_channels=(128, 256, 512, 512))
    return RandomXLModel(unet=random_sdxl_unet(pixels, device=device), vae=vae, text_encoder=torch.nn.Identity(),
                         tokenizer=None, text_encoder_2=torch.nn.Identity(), scheduler_config=scheduler,
                         device=torch.device(device), source="random SDXL-shaped")


def build_model(world: str, device: str, pixels: int, weights: str | None = None):
    if world == "sdxl":
        return sdxl_model(device, pixels)
    if world == "toy":
        from erasure_core.model import load_diffusers_model
        from erasure_core.toyworld import MODEL_DIR

        return load_diffusers_model(MODEL_DIR, device=device)
    return sd15_model(device, pixels, Path(weights) if weights else None)


# -- the two loops ------------------------------------------------------------------------------

class PlainDiffusersLoop:
    """diffusers' train_text_to_image.py loop, on precomputed latents and text embeddings, a step at a time.

    Only `group`'s weights of `unet` train (requires_grad), so it does the same backward work as a
    method on that group; everything else is the example's code with its default settings.
    """

    def __init__(self, model, unet, group: str, batch: int, precision: str, rank: int | None = None):
        from diffusers import DDPMScheduler

        from erasure_core.trainable import select_modules

        self.model, self.unet, self.batch, self.precision = model, unet, batch, precision
        unet.requires_grad_(False)
        if rank:  # diffusers' LoRA examples: peft adapters (here on the same modules as the method's)
            from peft import LoraConfig, inject_adapter_in_model

            names = [n for n, _ in select_modules(unet, group)]
            self.unet = unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names,
                                                                  init_lora_weights="gaussian"), unet)
            self.params = [p for n, p in unet.named_parameters() if "lora_" in n]
            for p in self.params:
                p.data = p.data.float()
        else:
            self.params = [p for _, m in select_modules(unet, group) for p in m.parameters(recurse=False)]
        for p in self.params:
            p.requires_grad_(True)
        unet.train()
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.gen = torch.Generator().manual_seed(0)
        self.latents_pool = torch.randn(4 * batch, *model.latent_shape, generator=self.gen).to(model.device)
        self.context_pool = model.encode_text([f"prompt {i}" for i in range(4 * batch)])
        self.train_loss = 0.0

    def step(self) -> None:
        import torch.nn.functional as F

        from erasure_core.training import autocast_for

        device = self.model.device
        pick = torch.randint(len(self.latents_pool), (self.batch,), generator=self.gen).to(device)
        latents, conditioning = self.latents_pool[pick], self.context_pool[pick]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (self.batch,),
                                  device=device).long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with autocast_for(device, self.precision):
            model_pred = self.unet(noisy_latents, timesteps, **self.model.unet_inputs(conditioning), return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        self.train_loss += loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()


def method_options(world: str, method: str, latent_side: int, batch: int, steps: int, short_setup: bool) -> dict:
    """The method's options: bench/quality.py's on the toy world; a minimal setup on the full-size model."""
    if world == "toy":
        from quality import ROWS, row_options

        row = next(r for r in ROWS if r.name == method)  # the defaults for an object, on "circle"
        options = dict(row_options(row, "circle"), steps=steps, batch_size=batch)
        if short_setup:  # option rows time the step only: sample less before training
            options.update(templates={"circle": options["templates"]["circle"][:3]}, sample_steps=5)
        return options
    # Full size (SD1.5, SDXL): one prompt and one DDIM step of sampling before training (the step is what is timed).
    options = dict(concepts=["a cat"], templates=["{}"], preserve_prompts=["a dog"], sample_steps=1, steps=steps,
                   batch_size=batch)
    if method in ("cg", "esd"):
        options["trajectories_per_prompt"] = 1
    if method == "dt":  # one given concept image (not sampled), 2 scrambles; one preserve trajectory, of "" (always there)
        options.update(concept_images=torch.rand(1, 3, 8 * latent_side, 8 * latent_side), scrambles_per_image=2,
                       preserve_prompts=[], preserve_images_per_prompt=1)
    return options


def patch_trainable(variant: str) -> None:
    """Bench-only variants that are not library options (measured, then left out): wrap make_trainable."""
    from erasure_core.methods import cg, dt, esd

    make = dt.make_trainable

    def wrapped(unet, group, rank=None, checkpointing=False):
        tuned, params = make(unet, group, rank, checkpointing)
        if variant == "channels_last":
            tuned = tuned.to(memory_format=torch.channels_last)
        if variant == "compile":
            tuned = torch.compile(tuned)
        return tuned, params

    for module in (cg, dt, esd):
        module.make_trainable = wrapped


def process_memory(field: str) -> int:
    """VmHWM (peak RSS) or VmRSS of this process, in bytes. Not ru_maxrss: Linux carries that high-water mark
    over from the parent across fork and exec, so a row would inherit the bench's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else process_memory("VmHWM")


def run_method(model, spec: dict, on_step) -> dict:
    """The library's own erase_* call for spec's method, with `on_step` as its progress callback; returns the
    memory plan of the run and the peak memory of its training phase (CPU: resident memory, the high-water mark
    reset just before training; CUDA: peak allocated from there)."""
    import importlib

    from erasure_core.heap import return_free_heap
    from erasure_core.memory import plan_memory
    from erasure_core.methods import METHODS

    if spec.get("variant"):
        patch_trainable(spec["variant"])
    config_cls, erase = METHODS[spec["loop"]]
    opts = method_options(spec["world"], spec["loop"], model.latent_shape[1], spec["batch"], spec["steps"],
                          spec["short_setup"])
    opts.update({"group": spec["group"], **spec.get("options", {})})  # a row's own group wins
    config = config_cls(**opts)
    config.validate()
    plan = plan_memory(model, spec["loop"], config, available=None)
    module = importlib.import_module(f"erasure_core.methods.{spec['loop']}")
    optimise, training = module.optimise, {}

    def measured(*args, **kwargs):
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            return_free_heap()
            before = process_memory("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
        losses = optimise(*args, **kwargs)
        training["training_peak_bytes"] = peak_memory(spec["device"]) - before
        return losses

    module.optimise = measured
    erase(model, config, progress=on_step)
    return {**plan_fields(plan), **training}


def measure(spec: dict) -> dict:
    """One row, in this process: step times, setup and total seconds, peak memory."""
    device = spec["device"]
    rss_before = process_memory("VmRSS")
    model = build_model(spec["world"], device, spec["pixels"], spec.get("weights"))
    if spec.get("paired"):
        return measure_paired(model, spec)
    stamps = []

    def on_step(*_):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    memory = {}
    if spec["loop"] == "plain":
        options = spec.get("options", {})
        loop = PlainDiffusersLoop(model, model.unet, spec["group"], spec["batch"], options.get("precision", "auto"),
                                  options.get("rank"))
        for _ in range(spec["steps"]):
            loop.step()
            on_step()
    else:
        memory = run_method(model, spec, on_step)
    total = time.perf_counter() - started
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (warm-up) is left out
    return {"step_s": statistics.median(step_times), "steps_timed": len(step_times),
            "unet_weight_bytes": sum(p.numel() * p.element_size() for p in model.unet.parameters()),
            "step_s_min_max": [min(step_times), max(step_times)], "total_s": total,
            "first_step_at_s": stamps[0] - started, "peak_bytes": peak_memory(device),
            "attention": sorted({type(p).__name__ for p in model.unet.attn_processors.values()}),
            "process_bytes_before_model": rss_before if device == "cpu" else 0, **memory}


def measure_paired(model, spec: dict) -> dict:
    """The method and the plain loop in one process, alternating step by step.

    After each of the method's steps, its progress callback runs one plain-loop step on a copy of
    the same UNet (its own trained weights, everything else shared): both loops see the same
    machine state, so a slow moment of a shared CPU hits both and cancels in each pair's ratio.
    """
    from erasure_core.trainable import select_modules, shared_copy

    device = spec["device"]
    precision = spec.get("options", {}).get("precision", "auto")
    rank = spec.get("options", {}).get("rank")
    names = [] if rank else [n for n, _ in select_modules(model.unet, spec["group"])]  # LoRA: everything shared
    plain = PlainDiffusersLoop(model, shared_copy(model.unet, names), spec["group"], spec["batch"], precision, rank)
    marks = []  # (method step ended, plain step ended)

    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step(*_):
        method_done = now()
        plain.step()
        marks.append((method_done, now()))

    run_method(model, spec, on_step)
    # Step k of the method runs from the end of plain step k-1 to its own end; the first pair is warm-up.
    method_s = [m - p_prev for (_, p_prev), (m, _) in zip(marks, marks[1:])]
    plain_s = [p - m for m, p in marks[1:]]
    speedups = [p / m for m, p in zip(method_s, plain_s)]
    return {"method_step_s": statistics.median(method_s), "plain_step_s": statistics.median(plain_s),
            "pairs_timed": len(speedups), "speedup_steps": statistics.median(speedups),
            "speedup_min_max": [min(speedups), max(speedups)]}


def run_row(spec: dict, log) -> dict:
    """`measure(spec)` in a fresh subprocess (its own memory peak); the spec plus what it measured."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")]
    if done.returncode != 0 or not lines:
        row = {**spec, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    else:
        row = {**spec, **json.loads(lines[-1][4:])}
    row.pop("weights", None)
    log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return row


# -- what is run ----------------------------------------------------------------------------------

TOY_GROUPS = {"esd": "no_cross_attn", "cg": "cross_attn", "dt": "all"}  # bench/quality.py's object task


def sdxl_specs(device: str, quick: bool) -> list[dict]:
    """SDXL-shaped rows: LoRA rank 4 on cross_attn in bf16 (what fits in a 6 GB CPU process). Each loop in its own
    process (DT also with gradient checkpointing: the plan against the measured peak both ways), then each method
    paired with the plain loop."""
    options = {"rank": SDXL_LORA_RANK, "precision": "bf16", "checkpointing": False}
    common = dict(world="sdxl", device=device, pixels=128 if device == "cpu" else 1024, group="cross_attn", batch=1,
                  short_setup=True, options=options)
    steps = 3 if quick else 5
    specs = [dict(common, loop=loop, steps=steps) for loop in ("plain", "esd", "cg", "dt")]
    specs.append(dict(common, loop="dt", steps=steps, option="checkpointing", options=dict(options, checkpointing=True)))
    specs += [dict(common, loop=loop, steps=steps + 1, paired=True) for loop in ("esd", "cg", "dt")]
    return specs


def main_specs(device: str, quick: bool) -> list[dict]:
    """Each method and the plain loop on the same group, batch and precision: each loop in its own process
    (memory, time to a finished erasure), then each method paired with the plain loop (the ratio)."""
    specs = []
    if device == "cpu":
        toy_steps = 20 if quick else 300
        for method, group in TOY_GROUPS.items():
            common = dict(world="toy", device="cpu", pixels=32, group=group, batch=16, short_setup=quick)
            specs.append(dict(common, loop=method, steps=toy_steps))
            specs.append(dict(common, loop="plain", steps=min(toy_steps, 40)))
            specs.append(dict(common, loop=method, steps=8 if quick else 40, short_setup=True, paired=True))
        # Full size on CPU: every row trains the cross_attn group (DT's default "all" at full weights needs
        # two UNet copies + grads + two AdamW moments, ~21 GB): same trainable weights as the plain row.
        common = dict(world="sd15", device="cpu", pixels=256, group="cross_attn", batch=1, short_setup=True)
        for loop in ("plain", "esd", "cg", "dt"):
            specs.append(dict(common, loop=loop, steps=3 if quick else 5))
        for loop in ("esd", "cg", "dt"):  # 10 pairs: with 3 timed steps, one slow step moved a median by 20%
            specs.append(dict(common, loop=loop, steps=3 if quick else 10, paired=True))
    else:
        # Each method's own default group; one plain row per group. No gradient checkpointing (the CUDA default
        # turns it on): the plain loop has none, and its recomputed forward passes would be what the ratio measured.
        common = dict(world="sd15", device="cuda", pixels=512, batch=4, short_setup=True, steps=12,
                      options={"checkpointing": False})
        for loop, group in (("plain", "cross_attn"), ("esd", "cross_attn"), ("cg", "cross_attn"), ("plain", "all"),
                            ("dt", "all")):
            specs.append(dict(common, loop=loop, group=group))
            if loop != "plain":
                specs.append(dict(common, loop=loop, group=group, paired=True))
    return specs


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def option_specs(device: str, quick: bool, with_compile: bool) -> list[dict]:
    """The speed/memory options; each is compared with the main row of the same world, loop and group."""
    if device != "cpu":
        return []
    specs = []
    # "shipped" rows are controls run next to the options: rows minutes apart differ by noise on a shared CPU.
    shipped, lora = ("shipped", {}, ""), ("LoRA rank 4", {"rank": 4}, "")
    variants = {"cg": [shipped, lora],
                "dt": [shipped, lora, ("checkpointing", {"checkpointing": True}, ""),
                       *([("bf16 autocast", {"precision": "bf16"}, "")] if native_bf16() else []),
                       ("channels_last (bench only)", {}, "channels_last")]}
    for method, group in TOY_GROUPS.items():
        common = dict(world="toy", device="cpu", pixels=32, loop=method, group=group, batch=16,
                      steps=8 if quick else 15, short_setup=True)
        extra = [("torch.compile (bench only)", {}, "compile")] if with_compile else []
        for name, options, variant in variants.get(method, []) + extra:
            specs.append(dict(common, option=name, options=options, variant=variant))
    common = dict(world="sd15", device="cpu", pixels=256, group="cross_attn", batch=1, steps=3 if quick else 4,
                  short_setup=True)
    if native_bf16():
        specs += [dict(common, loop="esd", option="bf16 autocast", options={"precision": "bf16"}),
                  dict(common, loop="plain", option="bf16 autocast", options={"precision": "bf16"})]
    return specs


def memory_specs(device: str) -> list[dict]:
    """The memory options on the full-size SD1.5-shaped UNet: each run to a few training steps, its training
    phase's peak measured beside the memory plan (`--memory`)."""
    common = dict(world="sd15", device=device, pixels=256 if device == "cpu" else 512, batch=2, steps=3,
                  short_setup=True, group="cross_attn")
    rows = [("shipped (full weights)", "cg", {}), ("gradient checkpointing", "cg", {"checkpointing": True}),
            ("micro-batches of 1", "cg", {"micro_batch": 1}),
            ("micro-batches of 1, rows one group at a time", "cg", {"micro_batch": 1, "split_rows": True}),
            ("LoRA rank 8", "cg", {"rank": 8}),
            ("all layers, LoRA rank 8", "dt", {"group": "all", "rank": 8}),
            ("all layers, LoRA rank 8, checkpointing", "dt", {"group": "all", "rank": 8, "checkpointing": True})]
    if device == "cuda" or native_bf16():
        rows.append(("bf16 autocast", "cg", {"precision": "bf16"}))
    return [dict(common, loop=loop, option=name, options={"checkpointing": False, **options})
            for name, loop, options in rows]


def fitted_defaults(model, card_gib: float, methods=None):
    """Each method's default on `model` (a ShapeOnlyModel) with a concept and four preserve prompts: its plan as it
    is, and the config and plan `memory: auto` fits it to on a card of `card_gib` (0.5 GiB kept for the CUDA context
    and the host's buffers). Yields (method, plan, fitted config, fitted plan). Shapes only: nothing is run."""
    from erasure_core.memory import GiB, fit, module_bytes, plan_memory
    from erasure_core.methods import METHODS

    loaded = sum(module_bytes(m) for m in (model.unet, model.text_encoder, model.text_encoder_2, model.vae))
    free = int(card_gib * GiB) - GiB // 2 - loaded
    for name in methods or METHODS:
        config = METHODS[name][0](concepts=["a dog"], preserve_prompts=["a cat", "a horse", "a car", "a tree"])
        config.validate()
        plan = plan_memory(model, name, config, available=free)
        fitted, fitted_plan = (config, plan) if plan.fits else fit(model, name, config, plan)
        yield name, plan, fitted, fitted_plan


def sdxl_memory_specs(device: str, card_gib: float = 24.0) -> list[dict]:
    """SDXL at 1024 px, each training method's default as `memory: auto` fits it to a `card_gib` card (the plan's
    table), run for 2 steps at a batch of two micro-batches: the peak of one micro-batch is the peak of any batch.
    GPU only: on the CPU a 1024 px SDXL step with full-weight groups would not fit this machine."""
    if device != "cuda":
        return []
    from erasure_core.memory import ShapeOnlyModel

    specs = []
    for name, _, fitted, fitted_plan in fitted_defaults(ShapeOnlyModel.sdxl(), card_gib, ("cg", "dt", "esd")):
        micro = fitted.micro_batch or fitted.batch_size
        specs.append(dict(world="sdxl", device=device, pixels=1024, batch=2 * micro, steps=2, short_setup=True,
                          loop=name, group=fitted.group,
                          option=f"default fitted to {card_gib:g} GB: {', '.join(fitted_plan.changes) or 'as is'}",
                          options={"rank": fitted.rank, "micro_batch": micro, "checkpointing": fitted.checkpointing,
                                   "precision": fitted.precision}))
    return specs


def gpu_plans(card_gib: float = 8.0, model=None) -> list[dict]:
    """Each method's default on Stable Diffusion 1.5 at 512 px (or `model`, a ShapeOnlyModel; fp16 weights, as
    hosts keep them on a GPU): its plan as it is, and as fitted ("memory: auto") to a card of `card_gib`."""
    from erasure_core.memory import ShapeOnlyModel

    return [{"method": name, "settings": plan.settings, "plan_bytes": plan.total, "fitted_bytes": fitted_plan.total,
             "changes": fitted_plan.changes, "fits": plan.fits}
            for name, plan, _, fitted_plan in fitted_defaults(model or ShapeOnlyModel.sd15(), card_gib)]


@functools.lru_cache(maxsize=None)
def bench_shapes(world: str, pixels: int, device: str):
    """The bench's model of `world` as shapes only, with a dict for the memory plan's probes (shared by every row of
    that model): SD1.5 with fp32 weights, SDXL with bf16 ones (random_sd15_modules, random_sdxl_unet). Made once:
    SDXL's takes seconds."""
    from erasure_core.memory import ShapeOnlyModel

    make = ShapeOnlyModel.sd15 if world == "sd15" else ShapeOnlyModel.sdxl
    model = make(image_size=pixels, device=device, dtype=torch.float32 if world == "sd15" else torch.bfloat16)
    model.text_encoder = model.text_encoder_2 = None  # the bench's text encoders are stubs: nothing to hold
    return model, {}


def replan(row: dict) -> dict:
    """The memory plan of a measured row as the current code makes it (shapes only, on `meta`): the plan columns of
    a row measured before the plan changed, or on a machine that is gone (a lent GPU)."""
    from erasure_core.memory import plan_memory
    from erasure_core.methods import METHODS

    model, probes = bench_shapes(row["world"], row["pixels"], row["device"])
    options = method_options(row["world"], row["loop"], model.latent_shape[1], row["batch"], row["steps"],
                             row["short_setup"])
    config = METHODS[row["loop"]][0](**{**options, "group": row["group"], **row.get("options", {})})
    config.validate()
    return plan_fields(plan_memory(model, row["loop"], config, available=None, probes=probes))


def plan_fields(plan) -> dict:
    return {"plan_bytes": plan.total, "plan_parts_bytes": plan.parts, "plan_settings": plan.settings,
            "plan_training_bytes": sum(v for k, v in plan.parts.items() if not k.startswith(("frozen", "cached")))}


# -- report -------------------------------------------------------------------------------------

def device_info(device: str) -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or platform.machine())
    info = {"cpu": cpu, "cpu_threads": torch.get_num_threads(), "cpu_native_bf16": native_bf16(),
            "torch": torch.__version__, "platform": platform.platform()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    import diffusers

    info["diffusers"] = diffusers.__version__
    return info


def add_rates(rows: list[dict]) -> None:
    """steps/s, trained rows/s, and the ratio to the plain loop: from the method's paired row where there is
    one (same process, alternating steps), else from the plain row of the same world, group and precision."""
    own = [r for r in rows if "error" not in r and not r.get("paired")]
    for r in own:
        trained = STEP_WORK[r["loop"]][0] * r["batch"]
        r["steps_per_s"] = 1 / r["step_s"]
        r["trained_rows_per_s"] = trained / r["step_s"]
    for r in own:
        if r["loop"] == "plain":
            continue
        paired = next((p for p in rows if p.get("paired") and same_setting(p, r) and p["device"] == r["device"]
                       and precision(p) == precision(r)), None)
        plain = next((p for p in own if p["loop"] == "plain" and precision(p) == precision(r)
                      and all(p[k] == r[k] for k in ("world", "group", "batch", "device"))), None)
        if paired is not None:
            r["pair"] = {k: paired[k] for k in ("method_step_s", "plain_step_s", "pairs_timed", "speedup_steps",
                                                  "speedup_min_max")}
            r["ratio_steps"] = paired["speedup_steps"]
        elif plain is not None:
            r["ratio_steps"] = r["steps_per_s"] / plain["steps_per_s"]
        if "ratio_steps" in r:
            r["ratio_rows"] = r["ratio_steps"] * STEP_WORK[r["loop"]][0] / STEP_WORK["plain"][0]


def precision(row: dict) -> str | None:
    return row.get("options", {}).get("precision")


def same_setting(row: dict, other: dict) -> bool:
    return "error" not in row and all(row[k] == other[k] for k in ("world", "loop", "group", "batch"))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main_table(rows: list[dict], world: str, device: str = "cpu") -> list[str]:
    lines = ["| loop | group | batch | step (ms) | steps/s | trained rows/s | paired step (ms): method / plain "
             "| ÷ plain (steps/s) | ÷ plain (rows/s) | peak mem (GiB) | finished erasure (s) |", "|" + "---|" * 11]
    shown = [r for r in rows if r["world"] == world and r["device"] == device and not r.get("paired")
             and not r.get("option")]
    for r in shown:
        if "error" in r:
            lines.append(f"| {r['loop']} | {r['group']} | {r['batch']} | error: {r['error']} |" + " |" * 7)
            continue
        finished = f"{r['total_s']:.1f} ({r['steps']} steps)" if world == "toy" and r["loop"] != "plain" else "—"
        if world == "sd15" and r["loop"] != "plain":  # the setup was cut short; project the shipped 200 steps
            finished = f"~{200 * r['step_s']:.0f} (training only, 200 steps projected)"
        pair = r.get("pair")
        paired = (f"{1000 * pair['method_step_s']:.0f} / {1000 * pair['plain_step_s']:.0f} "
                  f"({pair['pairs_timed']} pairs)") if pair else "—"
        ratio = lambda key: f"{r[key]:.2f}" if key in r else ("1.00" if r["loop"] == "plain" else "—")  # noqa: E731
        lines.append(f"| {r['loop']} | {r['group']} | {r['batch']} | {1000 * r['step_s']:.0f} | {r['steps_per_s']:.2f} "
                     f"| {r['trained_rows_per_s']:.3g} | {paired} | {ratio('ratio_steps')} | {ratio('ratio_rows')} "
                     f"| {gib(r['peak_bytes'])} | {finished} |")
    errors = [r for r in rows if r["world"] == world and r["device"] == device and r.get("paired") and "error" in r]
    return lines + [f"\nPaired run of {r['loop']} failed: {r['error']}" for r in errors]


def option_table(rows: list[dict]) -> list[str]:
    lines = ["| world | loop | group | option | step (ms) | vs shipped | ÷ plain (rows/s) | peak mem (GiB) |",
             "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['world']} | {r['loop']} | {r['group']} | {r['option']} | error: {r['error']} | | | |")
            continue
        base = r.get("baseline")
        versus = f"{base['step_s'] / r['step_s']:.2f}x" if base and r["loop"] != "plain" else "—"
        plain = f"{r['ratio_rows']:.2f}" if "ratio_rows" in r else "—"
        lines.append(f"| {r['world']} | {r['loop']} | {r['group']} | {r['option']} | {1000 * r['step_s']:.0f} "
                     f"| {versus} | {plain} | {gib(r['peak_bytes'])} |")
    return lines


def memory_table(rows: list[dict]) -> list[str]:
    lines = ["| loop | option | plan: whole run (GiB) | plan: training (GiB) | measured: training peak (GiB) "
             "| plan ÷ measured | process peak (GiB) |", "|" + "---|" * 7]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loop']} | {r['option']} | error: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['loop']} | {r['option']} | {gib(r['plan_bytes'])} | {gib(r['plan_training_bytes'])} "
                     f"| {gib(r['training_peak_bytes'])} | {r['plan_training_bytes'] / r['training_peak_bytes']:.2f} "
                     f"| {gib(r['peak_bytes'])} |")
    return lines


def gpu_plan_table(rows: list[dict], card_gib: float = 8.0) -> list[str]:
    lines = [f"| method | default settings | plan as is (GiB) | fitted to a {card_gib:g} GB card (GiB) | changed to fit |",
             "|" + "---|" * 5]
    for r in rows:
        lines.append(f"| {r['method']} | {r['settings']} | {gib(r['plan_bytes'])} | {gib(r['fitted_bytes'])} "
                     f"| {', '.join(r['changes']) or 'nothing'} |")
    return lines


def sdxl_section(rows: list[dict], plans: list[dict], device: str, info: dict) -> list[str]:
    sdxl = [r for r in rows if r["world"] == "sdxl" and r["device"] == device]
    pixels = sdxl[0]["pixels"]
    where = info.get("gpu", "GPU") if device == "cuda" else "CPU"
    lines = [f"### Full-size SDXL-shaped UNet on {where} (bf16 weights, LoRA rank {SDXL_LORA_RANK} on cross_attn, "
             f"{pixels} px = {pixels // 8}x{pixels // 8} latents, random weights)", "",
             "UNet2DConditionModel with SDXL base's config (320/640/1280, transformer depth 1/2/10, cross-attention "
             "2048, text_time embedding; 2.6B parameters), random weights stored in **bf16** (in fp32 it alone would "
             "take 10 GB). Text encoders and VAE are **stubs** (random SDXL-shaped context, pooled embedding and "
             "size ids; an 8x average-pool VAE): fine for timing and memory, meaningless for erasing. Every loop "
             f"trains the same LoRA rank {SDXL_LORA_RANK} on the cross_attn group in bf16 autocast; the plain loop "
             "is diffusers' LoRA example loop (peft adapters) on the same modules."
             + (" This CPU has no native bf16, so the step times are slow in absolute terms; the ratios are what "
                "carry over." if device == "cpu" and not info.get("cpu_native_bf16") else ""), ""]
    lines += main_table(rows, "sdxl", device) + [""]
    measured = [dict(r, option="checkpointing" if r.get("options", {}).get("checkpointing") else "shipped")
                for r in sdxl if "training_peak_bytes" in r and not r.get("paired")]
    if measured:
        lines += ["The memory plan (erasure_core/memory.py) of these SDXL rows against their measured training peak "
                  f"({'the rise of resident memory' if device == 'cpu' else 'the peak allocated'} over the training "
                  "phase):", ""]
        lines += memory_table(measured) + [""]
    if plans and device == "cpu":
        lines += ["#### What an SDXL erasure needs on a 24 GB GPU (plan, 1024 px)", "",
                  "The memory plan of each method on SDXL base at 1024 px (128x128 latents) with its weights in fp16 "
                  "(the CUDA default), as it is and as `memory: auto` fits it to a 24 GB card (0.5 GiB for CUDA's "
                  "context taken off): computed from shapes, not run. The same defaults as fitted were run on a "
                  "GPU once (bench/results/gpu_h200/speed.md, 'SDXL at 1024 px').", ""]
        lines += gpu_plan_table(plans, 24.0) + [""]
    return lines


def fitted_table(rows: list[dict]) -> list[str]:
    """Each default as `memory: auto` fitted it, run: the plan's whole run and training phase against the measured."""
    lines = ["| method | settings (as fitted) | plan: whole run (GiB) | measured: whole run peak (GiB) "
             "| plan: training (GiB) | measured: training peak (GiB) | step (s) at batch |", "|" + "---|" * 7]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loop']} | {r['option']} | error: {r['error']} |" + " |" * 4)
            continue
        lines.append(f"| {r['loop']} | {r['plan_settings']}; {r['option']} | {gib(r['plan_bytes'])} "
                     f"| {gib(r['peak_bytes'])} | {gib(r['plan_training_bytes'])} | {gib(r['training_peak_bytes'])} "
                     f"| {r['step_s']:.2f} at {r['batch']} |")
    return lines


def markdown(report: dict) -> str:
    d, rows = report["device"], report["rows"]
    before = [r["process_bytes_before_model"] for r in rows if r["device"] == "cpu" and "process_bytes_before_model" in r]
    took = f" in {report['seconds']:.0f} s" if report.get("seconds") else ""
    if report.get("complete") is False:
        took += " (cut short: only the rows below finished)"
    replanned = (f" The plan columns were recomputed after the run by `{report['replanned']}` (the current memory "
                 "plan, shapes only); the measured columns are the run's." if report.get("replanned") else "")
    lines = [f"Measured by `{report['command']}`{took} on {d['cpu']} ({d['cpu_threads']} torch "
             f"threads{', ' + d['gpu'] if 'gpu' in d else ''}), torch {d['torch']}, diffusers {d['diffusers']}.{replanned} "
             "Each row is a fresh subprocess; step time is the median over the steps after the first. Rows run "
             "one after another on a shared CPU, so differences of ~10% between two rows can be noise: the "
             "ratio to the plain loop therefore comes from a **paired** run, in which the method's own erase_* "
             "call runs one plain-loop step (on a copy of the same UNet) after each of its steps, so the two "
             "alternate in one process; the ratio is the median over pairs of plain step ÷ method step.", "",
             "A **step** is one optimiser update at the given batch. Rows per batch element in one step:", ""]
    lines += [f"- `{k}`: {v[1]}" for k, v in STEP_WORK.items()]
    lines += ["", "**trained rows/s** = UNet rows that get a forward+backward per second (batch × rows per element "
              "÷ step time): the fair unit when a method's step does more UNet work than the plain loop's. "
              "**÷ plain** compares with the plain diffusers loop on the same world, trainable group, batch and "
              "precision (the loop of diffusers' examples/text_to_image/train_text_to_image.py on precomputed "
              "latents and text embeddings; AdamW with default settings; clip_grad_norm 1.0). "
              + ("Peak memory: peak RSS of the row's process on CPU (includes "
                 f"~{gib(statistics.median(before))} GiB of Python + torch + diffusers before any model), CUDA peak "
                 "allocated on GPU." if before else "Peak memory: CUDA peak allocated."), ""]
    if any(r["world"] == "toy" for r in rows):
        lines += ["### Toy world on CPU (fp32)", "",
                  "bench/quality.py's object-task settings (erase 'circle', batch 16); 'finished erasure' is the wall "
                  "time of the whole erase_* call: sampling the frozen model's images/trajectories, training, "
                  "packaging the result.", ""]
        lines += main_table(rows, "toy") + [""]
    if any(r["world"] == "sd15" and r["device"] == "cpu" for r in rows):
        lines += ["### Full-size SD1.5-shaped UNet on CPU (fp32, 256 px = 32x32 latents, random weights)", "",
                  "UNet2DConditionModel with SD1.5's config (320/640/1280/1280, cross-attention 768, 860M parameters) "
                  "and SD1.5's VAE config, random weights. The text encoder is a **stub** returning random "
                  "(N, 77, 768) contexts: fine for timing, meaningless for erasing. Every row trains the cross_attn "
                  "group (full weights; DT's default 'all' would need ~21 GB here). Setup is cut to one prompt, "
                  "one DDIM step and (DT) one given concept image, so only the step times mean anything; the "
                  "finished-erasure column projects the default 200 steps from the step time.", ""]
        lines += main_table(rows, "sd15") + [""]
    for device in ("cpu", "cuda"):
        if any(r["world"] == "sdxl" and r["device"] == device for r in rows):
            lines += sdxl_section(rows, report.get("sdxl_gpu_plans", []), device, d)
    gpu_rows = any(r["world"] == "sd15" and r["device"] == "cuda" for r in rows)
    if gpu_rows or "gpu" not in d:
        lines += ["### Full-size SD1.5-shaped UNet on GPU (512 px, bf16 autocast, fp32 masters)", "",
                  f"Run on {d['gpu']}: random weights and stub text encoder as on CPU, batch 4, each method on its "
                  "own default group." if gpu_rows else "Not run here: no GPU on this machine (torch.cuda.is_available() "
                  "is False); on a GPU the same command times each method and the plain loop at 512 px in bf16 "
                  "autocast." + "".join(f" GPU runs: `{f.relative_to(BENCH.parent)}`." for f in
                                        sorted((BENCH / "results").glob("gpu_*/speed.md"))), ""]
    if gpu_rows:
        lines += main_table(rows, "sd15", "cuda") + [""]
    if report["option_rows"]:
        skipped = "" if report["device"].get("cpu_native_bf16", True) or report["device"].get("gpu") else (
            " The bf16 autocast rows were not run: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), "
            "where bf16 is emulated and slower than fp32.")
        lines += ["### Speed and memory options (CPU)", "",
                  "Each option against the 'shipped' control row run next to it (full-size: the main row above); "
                  "'vs shipped' > 1 = faster. Toy rows: "
                  f"{report['option_rows'][0]['steps']} steps with a short setup; full-size rows as above. "
                  "'bench only' options are not library options: they were measured and left out." + skipped, ""]
        lines += option_table(report["option_rows"]) + [""]
    memory = [r for r in report.get("memory_rows", []) if r["world"] == "sd15"]
    if memory:
        lines += [f"### Memory by option: the plan against the measured peak (SD1.5-shaped UNet, "
                  f"{'CPU' if memory[0]['device'] == 'cpu' else d.get('gpu', 'GPU')})", "",
                  f"Measured by `{report.get('memory_command', 'python bench/speed.py --memory')}`: cg (and dt for the "
                  f"all-layer rows) at batch {memory[0]['batch']}, {memory[0]['pixels']} px, {memory[0]['steps']} steps, "
                  "random SD1.5-shaped weights in fp32 and the stub text encoder, each row in its own process. "
                  "'training' is what the training loop adds: the trained copy, its gradients, AdamW's state and "
                  "the step's activations; on the CPU it is measured as the rise of resident memory over the "
                  "training phase (the high-water mark reset just before it), on a GPU as the peak allocated. "
                  "'whole run' adds the loaded model and the tensors cached before training. The trained copy is "
                  "made just before the training loop, so the measured training peak leaves it out where the plan's "
                  "training part counts it (it decides little but for full SDXL weights: 2.0 GiB).", ""]
        lines += memory_table(memory) + [""]
    fitted = [r for r in report.get("memory_rows", []) if r["world"] == "sdxl"]
    if fitted:
        lines += [f"### SDXL at 1024 px: each default as `memory: auto` fits it to a 24 GB card, run on "
                  f"{d.get('gpu', 'GPU')}", "",
                  "SDXL base's UNet with random bf16 weights and stub text encoders; each method's "
                  "default (a concept and four preserve prompts) fitted by the memory plan to 24 GB, then run for "
                  f"{fitted[0]['steps']} steps at a batch of two micro-batches (the peak of one micro-batch is the "
                  "peak of any batch). Whole run: CUDA's peak allocated over the process, the loaded model included; "
                  "training: the peak allocated over the training loop above what was held before it.", ""]
        lines += fitted_table(fitted) + [""]
    if report.get("gpu_plans"):
        lines += ["### Every default on an 8 GB GPU (plan, SD1.5 at 512 px)", "",
                  "The memory plan of each method's default settings on Stable Diffusion 1.5 at 512 px with its weights "
                  "in fp16 (as ComfyUI and the webui keep them on a GPU), bf16 activations and gradient checkpointing "
                  "(the CUDA defaults), a concept and four preserve prompts; 'fitted' is what `memory: auto` runs on "
                  "an 8 GB card (0.5 GiB kept for the CUDA context). Shapes only: computed, not run.", ""]
        lines += gpu_plan_table(report["gpu_plans"]) + [""]
    notes = BENCH / "speed_decisions.md"
    if notes.exists() and "gpu" not in d:  # the CPU report's
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def command_line(argv) -> str:
    return "python bench/speed.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--quick", action="store_true", help="few steps everywhere (for development)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/speed.md from OUT/speed.json")
    parser.add_argument("--memory", action="store_true", help="only the memory rows (plan against measured peak) "
                        "and the GPU plans, merged into OUT/speed.json")
    parser.add_argument("--worlds", default="toy,sd15,sdxl", help="which worlds to run (comma-separated)")
    parser.add_argument("--replan", action="store_true", help="with --render or --merge: the plan columns of "
                        "every measured row recomputed by the current memory plan (the measured columns stay)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only write OUT/speed.{json,md} from these "
                        "reports joined (the parts of a run split up, e.g. each under its own time limit)")
    args = parser.parse_args(argv)
    if args.row:
        print("ROW " + json.dumps(measure(json.loads(args.row))), flush=True)
        return 0
    if args.render or args.merge:
        rewrite_report(Path(args.out), args.merge, args.replan, command_line(argv))
        return 0
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log = lambda m: print(m, flush=True)  # noqa: E731
    command = command_line(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from erasure_core.jobs import write_json

    worlds = set(args.worlds.split(","))
    if args.memory:  # merged into OUT/speed.json: the memory rows of the other worlds stay
        report = json.loads((out / "speed.json").read_text()) if (out / "speed.json").exists() else {
            "command": command, "device": device_info(device), "seconds": 0, "rows": [], "option_rows": []}
        rows = report["memory_rows"] = [r for r in report.get("memory_rows", []) if r["world"] not in worlds]
        was_complete, report["complete"] = report.get("complete", True), False  # until every row has run
        specs = (memory_specs(device) if "sd15" in worlds else []) + (
            sdxl_memory_specs(device) if "sdxl" in worlds else [])
        with tempfile.TemporaryDirectory(prefix="speed_sd15_") if "sd15" in worlds else nullcontext() as weights:
            if weights:
                save_random_sd15(Path(weights))
            for spec in specs:
                rows.append(run_row(dict(spec, weights=weights), log))
                write_json(out / "speed.json", report)  # after each row: a run cut short keeps what it measured
        report.update(memory_command=f"{command} ({time.time() - started:.0f} s)", complete=was_complete)
        refresh_plan_tables(report)
        write_json(out / "speed.json", report)
        print(write_markdown(out / "speed.md", report))
        return 0
    specs = [s for s in main_specs(device, args.quick) if s["world"] in worlds]
    specs += sdxl_specs(device, args.quick) if "sdxl" in worlds else []
    option = [s for s in option_specs(device, args.quick, args.compile) if s["world"] in worlds]
    rows, option_rows = [], []
    partial = {"command": command, "device": device_info(device), "seconds": 0, "complete": False, "rows": rows,
               "option_rows": option_rows}
    with tempfile.TemporaryDirectory(prefix="speed_sd15_") as weights:
        if any(s["world"] == "sd15" for s in specs + option):
            save_random_sd15(Path(weights))
        for spec, measured in [(s, rows) for s in specs] + [(s, option_rows) for s in option]:
            measured.append(run_row(dict(spec, weights=weights), log))
            partial["seconds"] = time.time() - started
            write_json(out / "speed.json", partial)  # after each row: a run cut short keeps what it measured
    report = {"command": command, "device": device_info(device), "seconds": time.time() - started,
              "complete": True, "rows": rows, "option_rows": option_rows,
              **({"sdxl_gpu_plans": []} if "sdxl" in worlds else {})}
    refresh_plan_tables(report)
    add_rates(rows)
    add_rates(option_rows)
    write_json(out / "speed.json", report)
    print(write_markdown(out / "speed.md", report))
    return 0


def refresh_plan_tables(report: dict) -> None:
    """The shapes-only plan tables (every default on an 8 GB GPU; SDXL's on 24 GB where the report has them), as the
    current memory plan makes them."""
    from erasure_core.memory import ShapeOnlyModel

    report["gpu_plans"] = gpu_plans()
    if "sdxl_gpu_plans" in report:
        report["sdxl_gpu_plans"] = gpu_plans(24.0, ShapeOnlyModel.sdxl())


def rewrite_report(out: Path, merge: list[str] | None, replan_rows: bool, command: str) -> None:
    """OUT/speed.md again from OUT/speed.json, or from the reports in `merge` joined (then OUT/speed.json too);
    `replan_rows`: every measured row's plan columns and the plan tables as the current memory plan makes them."""
    from erasure_core.jobs import write_json

    report = merge_reports([json.loads(Path(f).read_text()) for f in merge]) if merge else (
        json.loads((out / "speed.json").read_text()))
    if replan_rows:
        for row in report.get("memory_rows", []) + report["rows"]:
            if "training_peak_bytes" in row and row["world"] != "toy":
                row.update(replan(row))
        report["replanned"] = command
        if report.get("gpu_plans"):
            refresh_plan_tables(report)
    if merge or replan_rows:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "speed.json", report)
    write_markdown(out / "speed.md", report)


def merge_reports(parts: list[dict]) -> dict:
    """One report from the parts of a run split up: their rows joined, their commands listed, rates computed."""
    report = {"command": "; ".join(p["command"] for p in parts), "device": parts[0]["device"],
              "seconds": sum(p.get("seconds", 0) for p in parts),
              "complete": all(p.get("complete", True) for p in parts)}
    for key in ("rows", "option_rows", "memory_rows"):
        report[key] = [r for p in parts for r in p.get(key, [])]
    memory = [p["memory_command"] for p in parts if p.get("memory_command")]
    if memory:
        report["memory_command"] = "; ".join(memory)
    for key in ("gpu_plans", "sdxl_gpu_plans"):  # shapes only: the last part's are as good as any
        plans = [p[key] for p in parts if p.get(key)]
        if plans:
            report[key] = plans[-1]
    add_rates(report["rows"])
    add_rates(report["option_rows"])
    return report


def write_markdown(path: Path, report: dict) -> str:
    """speed.md from a report (as measured, or as read back from speed.json)."""
    option_rows = [dict(r) for r in report["option_rows"]]
    own = [r for r in report["rows"] if not r.get("paired")]
    for r in option_rows:  # an option's baseline: its "shipped" control row, else the main row of its loop
        r["baseline"] = next((m for m in option_rows if m.get("option") == "shipped" and same_setting(m, r)),
                             next((m for m in own if same_setting(m, r)), None))
    text = markdown({**report, "option_rows": option_rows})
    path.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())

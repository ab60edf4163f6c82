"""The memory plan: what an erasure will hold on its device, part by part, known before any work.

    frozen model      the UNet (and, where this process loaded them, text encoder and VAE) as loaded; on a GPU
                      the text encoders wait on the CPU while training (offload.py) and are not counted
    trained copy      fp32 masters of the trained weights (full weights of the group, or LoRA adapters)
    gradients         one fp32 value per trained weight
    optimiser state   AdamW's two fp32 moments per trained weight
    cached tensors    what the method computes once before training (trajectories, targets, latents)
    activations       what autograd keeps for the backward pass of one training step

Everything but the activations is counted exactly from shapes and dtypes. The activations are
counted by running the UNet's forward pass on the `meta` device (shapes only, no memory, no
compute) on a copy of its structure, with the trained weights marked as trained, and adding up
every tensor autograd saves; attention is counted as the fused kernels keep it (query, key,
value, output and log-sum-exp, as PyTorch's flash/memory-efficient attention on GPUs and its
flash kernel on CPUs do), and under autocast the cast copies its ops make (of the weights too).
The step's peak is that count times factors measured on the CPU and on a GPU (`PEAK_FACTORS` below).
`tests/test_memory.py` checks the count against the tensors a real training step saves, the
exact parts against the real tensors, and the plan against the measured peak of training on the CPU
and against the peaks measured once on a GPU (bench/results/gpu_h200).
"""
from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .conditioning import cross_attention_context
from .errors import ErasureInputError
from .offload import offloadable_text_encoders
from .trainable import select_modules, trained_numel

GiB = 2**30
class PeakFactors(NamedTuple):
    """A training step's peak over the activations autograd saves, by kind of step: the backward pass's gradients,
    the loss's temporaries and the allocator's slack."""

    full: float  # trained full weights: times the saved bytes
    lora: float  # trained LoRA adapters: times the saved bytes
    unit: float  # with gradient checkpointing: times the largest recomputed unit, on top of `full` x the rest
    lora_unit: float  # the same with a LoRA


# CPU (bench/speed.py --memory, tests/test_memory.py): the training phase of cg / dt / esd on the toy world peaked
# at 1.57 / 1.43 / 1.50 x the saved bytes (plus the exact parts); 1.6 covers them. With gradient checkpointing the
# largest recomputed unit is held again with its gradients during its backward: 4 x its saved bytes on top of 1.6 x
# the rest covered cg / dt on the toy world and cg on the SD1.5-shaped UNet (they needed 3.6 / 2.6 / 2.9 x).
# A LoRA's backward adds transient tensors the saved bytes do not show (the gradient reaches each layer's input
# through both the frozen weight and the LoRA pair, and is summed): dt on the toy world with a rank-8 LoRA of every
# layer peaked at 2.07 x the saved bytes where its full weights peaked at 1.24 x; 2.2 covers it. With checkpointing
# the same transients come with the recomputed unit: dt with a rank-8 LoRA of every layer on the SD1.5-shaped UNet
# needed 6.4 and 7.2 x the largest unit in two runs (on top of 2.2 x the rest); 8 covers them.
CPU_PEAK = PeakFactors(full=1.6, lora=2.2, unit=4.0, lora_unit=8.0)
# CUDA (one H200, torch 2.11, PyTorch's caching allocator; bench/results/gpu_h200): the backward frees each saved
# tensor as it uses it, so the peak is the saved bytes themselves: 0.98-1.03 x on SD1.5 (cg, full weights, 3 and 6
# rows) and SDXL (esd / cg / dt with a rank-4 LoRA, 1-3 rows); 1.1 covers them. With checkpointing the largest unit
# needed (on top of 1.1 x the rest) 0.9-1.2 x on SD1.5, 0.6 x with SDXL's rank-4 LoRA, and 1.9 / 1.5 x for SDXL's cg
# and dt defaults as fitted to 24 GB (full cross-attention weights; a rank-8 LoRA of every layer); 2.5 covers them.
# The trained copy is made before the training loop, so these peaks are over the gradients and optimiser state.
CUDA_PEAK = PeakFactors(full=1.1, lora=1.1, unit=2.5, lora_unit=2.5)
PEAK_FACTORS = {"cpu": CPU_PEAK, "cuda": CUDA_PEAK}  # other devices: the CPU's, the larger


# Rows back-propagated one group at a time (split_rows.py) peak above one group's plan: the whole call's output and
# its gradient, and the loss's tensors on every row, stay while each group runs. cg and dt on the toy world (batch 32,
# 32-row groups) peaked at 1.08-1.12 x the group's plan; 1.2 covers them.
SPLIT_ROWS_FACTOR = 1.2
HEADROOM = 0.9  # plan to use at most 90% of the free memory: allocators fragment, kernels take workspace
MEMORY_MODES = ("check", "auto", "off")


@dataclass
class MemoryPlan:
    """Bytes by part, what is already resident, and what the device has free."""

    device: str
    parts: dict[str, int]
    resident: int  # bytes of `parts` already in memory before the run (the loaded model)
    available: int | None  # free bytes on the device now; None when unknown
    settings: str = ""
    changes: list[str] = field(default_factory=list)  # what "auto" changed to make it fit

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def needed(self) -> int:
        """New memory the run takes on top of what is loaded already."""
        return self.total - self.resident

    @property
    def fits(self) -> bool:
        return self.available is None or self.needed <= HEADROOM * self.available

    def summary(self) -> str:
        free = "free memory unknown" if self.available is None else f"{self.available / GiB:.1f} GiB free"
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"memory plan: {self.total / GiB:.2f} GiB in all, {self.needed / GiB:.2f} GiB of it new "
                f"({free} on {self.device}): {verdict}")

    def describe(self) -> str:
        lines = [self.summary(), f"  settings: {self.settings}"]
        lines += [f"  {name:<28s} {size / GiB:8.3f} GiB" for name, size in self.parts.items()]
        lines += [f"  changed to fit: {c}" for c in self.changes]
        return "\n".join(lines)


# -- exact parts ----------------------------------------------------------------------------------
def module_bytes(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype activations are kept in: bf16 under autocast (see training.autocast_for), else fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def checkpointing_for(config, device: torch.device) -> bool:
    """`checkpointing="auto"` is on for CUDA (memory matters more there than the 1.2-1.6x step time)."""
    value = getattr(config, "checkpointing", False)
    return device.type == "cuda" if value == "auto" else bool(value)


# -- activations, counted on the meta device ----------------------------------------------------
class _FusedAttention(torch.autograd.Function):
    """Attention as the fused kernels keep it for backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the probe only counts what forward saves
        raise RuntimeError("the memory probe is forward-only")


# What autocast does to the ops of a UNet (torch's documented op lists), replayed on `meta`, where autocast itself
# does not run: the cast copies these ops make are what autograd saves, e.g. a bf16 copy of every frozen fp16 or
# fp32 weight a linear or conv layer uses (CPU autocast with fp32 weights kept 1.0 GiB of them on the SD1.5-shaped
# UNet, bench/speed.py --memory). CUDA also runs the norms and softmax in fp32.
LOWER_PRECISION_OPS = {F.linear, F.conv2d, torch.conv2d, torch.matmul, torch.bmm, torch.baddbmm,
                       torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm, torch.Tensor.baddbmm,
                       F.scaled_dot_product_attention}
CUDA_FP32_OPS = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax}


class _AutocastOnMeta(TorchFunctionMode):
    """The probe's forward pass as the training step runs it, on `meta`.

    Attention: PyTorch decomposes scaled_dot_product_attention on `meta` into the math path, which would keep
    the full attention matrix; count the fused kernels' footprint instead. Autocast (`dtype` not None): cast
    the inputs of the ops autocast casts, as it does; a trained weight's cast is made once (autocast caches it)."""

    def __init__(self, dtype: torch.dtype | None, device_type: str, trained_weights: set[int]):
        super().__init__()
        self.dtype, self.device_type, self.trained_weights = dtype, device_type, trained_weights
        self.cached: dict[int, torch.Tensor] = {}

    def cast(self, value, dtype):
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype):
            return value
        if id(value) in self.trained_weights:
            return self.cached.setdefault(id(value), value.to(dtype))
        return value.to(dtype)

    def target_dtype(self, func) -> torch.dtype | None:
        """The dtype autocast runs `func` in, or None when it leaves `func` alone."""
        if self.dtype is None:
            return None
        if func in LOWER_PRECISION_OPS:
            return self.dtype
        return torch.float32 if self.device_type == "cuda" and func in CUDA_FP32_OPS else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = self.target_dtype(func)
        if target is not None:
            args, kwargs = [self.cast(a, target) for a in args], {k: self.cast(v, target) for k, v in kwargs.items()}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            return _FusedAttention.apply(q, k, v)
        return func(*args, **kwargs)


def meta_structure(unet: nn.Module, trained: set[str], dtype: torch.dtype,
                   weight_dtype: torch.dtype | None = None, masters: bool = True) -> nn.Module:
    """A copy of `unet`'s structure on `meta` (no weights copied), the `trained` modules' weights marked
    as trained. Hooks and checkpointing can be put on it without touching the host's module. Its weights are in
    `dtype`; or, under autocast, as training holds them: frozen ones in `weight_dtype`, trained ones fp32 masters
    (`masters`: full weights are trained; a LoRA leaves them frozen in `weight_dtype`)."""
    memo = {}
    for name, module in unet.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            held = dtype if weight_dtype is None else (torch.float32 if masters and name in trained else weight_dtype)
            memo[id(p)] = nn.Parameter(torch.empty(p.shape, device="meta", dtype=held), requires_grad=name in trained)
        for b in module.buffers(recurse=False):
            held = dtype if weight_dtype is None else weight_dtype
            memo[id(b)] = torch.empty(b.shape, device="meta", dtype=b.dtype if not b.is_floating_point() else held)
    return copy.deepcopy(unet, memo).train()


def call_unet(unet: nn.Module, x, t, context):
    """The UNet's own calling convention: diffusers (`encoder_hidden_states`) or ldm (`context`). An SDXL-type
    diffusers UNet also gets its pooled text embedding and size ids (shapes from its config)."""
    params = inspect.signature(unet.forward).parameters
    if "encoder_hidden_states" in params:
        config = getattr(unet, "config", None)
        if getattr(config, "addition_embed_type", None) == "text_time":
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            added = {"text_embeds": x.new_empty((len(x), pooled)), "time_ids": x.new_empty((len(x), 6))}
            return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added)
        return unet(x, t, encoder_hidden_states=context)
    return unet(x, timesteps=t, context=context)


def checkpoint_units(unet: nn.Module) -> list[nn.Module]:
    """The modules gradient checkpointing recomputes as one: diffusers' resnets and the transformer blocks
    inside its attention layers (their norms and projections stay outside), or the ldm blocks that
    `trainable.enable_checkpointing` wraps."""
    if hasattr(unet, "down_blocks"):
        blocks = [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if b is not None]
        return ([r for b in blocks for r in getattr(b, "resnets", None) or []]
                + [t for b in blocks for a in getattr(b, "attentions", None) or []
                   for t in getattr(a, "transformer_blocks", [])])
    return [*getattr(unet, "input_blocks", []), *([unet.middle_block] if hasattr(unet, "middle_block") else []),
            *getattr(unet, "output_blocks", [])]


class SavedActivations(NamedTuple):
    """What one UNet call keeps for its backward pass, in bytes, split by gradient checkpointing's units."""

    outside: int  # saved outside every checkpointed unit
    unit_inputs: int  # the units' inputs (what checkpointing keeps of them)
    units: int  # saved inside the units (what checkpointing recomputes)
    largest_unit: int  # the largest single unit's share of `units`

    def kept(self, checkpointing: bool) -> int:
        """Bytes held when the forward pass ends."""
        return self.outside + (self.unit_inputs + self.largest_unit if checkpointing else self.units)

    def peak(self, checkpointing: bool, lora: bool = False, device_type: str = "cpu") -> int:
        """The training step's peak for these activations on a `device_type` (factors measured, see above)."""
        factors = PEAK_FACTORS.get(device_type, CPU_PEAK)
        factor = factors.lora if lora else factors.full
        if checkpointing:
            unit_factor = factors.lora_unit if lora else factors.unit
            return int(factor * (self.outside + self.unit_inputs) + unit_factor * self.largest_unit)
        return int(factor * (self.outside + self.units))

    @staticmethod
    def of_rows(one: "SavedActivations", two: "SavedActivations", rows: int) -> "SavedActivations":
        """The count for `rows` rows in one UNet call from the counts of one and two rows: the activations grow with
        the rows, the cast copies of the weights under autocast are made once per call."""
        return SavedActivations(*(a + (rows - 1) * (b - a) for a, b in zip(one, two)))


def saved_activations(unet: nn.Module, rows: int, latent_shape: tuple[int, int, int],
                      context_shape: tuple[int, int], trained: set[str], dtype: torch.dtype,
                      weight_dtype: torch.dtype | None = None, device_type: str = "cpu",
                      lora: bool = False) -> SavedActivations:
    """Bytes autograd keeps for the backward pass of one UNet call on `rows` rows, counted on `meta`. With
    `weight_dtype` (the frozen weights' dtype) the call runs under `device_type`'s autocast to `dtype`; `lora`:
    the trained modules get adapters (their weights stay frozen) instead of fp32 master weights."""
    autocast = weight_dtype is not None
    probe = meta_structure(unet, trained, dtype, weight_dtype, masters=not lora)
    units = checkpoint_units(probe)
    saved_in: dict[int, int] = {}  # unit index -> bytes saved inside it
    inputs: dict[int, int] = {}  # unit index -> bytes of its tensor inputs
    stack: list[int] = []
    outside = [0]
    kept_inputs: set[int] = set()  # a tensor fed to many units (the text context) is kept once
    alive: list[torch.Tensor] = []  # every tensor whose id is remembered stays alive, so no later tensor reuses its id

    def enter(index):
        def hook(module, args, kwargs):
            stack.append(index)
            fresh = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and id(a) not in kept_inputs]
            kept_inputs.update(id(a) for a in fresh)
            alive.extend(fresh)
            inputs[index] = sum(a.numel() * a.element_size() for a in fresh)
        return hook

    def leave(module, args, output):
        stack.pop()

    handles = [h for i, u in enumerate(units) for h in (u.register_forward_pre_hook(enter(i), with_kwargs=True),
                                                        u.register_forward_hook(leave))]
    params = {id(p) for p in probe.parameters()}
    counted: set[int] = set()  # a view (q, k, v chunked from one projection) shares its base's memory

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in params and id(base) not in params and id(base) not in counted:
            counted.add(id(base))
            alive.append(base)
            size = base.numel() * base.element_size()
            if stack:
                saved_in[stack[0]] = saved_in.get(stack[0], 0) + size
            else:
                outside[0] += size
        return tensor

    given = torch.float32 if autocast else dtype  # under autocast the model is called with fp32 latents and text
    x = torch.empty((rows, *latent_shape), device="meta", dtype=given)
    t = torch.zeros(rows, device="meta", dtype=torch.long)
    context = torch.empty((rows, *context_shape), device="meta", dtype=given)
    trained_weights = {id(p) for p in probe.parameters() if p.requires_grad}
    mode = _AutocastOnMeta(dtype if autocast else None, device_type, trained_weights)
    try:
        with torch.enable_grad(), mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            call_unet(probe, x, t, context)
    finally:
        for h in handles:
            h.remove()
    return SavedActivations(outside[0], sum(inputs.values()), sum(saved_in.values()),
                            max(saved_in.values(), default=0))


# -- the device -----------------------------------------------------------------------------------
def free_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: CUDA's own count, or the RAM Linux says is available; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
            return int(match[1]) * 1024 if match else None
        except OSError:
            return None
    return None


# -- the plan -------------------------------------------------------------------------------------
def plan_memory(model, method: str, config, available: int | None | bool = True,
                probes: dict | None = None) -> MemoryPlan:
    """The plan of `method` with `config` on `model` (a DiffusionModel). `available`: True to ask the device,
    or a number of free bytes, or None (unknown). `probes`: a dict that keeps the meta probe's count per setting
    between plans of the same model (`fit` tries many micro-batches; one probe costs seconds on SDXL)."""
    device = torch.device(model.device)
    unet = model.unet
    precision_dtype = compute_dtype(device, config.precision)
    checkpointing = checkpointing_for(config, device)
    # under autocast the frozen weights stay as loaded and are cast op by op (the casts are saved for backward)
    weight_dtype = next(unet.parameters()).dtype if precision_dtype != torch.float32 else None
    # hosts' ldm UNets are counted on diffusers' UNet of the same layout (their attention code needs a real device)
    layout = model.diffusers_equivalent() if hasattr(model, "diffusers_equivalent") else unet
    trained = {name for name, _ in select_modules(layout, config.group)}
    n_trained = trained_numel(unet, config.group, config.rank)
    lora = config.rank is not None
    latent_bytes = math.prod(model.latent_shape) * 4
    text = model.encode_text([""])
    context_shape = tuple(cross_attention_context(text).shape[1:])
    image_bytes = 3 * getattr(model, "image_size", model.latent_shape[1] * 8) ** 2 * 4
    others = [getattr(model, m, None) for m in ("text_encoder", "text_encoder_2", "vae")]  # where this process holds them
    resident = module_bytes(unet) + sum(module_bytes(m) for m in others if isinstance(m, nn.Module))
    cached = config.cached_bytes(latent_bytes, image_bytes, math.prod(context_shape) * 4)
    free = free_memory(device) if available is True else available
    if not config.trains():  # a closed-form edit: no gradients, optimiser state or activations
        parts = {"frozen model (loaded)": resident, "edited copy (fp32)": 4 * n_trained, "cached tensors": cached,
                 "closed-form solve (fp64)": solve_bytes(layout, config.group)}
        settings = f"{method}, {config.group} closed-form edit ({n_trained / 1e6:.1f} M weights), no training"
        return MemoryPlan(str(device), parts, resident, free, settings)
    rows = config.training_rows()
    # on the CPU while training (unless the robust option's attacks encode text then)
    offloaded = sum(module_bytes(m) for m in offloadable_text_encoders(model, config))
    # Every saved activation has the rows as its batch dimension; the weights' cast copies (autocast) have none and
    # are made once per call. So two probes, one row and two, give every micro-batch's count exactly
    # (tests/test_memory.py checks it).
    key = (frozenset(trained), precision_dtype, weight_dtype, device.type, lora, tuple(model.latent_shape),
           context_shape)
    probes = {} if probes is None else probes
    if key not in probes:
        probes[key] = tuple(saved_activations(layout, n, model.latent_shape, context_shape, trained, precision_dtype,
                                              weight_dtype, device.type, lora) for n in (1, 2))
    saved = SavedActivations.of_rows(*probes[key], rows)
    parts = {
        "frozen model (loaded)": resident - offloaded,
        "trained copy (fp32)": 4 * n_trained,
        "gradients (fp32)": 4 * n_trained,
        "optimiser state (AdamW)": 8 * n_trained,
        "cached tensors": cached,
        f"activations ({rows} rows)": int(saved.peak(checkpointing, lora, device.type)
                                          * (SPLIT_ROWS_FACTOR if config.split_rows else 1)),
    }
    weights = "full weights" if config.rank is None else f"LoRA rank {config.rank}"
    settings = (f"{method}, {config.group} {weights} ({n_trained / 1e6:.1f} M trained), batch {config.batch_size}, "
                f"{model.latent_shape[1]}x{model.latent_shape[2]} latents, "
                f"{'bf16' if precision_dtype == torch.bfloat16 else 'fp32'} activations"
                f"{', gradient checkpointing' if checkpointing else ''}"
                f"{', rows back-propagated one group at a time' if config.split_rows else ''}"
                + (f", text encoders on the CPU while training ({offloaded / GiB:.2f} GiB)" if offloaded else ""))
    return MemoryPlan(str(device), parts, resident, free, settings)


def solve_bytes(unet: nn.Module, group: str) -> int:
    """Peak workspace of a closed-form edit done one layer at a time in fp64 (UCE): for a layer of `o` outputs and
    `i` inputs, the i x i system with its identity and its two sums, and the o x i weight, its two products and the
    result."""
    return max(8 * (4 * i * i + 4 * o * i) for o, i in (m.weight.shape[:2] for _, m in select_modules(unet, group)))


def _steps_to_fit(config, device: torch.device) -> list[tuple[str, dict]]:
    """Changes that need less memory, in the order "auto" tries them: recomputing activations (slower only),
    bf16 activations, then what is trained (a LoRA, fewer layers). Micro-batches are chosen after each."""
    out = []
    if not checkpointing_for(config, device):
        out.append(("gradient checkpointing on", {"checkpointing": True}))
    if device.type == "cuda" and config.precision == "fp32":
        out.append(("bf16 activations", {"precision": "auto"}))
    if config.rank is None:
        out.append(("LoRA rank 8 instead of full weights", {"rank": 8}))
    if config.group != "cross_attn":
        out.append(("parameter group cross_attn", {"group": "cross_attn"}))
    return out


def _largest_micro_batch(model, method: str, config, available, probes: dict):
    """The config with the largest micro-batch (halving from the whole batch) whose plan fits, and its plan; where
    one call has several row groups and none fits, the same with the groups back-propagated one at a time
    (split_rows.py). (None, the last plan tried) when none fits. Neither changes the update, only the time."""
    splits = [False, True] if config.rows_per_element() > 1 and not config.split_rows else [config.split_rows]
    for split in splits:
        micro = config.batch_size
        while True:
            trial = replace(config, split_rows=split, micro_batch=None if micro == config.batch_size else micro)
            plan = plan_memory(model, method, trial, available, probes)
            if plan.fits:
                return trial, plan
            if micro == 1:
                break
            micro = (micro + 1) // 2
    return None, plan


def _result_neutral(config, fitted) -> list[str]:
    """What `_largest_micro_batch` changed, in words."""
    said = [f"micro-batches of {fitted.micro_batch}"] if fitted.micro_batch is not None else []
    return said + (["rows back-propagated one group at a time"] if fitted.split_rows and not config.split_rows else [])


def fit(model, method: str, config, plan: MemoryPlan):
    """(config, plan) that fits: `config.memory` "auto" applies changes in order (each followed by the largest
    micro-batch that fits) until the plan fits; "check" refuses a plan that does not fit, naming changes that
    would each make it fit."""
    mode = getattr(config, "memory", "check")
    if plan.fits or mode == "off":
        return config, plan
    device = torch.device(model.device)
    if not config.trains():
        raise ErasureInputError("memory", f"the edit needs {plan.needed / GiB:.1f} GiB more but "
                                f"{plan.available / GiB:.1f} GiB is free on {plan.device} ({plan.settings})",
                                "use a device with more memory: a closed-form edit trains nothing, so no setting "
                                "makes it smaller")
    steps = _steps_to_fit(config, device)
    probes: dict = {}  # the meta probe's counts, shared by every plan tried below
    if mode == "auto":
        changes, current = [], config
        for label, change in [("", {})] + steps:
            if change:
                current = replace(current, **change)
                changes.append(label)
            fitted, fitted_plan = _largest_micro_batch(model, method, current, plan.available, probes)
            if fitted is not None:
                fitted_plan.changes = changes + _result_neutral(current, fitted)
                return fitted, fitted_plan
    each = []
    for label, change in [("", {})] + steps:
        changed = replace(config, **change)
        fitted, other = _largest_micro_batch(model, method, changed, plan.available, probes)
        if fitted is not None:
            each.append(f"{' with '.join(x for x in (label, *_result_neutral(changed, fitted)) if x)} "
                        f"({other.needed / GiB:.1f} GiB)")
    fix = ("use " + ", or ".join(each) if each else
           "use a LoRA (rank 4-8), the 'cross_attn' group, micro-batches of 1 and gradient checkpointing, or a "
           "device with more memory")
    raise ErasureInputError("memory", f"the erasure needs {plan.needed / GiB:.1f} GiB more but "
                            f"{plan.available / GiB:.1f} GiB is free on {plan.device} ({plan.settings})",
                            fix + "; or set memory to 'auto' to apply such changes automatically")


@dataclass
class ShapeOnlyModel:
    """A model of real layer shapes with no weights (on `meta`), for planning a run on a model that is not
    here: `plan_memory(ShapeOnlyModel.sd15(), "cg", config, available=8 * GiB)`. `device` is where the run
    would happen; `dtype` how the host keeps the frozen weights (fp16 on GPUs)."""

    unet: nn.Module
    text_encoder: nn.Module
    vae: nn.Module
    latent_shape: tuple[int, int, int]
    context_shape: tuple[int, int]
    device: torch.device
    text_encoder_2: nn.Module | None = None  # SDXL's second text encoder

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.empty((len(prompts), *self.context_shape), device="meta")

    @classmethod
    def sd15(cls, image_size: int = 512, device: str = "cuda", dtype: torch.dtype = torch.float16) -> "ShapeOnlyModel":
        """Stable Diffusion 1.5's UNet (860 M), CLIP ViT-L text encoder (123 M) and VAE (84 M)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from .backends.webui import SD1_DIFFUSERS_CONFIG

        with torch.device("meta"):  # nn.Module.to: diffusers' own .to warns about dtypes on meta models
            unet = nn.Module.to(UNet2DConditionModel(**SD1_DIFFUSERS_CONFIG), dtype)
            text = nn.Module.to(CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                             num_hidden_layers=12, num_attention_heads=12,
                                                             max_position_embeddings=77)), dtype)
            vae = nn.Module.to(AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                                             latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
                                             up_block_types=["UpDecoderBlock2D"] * 4), dtype)
        side = image_size // 8
        return cls(unet, text, vae, (4, side, side), (77, 768), torch.device(device))

    @classmethod
    def sdxl(cls, image_size: int = 1024, device: str = "cuda", dtype: torch.dtype = torch.float16) -> "ShapeOnlyModel":
        """SDXL base: its UNet (2.6 B), CLIP ViT-L (123 M) and OpenCLIP bigG (695 M) text encoders and its VAE
        (84 M, kept in fp32 as diffusers keeps SDXL's)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from .backends.webui import SDXL_DIFFUSERS_CONFIG

        with torch.device("meta"):
            unet = nn.Module.to(UNet2DConditionModel(**SDXL_DIFFUSERS_CONFIG), dtype)
            text = nn.Module.to(CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                             num_hidden_layers=12, num_attention_heads=12,
                                                             max_position_embeddings=77)), dtype)
            text_2 = nn.Module.to(CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")), dtype)
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        side = image_size // 8
        return cls(unet, text, vae, (4, side, side), (77, 2048), torch.device(device), text_2)

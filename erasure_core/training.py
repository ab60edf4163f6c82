"""The optimisation loop every method shares: AdamW, progress, cancel, divergence guard.

A method supplies `loss_fn(step) -> scalar`; the loop owns everything else so that progress
bars, cancel buttons and failure handling behave the same in every host.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable

import torch

from . import checks
from .errors import ErasureCancelled, ErasureOutOfMemory, NonFiniteLoss, TrainingDiverged

ProgressFn = Callable[[int, int, float], None]  # (step done, total steps, loss)
CancelFn = Callable[[], bool]


def check_schedule(steps: int, lr: float) -> None:
    checks.steps(steps)
    checks.learning_rate(lr)


PRECISIONS = ("auto", "bf16", "fp32")
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator", "not enough memory")  # torch's CPU allocator, in its RuntimeError


@contextmanager
def memory_advice(where: str, device_type: str = "cuda"):
    """Turn an out-of-memory error of the GPU or the CPU into ErasureOutOfMemory with the advice."""
    try:
        yield
    except ErasureOutOfMemory:
        raise
    except (torch.OutOfMemoryError, MemoryError):
        raise ErasureOutOfMemory(where, device_type) from None
    except RuntimeError as exc:
        if any(sign in str(exc) for sign in CPU_OUT_OF_MEMORY):
            raise ErasureOutOfMemory(where, "cpu") from None
        raise


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast (fp32 master weights stay in the optimiser) on CUDA, or anywhere with "bf16"; else fp32.

    "auto" keeps CPU in fp32: bf16 on CPU pays off only for full-size UNets on CPUs with native
    bf16 (avx512_bf16/AMX) and is slower on the toy world (bench/results/speed.md).
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CUDA, and CPU since torch 2.4), else torch's default implementation.

    On 2 CPU threads, gradient clipping plus the fused step took 58 ms on SD1.5's 44M cross-attention
    weights against 164 ms multi-tensor and 128 ms per-tensor (torch's CPU default), and 4.6 ms against
    14.0 / 15.9 ms on the toy world's 181 ESD-u tensors (`python bench/adamw.py`).
    """
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError):  # torch < 2.4 on CPU, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def micro_batches(batch_size: int, micro_batch: int | None) -> list[int]:
    """Rows of each UNet call in one step: the whole batch, or chunks of `micro_batch` (8, 3 -> [3, 3, 2])."""
    size = min(micro_batch or batch_size, batch_size)
    return [min(size, batch_size - start) for start in range(0, batch_size, size)]


# Divergence: every one of the last few losses is ten times the first (the loss at the original weights, over the
# whole batch). Every method's loss falls or stays level while it erases (a drift or preservation term starts at
# 0 and stays small). On the toy world, cg at lr 0.1 went from 0.24 to 3.0, 6.7, 8.7, 9.4, 12.7 in its first steps
# and stayed near 10 (stopped at step 6), while at its default lr 5e-4 no loss of 40 steps exceeded 1.6x the first.
# The first loss counts as at least DIVERGENCE_FLOOR: a concept its anchor already shows (cg erasing "solid" towards
# "a red circle", which the toy world draws solid) starts at a loss near 0 (3.7e-6), and the optimiser's first steps
# raised it to 6e-4, ten times that but nowhere near a diverging run's.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_STEPS = 5
DIVERGENCE_FLOOR = 1e-3


def check_divergence(losses: list[float]) -> None:
    n = DIVERGENCE_STEPS
    if len(losses) <= n or min(losses[-n:]) <= DIVERGENCE_FACTOR * max(losses[0], DIVERGENCE_FLOOR):
        return
    raise TrainingDiverged(f"the loss grew from {losses[0]:.4g} at the first step to over {min(losses[-n:]):.4g} in "
                           f"each of the last {n} (step {len(losses)}): training is diverging; the input model is "
                           "untouched and nothing was written. Fix: lower the learning rate (e.g. divide it by 10), "
                           "or a loss weight you raised (preserve weight, drift weight λ, η)")


def optimise(params: list[torch.nn.Parameter], loss_fn: Callable[[int, int], torch.Tensor], steps: int, lr: float,
             device: torch.device, progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
             grad_clip: float = 1.0, precision: str = "auto", batch_size: int = 1,
             micro_batch: int | None = None) -> list[float]:
    """Run `steps` AdamW steps on `params`; returns the loss of every step.

    `loss_fn(step, rows)` is the mean loss over `rows` batch elements. A step of `batch_size` elements
    is one call, or, with `micro_batch`, several calls whose gradients add up to the same step
    (less memory for activations, the same update up to which random rows are drawn).
    Raises ErasureCancelled when `should_cancel()` turns true (checked before every step), NonFiniteLoss
    when the loss is NaN/inf and TrainingDiverged when it stays ten times its first value; the caller discards its trainable
    copy in every case.
    """
    check_schedule(steps, lr)
    opt = adamw(params, lr)
    chunks = micro_batches(batch_size, micro_batch)
    losses: list[float] = []
    for step in range(steps):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled(f"cancelled at step {step} of {steps}; nothing was changed or written")
        opt.zero_grad(set_to_none=True)
        value = 0.0
        with memory_advice(f"training (step {step + 1})", device.type):
            for rows in chunks:
                with autocast_for(device, precision):
                    loss = loss_fn(step, rows) * (rows / batch_size)
                part = float(loss.detach())
                if part != part or part in (float("inf"), float("-inf")):
                    raise NonFiniteLoss(f"the loss became {part} at step {step + 1}; the input model is untouched. "
                                        "Fix: lower the learning rate (e.g. divide it by 10), or a loss weight you "
                                        "raised (preserve weight, drift weight λ, η)")
                loss.backward()
                value += part
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(value)
        check_divergence(losses)
        if progress is not None:
            progress(step + 1, steps, value)
    return losses

"""The optimisation loop every method shares: AdamW, progress, cancel, divergence guard.

A method supplies `loss_fn(step) -> scalar`; the loop owns everything else so that progress
bars, cancel buttons and failure handling behave the same in every host.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable

import torch

from . import checks
from .errors import ErasureCancelled, ErasureOutOfMemory, NonFiniteLoss

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


def optimise(params: list[torch.nn.Parameter], loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
             device: torch.device, progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
             grad_clip: float = 1.0, precision: str = "auto") -> list[float]:
    """Run `steps` AdamW steps on `params`; returns the loss of every step.

    Raises ErasureCancelled when `should_cancel()` turns true (checked before every step) and
    NonFiniteLoss when the loss is NaN/inf; the caller discards its trainable copy either way.
    """
    check_schedule(steps, lr)
    opt = adamw(params, lr)
    losses: list[float] = []
    for step in range(steps):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled(f"cancelled at step {step} of {steps}; nothing was changed or written")
        with memory_advice(f"training (step {step + 1})", device.type):
            with autocast_for(device, precision):
                loss = loss_fn(step)
            value = float(loss.detach())
            if value != value or value in (float("inf"), float("-inf")):
                raise NonFiniteLoss(f"the loss became {value} at step {step + 1}; the input model is untouched. "
                                    "Fix: lower the learning rate (e.g. divide it by 10), or a loss weight you "
                                    "raised (preserve weight, drift weight λ, η)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(value)
        if progress is not None:
            progress(step + 1, steps, value)
    return losses

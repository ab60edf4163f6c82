"""Errors that hosts show to users: each names the field at fault and the fix."""
from __future__ import annotations


class ErasureError(Exception):
    """Base of every error the core raises on purpose."""


class ErasureInputError(ErasureError, ValueError):
    """Bad input. `field` is the option/widget at fault; the message says how to fix it."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}.")


class ErasureCancelled(ErasureError):
    """The user cancelled; nothing was written and the input model is untouched."""


class NonFiniteLoss(ErasureError):
    """Training diverged (NaN/inf loss); the input model is untouched."""


class TrainingDiverged(NonFiniteLoss):
    """The loss grew tenfold: training is diverging (stopped before it reaches NaN); the input model is untouched."""


class ErasureOutOfMemory(ErasureError, MemoryError):
    """The device (GPU, or the CPU's RAM) ran out of memory; the message gives concrete ways to need less."""

    ADVICE = ("use a LoRA (rank 4-8) instead of full weights, a smaller batch size, the 'cross_attn' parameter "
              "group, or gradient checkpointing")

    def __init__(self, where: str, device_type: str = "cuda"):
        other = "close other programs using the GPU" if device_type == "cuda" else "close other programs using memory"
        super().__init__(f"out of memory while {where}. Fix: {self.ADVICE}; {other}.")

"""A UNet call whose backward pass holds the activations of one group of rows at a time.

A method's loss puts all its rows through one UNet call (DT: the concept rows and the preserve rows; classifier
guidance: the concept, unconditional and preserve rows), and autograd keeps the activations of every row until
the backward pass. With the rows split, the call runs without gradients group by group, keeping only its inputs,
and the backward pass runs it again group by group, each group's gradients reaching the weights before the next
group runs: the activations of one group at a time, for one more forward pass per step. It is gradient checkpointing
of the whole call, along the rows; the update is the same up to floating-point rounding, and the loss functions
do not change (classifier guidance's guidance term couples its concept and unconditional rows; the backward
pass gets that coupling from the output gradient, which the loss computes on every row at once).
"""
from __future__ import annotations

import torch


def autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """(device type, autocast on, its dtype) now; torch before 2.4 (the hosts' own) has per-device functions."""
    if hasattr(torch, "get_autocast_dtype"):
        return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cuda":
        return device_type, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return device_type, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


class _RecomputeInGroups(torch.autograd.Function):
    """`predict(*inputs)` computed without gradients, one group of rows at a time; its backward recomputes it on
    each group and back-propagates that group's share of the output gradient into the weights at once."""

    @staticmethod
    def forward(ctx, anchor, predict, inputs, groups):
        ctx.predict, ctx.inputs, ctx.groups = predict, inputs, groups
        # the backward pass runs outside the step's autocast; recompute under the same autocast as the forward
        ctx.autocast = autocast_state(inputs[0].device.type)
        with torch.no_grad():  # group by group too: no allocation larger than the backward pass's
            return torch.cat([predict(*(x[rows] for x in inputs)) for rows in groups])

    @staticmethod
    def backward(ctx, grad):
        device_type, enabled, dtype = ctx.autocast
        for rows in ctx.groups:
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                out = ctx.predict(*(x[rows] for x in ctx.inputs))
            torch.autograd.backward(out, grad[rows].to(out.dtype))
        return None, None, None, None


class RowsSplit:
    """`model` (a DiffusionModel) whose `predict_noise` back-propagates its rows `group_rows` at a time. Every
    other attribute is the model's own, so a method's loss function takes it in place of the model."""

    def __init__(self, model, group_rows: int):
        self.model, self.group_rows = model, group_rows

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_noise(self, unet, latents, timesteps, text):
        n = len(latents)
        if n <= self.group_rows or not torch.is_grad_enabled():
            return self.model.predict_noise(unet, latents, timesteps, text)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(n)
        groups = [slice(start, start + self.group_rows) for start in range(0, n, self.group_rows)]
        anchor = torch.empty(0, requires_grad=True)  # makes the output require grad; the weights are reached inside
        return _RecomputeInGroups.apply(anchor, lambda x, t, c: self.model.predict_noise(unet, x, t, c),
                                        (latents, timesteps, text), groups)


def rows_split(model, config):
    """The model the training step of `config` calls: split into groups of the (micro-)batch's rows when
    `config.split_rows`, else the model itself."""
    if not config.split_rows:
        return model
    return RowsSplit(model, min(config.micro_batch or config.batch_size, config.batch_size))

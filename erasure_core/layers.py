"""Which modules of a UNet are weight layers (the ones an erasure changes), by what they hold.

Hosts build their UNets from their own layer classes: Forge's `ForgeOperations.Linear` is a plain
`torch.nn.Module` holding a weight it applies with `F.linear`, ComfyUI's cast layers subclass
torch's. So a layer is recognised by the weight it holds, not by its class: a 2-D weight is a linear
map, a 4-D one a 2-D convolution's kernel. Norms (1-D weights) and embeddings (a 2-D lookup table,
not a map) are not weight layers. Module names are the same whatever the classes, so the layers
found and a UNet's fingerprint do not depend on the host.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

LINEAR, CONV = "linear", "conv"


def own_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight the module holds itself (not one a wrapper reaches through to a wrapped layer)."""
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    if weight is None:
        weight = module.__dict__.get("weight")  # a plain tensor attribute, where a host stores one
    return weight if isinstance(weight, torch.Tensor) else None


def layer_kind(module: nn.Module) -> str | None:
    """LINEAR for a module applying a 2-D weight as a linear map, CONV for a 4-D (conv2d) kernel, else None."""
    if isinstance(module, nn.Embedding):
        return None
    weight = own_weight(module)
    if weight is None:
        return None
    return {2: LINEAR, 4: CONV}.get(weight.ndim)


def weight_layers(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(dotted name, module) of every linear and conv layer of `unet`, in module order."""
    for name, module in unet.named_modules():
        if layer_kind(module) is not None:
            yield name, module

"""Which UNet weights an erasure may change, and the trainable copy that holds the change.

Parameter groups follow the erasure literature (names match both diffusers and ldm UNets):
- cross_attn:     the layers that read the text, `attn2.{to_q,to_k,to_v,to_out}` (ESD-x; the
                  classifier-guidance method's "surgical" default)
- cross_attn_kv:  only `attn2.to_k/to_v` (ESD-x-strict)
- no_cross_attn:  everything but cross-attention, time embedding and output layers (ESD-u)
- all:            every linear and conv layer of the UNet (erasure_core.layers: found by the weight they
                  hold, so a host's own layer classes count too)
The original UNet is never touched: training happens on a deep copy, full weights or LoRA
adapters (peft) on the chosen modules, optionally with gradient checkpointing on the copy.
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from .errors import ErasureInputError
from .layers import LINEAR, layer_kind, weight_layers

GROUPS = ("cross_attn", "cross_attn_kv", "no_cross_attn", "all")


def _is_cross_attn(name: str) -> bool:
    return ".attn2." in f".{name}."


def _in_group(name: str, group: str) -> bool:
    if group == "all":
        return True
    if group == "cross_attn":
        return _is_cross_attn(name)
    if group == "cross_attn_kv":
        return _is_cross_attn(name) and (name.endswith("to_k") or name.endswith("to_v"))
    if group == "no_cross_attn":
        time_embedding = name.startswith(("time_embedding", "time_embed"))
        output = name in ("conv_out", "conv_norm_out") or name.startswith("out.")
        return not (_is_cross_attn(name) or time_embedding or output)
    raise ErasureInputError("parameter group", f"unknown group {group!r}", f"use one of {', '.join(GROUPS)}")


def select_modules(unet: nn.Module, group: str) -> list[tuple[str, nn.Module]]:
    """The linear and conv layers of `unet` in `group`, by their dotted names."""
    chosen = [(n, m) for n, m in weight_layers(unet) if _in_group(n, group)]
    if not chosen:
        raise ErasureInputError("parameter group", f"group {group!r} selects no layer of this UNet",
                                f"pick another group ({', '.join(GROUPS)})")
    return chosen


def _checkpointed(forward, *args, **kwargs):
    """Recompute a block in the backward pass instead of storing its activations (when training)."""
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_checkpointing(tuned: nn.Module) -> None:
    """Gradient checkpointing on a trainable copy: activations are recomputed in the backward pass (less
    memory, slower). diffusers UNets have their own switch; ldm UNets (ComfyUI, the webui) get each of
    their blocks wrapped. Only ever called on the private copy, never on a host's shared module."""
    if hasattr(tuned, "enable_gradient_checkpointing"):
        tuned.enable_gradient_checkpointing()
        return
    blocks = [*getattr(tuned, "input_blocks", []), getattr(tuned, "middle_block", None),
              *getattr(tuned, "output_blocks", [])]
    if len(blocks) < 2 or any(b is None for b in blocks):
        raise ErasureInputError("gradient checkpointing", f"this UNet ({type(tuned).__name__}) is neither a "
                                "diffusers nor an ldm UNet", "turn gradient checkpointing off")
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)


def host_tensors(unet: nn.Module) -> dict[int, torch.Tensor]:
    """{id: tensor} of the plain tensors a host hangs on the UNet's modules besides their parameters and buffers
    (A1111's Lora network keeps a backup of every weight it patched): not used by the forward pass, so a copy
    of the UNet shares them instead of duplicating them (they can be as large as the UNet itself)."""
    return {id(value): value for module in unet.modules() for value in vars(module).values()
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)}


def ordinary_view(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as an ordinary tensor over the same memory (no copy), detached.

    Hosts load weights under inference mode (ComfyUI's loader nodes, Forge's loader), and autograd refuses to save
    inference tensors for a backward pass. A DLPack view of the same storage carries no inference flag, so a frozen
    weight takes part in training as it is, instead of costing a copy as large as the UNet. Where DLPack cannot
    view a tensor (the meta device), it is cloned."""
    tensor = tensor.detach()
    if not tensor.is_inference():
        return tensor
    try:
        return torch.from_dlpack(tensor)
    except (BufferError, RuntimeError, TypeError, ValueError):
        with torch.inference_mode(False):
            return tensor.clone()


def shared_copy(unet: nn.Module, trained: list[str]) -> nn.Module:
    """A frozen copy of `unet` whose weights share storage with it, except those of the modules named in
    `trained`, which are copied (they will change). Only what is trained costs new memory; the copy's
    own Parameter objects keep the original's requires_grad flags untouched. Weights made under a host's
    inference mode are shared through ordinary views (ordinary_view)."""
    copied = _params_of(unet, trained)
    memo = {id(p): nn.Parameter(ordinary_view(p), requires_grad=False) for p in unet.parameters() if id(p) not in copied}
    memo.update(host_tensors(unet))
    return copy.deepcopy(unet, memo).requires_grad_(False)


def _params_of(unet: nn.Module, names: list[str]) -> set[int]:
    return {id(p) for name in names for p in unet.get_submodule(name).parameters(recurse=False)}


def make_trainable(unet: nn.Module, group: str, rank: int | None = None,
                   checkpointing: bool = False, seed: int = 0) -> tuple[nn.Module, list[nn.Parameter]]:
    """A trainable deep copy of `unet` and its trainable parameters (fp32 masters).

    rank=None trains the chosen weights themselves (a full delta); rank=r adds LoRA adapters
    of rank r (peft) to the chosen modules and trains only those. `checkpointing` trades
    speed for memory on the copy only; the original UNet is never changed. `seed` draws the LoRA's
    initial weights (the same seed, the same erasure), leaving the caller's random state as it was.
    """
    names = [n for n, _ in select_modules(unet, group)]
    tuned = shared_copy(unet, names if rank is None else [])
    if checkpointing:
        enable_checkpointing(tuned)
    if rank is None:
        params = []
        for name in names:
            module = tuned.get_submodule(name).float()
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
                params.append(p)
        return tuned, params
    if rank < 1:
        raise ErasureInputError("rank", f"LoRA rank must be at least 1, got {rank}", "use a rank such as 4 or 8, or "
                                "leave it empty for full weights")
    from peft import LoraConfig, inject_adapter_in_model

    for name in names:
        use_torch_layer(tuned, name)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=names, init_lora_weights=True)
    device = next(tuned.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        tuned = inject_adapter_in_model(config, tuned)
    params = [p for n, p in tuned.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return tuned, params


def use_torch_layer(tuned: nn.Module, name: str) -> None:
    """Put a torch `nn.Linear` in place of a host's own linear layer class in the private copy `tuned`.

    peft adds LoRA adapters to torch's layer classes only. A host layer that holds a weight and bias and
    applies them with `F.linear` (Forge's `ForgeOperations.Linear`) does what an `nn.Linear` holding the
    same Parameters does; anything it holds beyond those is refused rather than silently dropped.
    """
    module = tuned.get_submodule(name)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return
    extra = sorted(n for n, _ in module.named_parameters(recurse=False) if n not in ("weight", "bias"))
    if layer_kind(module) != LINEAR or extra:
        raise ErasureInputError("LoRA rank", f"layer {name} ({type(module).__name__}) is not a torch Linear/Conv2d"
                                + (f" and holds {', '.join(extra)}" if extra else ""),
                                "set the LoRA rank to 0 to train full weights")
    out_features, in_features = module.weight.shape
    with torch.device("meta"):
        layer = nn.Linear(in_features, out_features, bias=getattr(module, "bias", None) is not None)
    layer.weight = module.weight
    if layer.bias is not None:
        layer.bias = module.bias
    parent, _, child = name.rpartition(".")
    setattr(tuned.get_submodule(parent) if parent else tuned, child, layer)


def lora_layers(tuned: nn.Module):
    """(name, down, up, alpha) for each peft LoRA layer of a tuned UNet."""
    for name, module in tuned.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            yield (name, module.lora_A["default"].weight, module.lora_B["default"].weight,
                   float(module.lora_alpha["default"]))


def weight_deltas(original: nn.Module, tuned: nn.Module, group: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """For a full-weight erasure: {module name: (weight delta, bias delta or None)}."""
    deltas = {}
    for name, module in select_modules(original, group):
        changed = tuned.get_submodule(name)
        dw = (changed.weight.detach().float() - module.weight.detach().float()).cpu()
        db = None
        if module.bias is not None:
            db = (changed.bias.detach().float() - module.bias.detach().float()).cpu()
        deltas[name] = (dw, db)
    return deltas


def trained_numel(unet: nn.Module, group: str, rank: int | None) -> int:
    """Weights the optimiser updates: the group's full weights and biases, or rank x (out + in) per LoRA layer."""
    total = 0
    for _, module in select_modules(unet, group):
        w = module.weight
        if rank is None:
            total += w.numel() + (module.bias.numel() if module.bias is not None else 0)
        else:
            total += rank * (w.shape[0] + w[0].numel())
    return total


def delta_bytes(unet: nn.Module, group: str, rank: int | None = None) -> int:
    """Bytes of the float32 tensors an erasure of `group` saves: full deltas (weights and biases) or, with
    `rank`, LoRA pairs plus one alpha each. Used to check the disk before training."""
    alphas = 0 if rank is None else len(select_modules(unet, group))
    return 4 * (trained_numel(unet, group, rank) + alphas)


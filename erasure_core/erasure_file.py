"""An erasure as one `.safetensors` file in the kohya LoRA key format.

Keys are `lora_unet_<module path, dots as underscores>` with `.lora_down.weight`,
`.lora_up.weight` and `.alpha` (LoRA), or `.diff` / `.diff_b` (full weight / bias deltas).
This is the format ComfyUI's LoraLoader and the A1111/Forge Lora network read as it is.
The metadata carries `modelspec.architecture`, the `ss_*` fields the webui lists files by,
and a fingerprint of the UNet's layer shapes so a file is never applied to the wrong model.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import checks
from .errors import ErasureInputError
from .layers import weight_layers
from .layouts import FAMILIES, family_of, file_layer_name
from .safe_files import atomic_path, check_safetensors

PREFIX = "lora_unet_"
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".diff", ".diff_b")
# An SD1.5 erasure of every layer has about 700 layers (2 or 3 tensors each), an SDXL one about 2,500:
# more tensors than this is not an erasure file, and is refused before its tensors are read.
MAX_TENSORS = 20_000


def layers(unet: nn.Module):
    """(name, module) of every layer an erasure file can address: the UNet's linear and conv layers, found by the
    weight they hold (erasure_core.layers), so a host's own layer classes count too."""
    return list(weight_layers(unet))


def unet_fingerprint(unet: nn.Module) -> str:
    """A short hash of the UNet's Linear/Conv2d names (as erasure files name them) and shapes: equal for one
    architecture. SDXL's names are sorted, so its diffusers and ldm layouts give the same hash."""
    rename = file_layer_name(unet)
    entries = [f"{rename(name)}:{tuple(module.weight.shape)};" for name, module in layers(unet)]
    h = hashlib.sha256()
    for entry in sorted(entries) if family_of(unet) == "sdxl" else entries:
        h.update(entry.encode())
    return h.hexdigest()[:16]


def module_key(name: str) -> str:
    return PREFIX + name.replace(".", "_")


def split_key(key: str) -> tuple[str, str]:
    """(module key, suffix) of one erasure tensor's key: `lora_unet_x.diff` -> (`lora_unet_x`, `.diff`)."""
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    raise ErasureInputError("erasure", f"{key!r} is not a kohya LoRA key", "use tensors made by Concept Eraser")


def to_state_dict(lora_layers=(), weight_deltas=None) -> dict[str, torch.Tensor]:
    """kohya tensors from LoRA layers [(name, down, up, alpha)] and/or full deltas {name: (dw, db)}."""
    sd: dict[str, torch.Tensor] = {}
    for name, down, up, alpha in lora_layers:
        key = module_key(name)
        sd[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous()
        sd[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous()
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    for name, (dw, db) in (weight_deltas or {}).items():
        key = module_key(name)
        sd[f"{key}.diff"] = dw.contiguous()
        if db is not None:
            sd[f"{key}.diff_b"] = db.contiguous()
    return sd


def build_metadata(unet: nn.Module, info: dict) -> dict[str, str]:
    """Metadata strings: what the webui/ComfyUI list files by (the UNet's family), plus what made the file."""
    architecture, base_version = FAMILIES[family_of(unet)]
    meta = {
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.title": str(info.get("name", "concept erasure")),
        "ss_base_model_version": base_version,
        "ss_output_name": str(info.get("name", "concept_erasure")),
        "ss_network_module": "networks.lora",
        "concept_eraser.unet_fingerprint": unet_fingerprint(unet),
        "concept_eraser.info": json.dumps(info, sort_keys=True, default=str),
    }
    return meta


def save_erasure(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write atomically: a cancelled or failed save leaves no file under `path`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ErasureInputError("output", f"{path.name} does not end in .safetensors", "name the file <name>.safetensors")
    try:
        with atomic_path(path) as tmp:
            save_file(state_dict, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as exc:  # a full disk, a folder gone away: nothing was left behind
        raise ErasureInputError("output", f"{path.name} could not be written ({exc})",
                                "free some disk space or choose another folder, then save again") from None
    return path


def load_erasure(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an erasure file (safetensors only; header, key names and tensor count checked before any tensor is read)."""
    metadata = check_safetensors(Path(path), "erasure file", max_tensors=MAX_TENSORS)
    try:
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged payloads
        raise ErasureInputError("erasure file", f"{Path(path).name} could not be read ({exc})",
                                "the file is damaged; save the erasure again") from None
    bad = [k for k in sd if not (k.startswith(PREFIX) and k.endswith(SUFFIXES))]
    if bad:
        raise ErasureInputError("erasure file", f"{Path(path).name} has keys that are not kohya UNet LoRA keys "
                                f"(e.g. {bad[0]!r})", "use a file written by Concept Eraser or another kohya UNet LoRA")
    return sd, metadata


LayerShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]]  # module key -> (weight shape, bias shape)


def layer_shapes(unet: nn.Module) -> LayerShapes:
    """{kohya module key (the family's file names, layouts.py): (weight shape, bias shape or None)} of every layer."""
    rename = file_layer_name(unet)
    return {module_key(rename(name)): (tuple(m.weight.shape), None if m.bias is None else tuple(m.bias.shape))
            for name, m in layers(unet)}


def group_by_layer(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module key: {suffix: tensor}} (`lora_unet_x.diff` -> groups["lora_unet_x"][".diff"])."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, suffix = split_key(key)
        groups.setdefault(module, {})[suffix] = tensor
    return groups


def check_layer(key: str, parts: dict[str, torch.Tensor], weight_shape: tuple[int, ...],
                bias_shape: tuple[int, ...] | None) -> None:
    """Refuse a layer's tensors that cannot be applied to a weight of `weight_shape`: checked before any
    arithmetic, so a damaged or hostile file can neither fail half-way nor ask for gigabytes (a rank-40000
    LoRA of a 320-wide layer would multiply out to 40000 x 40000)."""
    def refuse(problem: str) -> ErasureInputError:
        return ErasureInputError("erasure file", f"layer {key!r} {problem}",
                                 "use the file made for this model, or save the erasure again")

    for suffix, tensor in parts.items():
        if not tensor.is_floating_point():
            raise refuse(f"holds {tensor.dtype} in {suffix}, not floating-point numbers")
        if not bool(torch.isfinite(tensor).all()):
            raise refuse(f"holds NaN or infinite values in {suffix}")
    out_features, per_row = weight_shape[0], math.prod(weight_shape[1:])
    if ".diff" in parts:
        if ".lora_down.weight" in parts or ".lora_up.weight" in parts:
            raise refuse("has both a full delta (.diff) and LoRA tensors")
        if parts[".diff"].numel() != math.prod(weight_shape):
            raise refuse(f"has a .diff of shape {tuple(parts['.diff'].shape)} for a weight of shape {weight_shape}")
    else:
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None or up is None:
            missing = ".lora_down.weight" if down is None else ".lora_up.weight"
            raise refuse(f"has no {missing} (a LoRA needs both lora_down and lora_up)")
        if down.ndim not in (2, 4) or up.ndim not in (2, 4) or down.shape[0] == 0:
            raise refuse(f"has LoRA tensors of shapes {tuple(down.shape)} and {tuple(up.shape)}, not (r, in) and (out, r)")
        rank = down.shape[0]
        if up.shape[1] != rank or math.prod(up.shape[2:]) != 1:
            raise refuse(f"has lora_up of shape {tuple(up.shape)} for lora_down of rank {rank}")
        if up.shape[0] != out_features or math.prod(down.shape[1:]) != per_row:
            raise refuse(f"has LoRA tensors {tuple(up.shape)} x {tuple(down.shape)} for a weight of shape {weight_shape}")
        if ".alpha" in parts and parts[".alpha"].numel() != 1:
            raise refuse(f"has an alpha of shape {tuple(parts['.alpha'].shape)}, not one number")
    if ".diff_b" in parts:
        if bias_shape is None:
            raise refuse("has a bias delta (.diff_b) but the layer has no bias")
        if parts[".diff_b"].numel() != math.prod(bias_shape):
            raise refuse(f"has a .diff_b of shape {tuple(parts['.diff_b'].shape)} for a bias of shape {bias_shape}")


def check_erasure(state_dict: dict[str, torch.Tensor], shapes: LayerShapes) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors grouped by layer, each layer checked against `shapes` (see `layer_shapes`)."""
    groups = group_by_layer(state_dict)
    for key, parts in groups.items():
        if key not in shapes:
            raise ErasureInputError("erasure file", f"layer {key!r} does not exist in this model's UNet",
                                    "apply the file to the model family it was made for")
        check_layer(key, parts, *shapes[key])
    return groups


def module_deltas(state_dict: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Resolve kohya keys to this UNet's modules: {module name: (weight delta, bias delta or None)}."""
    rename = file_layer_name(unet)
    names = {module_key(rename(name)): name for name, _ in layers(unet)}
    shapes = layer_shapes(unet)
    deltas = {}
    for key, parts in check_erasure(state_dict, shapes).items():
        weight_shape = shapes[key][0]
        if ".diff" in parts:
            dw = parts[".diff"].float()
        else:
            down, up = parts[".lora_down.weight"].float(), parts[".lora_up.weight"].float()
            rank = down.shape[0]
            alpha = float(parts.get(".alpha", torch.tensor(rank)))
            dw = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)) * (alpha / rank)
        deltas[names[key]] = (dw.reshape(weight_shape), parts.get(".diff_b"))
    return deltas


def apply_erasure(unet: nn.Module, state_dict: dict[str, torch.Tensor], strength: float = 1.0,
                  metadata: dict[str, str] | None = None) -> nn.Module:
    """A new UNet with the erasure merged in; `unet` itself is left untouched."""
    checks.real_number("strength", strength, -100.0, 100.0, "use e.g. 1.0 (0 = no change)")
    fingerprint = (metadata or {}).get("concept_eraser.unet_fingerprint")
    if fingerprint and fingerprint != unet_fingerprint(unet):
        raise ErasureInputError("erasure file", "it was made for a model with a different UNet architecture",
                                "apply it to the model family it was made for (same base model)")
    deltas = module_deltas(state_dict, unet)
    merged = copy.deepcopy(unet)
    with torch.no_grad():
        for name, (dw, db) in deltas.items():
            module = merged.get_submodule(name)
            module.weight.add_((strength * dw).to(module.weight))
            if db is not None and module.bias is not None:
                module.bias.add_((strength * db.float()).to(module.bias))
    return merged

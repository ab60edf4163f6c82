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
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ErasureInputError
from .safe_files import atomic_path, check_safetensors

PREFIX = "lora_unet_"
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".diff", ".diff_b")


def unet_fingerprint(unet: nn.Module) -> str:
    """A short hash of the UNet's Linear/Conv2d names and shapes: equal for one architecture."""
    h = hashlib.sha256()
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            h.update(f"{name}:{tuple(module.weight.shape)};".encode())
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


def build_metadata(unet: nn.Module, info: dict, architecture: str = "stable-diffusion-v1") -> dict[str, str]:
    """Metadata strings: what the webui/ComfyUI list files by, plus what made the file."""
    meta = {
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.title": str(info.get("name", "concept erasure")),
        "ss_base_model_version": "sd_v1" if architecture == "stable-diffusion-v1" else architecture,
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
    with atomic_path(path) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)
    return path


def load_erasure(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an erasure file (safetensors only; validated before any tensor is read)."""
    metadata = check_safetensors(Path(path), "erasure file")
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


def module_deltas(state_dict: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Resolve kohya keys to this UNet's modules: {module name: (weight delta, bias delta or None)}."""
    by_key = {module_key(n): n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state_dict.items():
        for suffix in SUFFIXES:
            if k.endswith(suffix):
                groups.setdefault(k[: -len(suffix)], {})[suffix] = v
                break
    deltas = {}
    for key, parts in groups.items():
        if key not in by_key:
            raise ErasureInputError("erasure file", f"layer {key!r} does not exist in this model's UNet",
                                    "apply the file to the model family it was made for")
        name = by_key[key]
        weight = unet.get_submodule(name).weight
        if ".diff" in parts:
            dw = parts[".diff"].float()
        else:
            down, up = parts[".lora_down.weight"].float(), parts[".lora_up.weight"].float()
            rank = down.shape[0]
            alpha = float(parts.get(".alpha", torch.tensor(rank)))
            dw = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)) * (alpha / rank)
        if dw.numel() != weight.numel():
            raise ErasureInputError("erasure file", f"layer {key!r} has shape {tuple(dw.shape)} in the file but "
                                    f"{tuple(weight.shape)} in this model", "apply the file to the model it was made for")
        deltas[name] = (dw.reshape(weight.shape), parts.get(".diff_b"))
    return deltas


def apply_erasure(unet: nn.Module, state_dict: dict[str, torch.Tensor], strength: float = 1.0,
                  metadata: dict[str, str] | None = None) -> nn.Module:
    """A new UNet with the erasure merged in; `unet` itself is left untouched."""
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

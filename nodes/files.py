"""Save Erasure / Load Erasure: kohya-format .safetensors in ComfyUI's loras folder, so the core
LoraLoader (and A1111/Forge) can use the file as well."""
from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io, ui

import folder_paths
from erasure_core.backends import comfy as backend
from erasure_core.erasure_file import load_erasure, save_erasure
from erasure_core.errors import ErasureInputError

from .common import CATEGORY, ErasureLora


def erasure_files() -> list[str]:
    """safetensors files in the loras folders (other formats can run code when loaded: never offered)."""
    return [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


def target_path(prefix: str) -> Path:
    """<first loras folder>/<prefix>_NNNNN.safetensors, refusing paths that leave the folder."""
    root = Path(folder_paths.get_folder_paths("loras")[0]).resolve()
    prefix = (prefix or "").strip().removesuffix(".safetensors")
    if not prefix:
        raise ErasureInputError("filename_prefix", "is empty", "type a name such as 'erasures/no_dogs'")
    base = (root / prefix).resolve()
    if os.path.commonpath([root, base]) != str(root):
        raise ErasureInputError("filename_prefix", f"{prefix!r} points outside the loras folder",
                                "use a relative name without '..', e.g. 'erasures/no_dogs'")
    n = 1
    while (path := base.parent / f"{base.name}_{n:05d}.safetensors").exists():
        n += 1
    return path


class SaveErasure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_SaveErasure", display_name="Save Erasure", category=CATEGORY, is_output_node=True,
            description="Write an erasure into ComfyUI's loras folder as a kohya-format .safetensors (with metadata). "
                        "Load it later with Load Erasure or the core Load LoRA node. The write is atomic.",
            inputs=[io.LoraModel.Input("erasure", tooltip="The 'erasure' output of an Erase Concept node."),
                    io.String.Input("filename_prefix", default="erasures/erasure",
                                    tooltip="Name inside the loras folder; a counter is appended.")],
            outputs=[io.String.Output(display_name="lora_name", tooltip="The file's name in the loras folder.")])

    @classmethod
    def execute(cls, erasure, filename_prefix) -> io.NodeOutput:
        if not isinstance(erasure, ErasureLora):
            raise ErasureInputError("erasure", "this LORA_MODEL was not made by an Erase Concept node (no erasure "
                                    "metadata, and other trainers use other key names)",
                                    "save other LoRAs with the core Save LoRA node")
        path = save_erasure(target_path(filename_prefix), dict(erasure), erasure.metadata)
        root = Path(folder_paths.get_folder_paths("loras")[0]).resolve()
        name = path.relative_to(root).as_posix()
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name}"))


class LoadErasure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_LoadErasure", display_name="Load Erasure", category=CATEGORY,
            description="Apply a saved erasure (.safetensors only) to a MODEL; returns a new MODEL, the input is "
                        "unchanged. The file is checked before any tensor is read.",
            inputs=[io.Model.Input("model"),
                    io.Combo.Input("lora_name", options=erasure_files(), tooltip="An erasure file in the loras folder."),
                    io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                                   tooltip="1 = the erasure as trained; lower = partly; 0 = none.")],
            outputs=[io.Model.Output(display_name="MODEL"),
                     io.LoraModel.Output(display_name="erasure")])

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ErasureInputError("lora_name", f"{lora_name!r} is not in the loras folder",
                                    "refresh the node list (press R) and pick an existing file")
        tensors, metadata = load_erasure(path)
        backend.check_fingerprint(metadata, model, "lora_name")
        return io.NodeOutput(backend.patched_clone(model, tensors, float(strength)), ErasureLora(tensors, metadata))

"""Save Erasure / Load Erasure: kohya-format .safetensors in ComfyUI's loras folder, so the core
LoraLoader (and A1111/Forge) can use the file as well."""
from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io, ui

import folder_paths
from erasure_core.backends import comfy as backend
from erasure_core import checks
from erasure_core.erasure_file import load_erasure, save_erasure
from erasure_core.errors import ErasureInputError
from erasure_core.naming import is_portable, path_inside

from .common import CATEGORY, ErasureLora


def erasure_files() -> list[str]:
    """safetensors files in the loras folders (other formats can run code when loaded: never offered)."""
    return [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


def target_path(prefix: str) -> Path:
    """<loras folder>/<prefix>_NNNNN.safetensors by ComfyUI's own rules for a filename prefix (sub-folders
    allowed, nothing outside the folder), refusing a prefix that names the folder itself or leaves it."""
    root = os.path.realpath(folder_paths.get_folder_paths("loras")[0])
    prefix = (prefix or "").strip().removesuffix(".safetensors")
    fix = "use a name such as 'erasures/no_dogs' (sub-folders allowed, no '..')"
    if not prefix:
        raise ErasureInputError("filename_prefix", "is empty", fix)
    bad = checks.control_character(prefix)
    if bad:
        raise ErasureInputError("filename_prefix", f"contains the control character {bad}", fix)
    normal = os.path.normpath(prefix)
    parts = Path(normal).parts
    if os.path.isabs(prefix) or ".." in parts:
        raise ErasureInputError("filename_prefix", f"{prefix!r} points outside the loras folder", fix)
    if normal == ".":
        raise ErasureInputError("filename_prefix", f"{prefix!r} names the loras folder itself, not a file in it", fix)
    for part in parts:
        if not is_portable(part):
            raise ErasureInputError("filename_prefix", f"{part!r} is not a file name that works on every system "
                                    "(no \\ : * ? \" < > |, no trailing dot or space, not a reserved name like CON)", fix)
    try:  # ComfyUI's own rules for a prefix; it refuses folders outside the output folder with a bare Exception
        folder, filename, _, _, _ = folder_paths.get_save_image_path(prefix, root)
    except Exception:
        raise ErasureInputError("filename_prefix", f"{prefix!r} points outside the loras folder", fix) from None
    stem = f"{filename}_00001"
    n = 1
    while (path := path_inside(folder, f"{stem}.safetensors", "filename_prefix")).exists():
        n += 1
        stem = f"{filename}_{n:05d}"
    if os.path.commonpath([root, str(path)]) != root:  # a linked sub-folder that leads elsewhere
        raise ErasureInputError("filename_prefix", f"{prefix!r} points outside the loras folder", fix)
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
        root = Path(os.path.realpath(folder_paths.get_folder_paths("loras")[0]))
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

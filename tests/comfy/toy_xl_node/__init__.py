"""A test-only ComfyUI custom node: "Load XL Toy (tests)" gives an SDXL-architecture toy diffusers folder as MODEL,
CLIP and VAE.

ComfyUI's checkpoint loaders recognise SDXL only at full size (model_channels 320, ten-block transformers,
CLIP-L and bigG), so the server tests load the toy through this node instead: ComfyUI's own SDXL model and
CLIP classes holding the toy's weights (erasure_core.backends.comfy_toyworld). The server test links this folder
into custom_nodes/; it is not part of the pack.
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
if _REPO not in sys.path:
    sys.path.append(_REPO)


class LoadXLToy:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": ("STRING", {"default": ""})}}

    def load(self, folder):
        from pathlib import Path

        from erasure_core.backends.comfy_toyworld import build_vae, build_xl_clip, build_xl_model
        from erasure_core.model import load_diffusers_model

        toy = load_diffusers_model(folder)
        return (build_xl_model(toy.unet, toy.vae_scale),
                build_xl_clip(toy.text_encoder, toy.text_encoder_2, Path(folder) / "tokenizer"), build_vae(toy.vae))


NODE_CLASS_MAPPINGS = {"ConceptEraserTest_LoadXLToy": LoadXLToy}
NODE_DISPLAY_NAME_MAPPINGS = {"ConceptEraserTest_LoadXLToy": "Load XL Toy (tests)"}

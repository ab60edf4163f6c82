"""SDXL through the real ComfyUI server: the erase node on an SDXL-architecture toy's SDXL MODEL (ComfyUI's own
SDXL classes, from the test-only "Load XL Toy (tests)" node, tests/comfy/toy_xl_node), Save Erasure, then the saved
file through the core LoraLoader in a fresh graph draws what the erase node's MODEL drew."""
from __future__ import annotations

import numpy as np

SEED = 7


def draw(model_link: list, tag: str) -> dict:
    """KSampler at the toy's native latent size (EmptyLatentImage 128 px = 16x16 latents), SDXL's zeroed negative."""
    return {
        "t_pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red solid circle", "clip": ["toy", 1]}},
        "t_neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["toy", 1]}},
        "t_zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["t_neg", 0]}},
        "t_latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        f"{tag}_sample": {"class_type": "KSampler", "inputs": {
            "model": model_link, "seed": SEED, "steps": 8, "cfg": 1.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["t_pos", 0], "negative": ["t_zero", 0], "latent_image": ["t_latent", 0], "denoise": 1.0}},
        f"{tag}_decode": {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_sample", 0], "vae": ["toy", 2]}},
        f"{tag}_save": {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_decode", 0], "filename_prefix": tag}},
    }


def test_sdxl_erasure_through_the_server_and_core_lora_loader(comfy, toy_xl_dir):
    assert "ConceptEraserTest_LoadXLToy" in comfy.object_info, comfy.log.read_text()[-2000:]
    erase = {
        "toy": {"class_type": "ConceptEraserTest_LoadXLToy", "inputs": {"folder": str(toy_xl_dir)}},
        "erase": {"class_type": "ConceptEraser_EraseCG", "inputs": {
            "model": ["toy", 0], "clip": ["toy", 1], "concept": "red", "alternative": "blue",
            "preserve": "a blue solid square", "templates": "a {} solid circle", "steps": 4, "learning_rate": 5e-3,
            "rank": 0, "parameter_group": "cross_attn", "batch_size": 2, "sampling_steps": 2, "image_size": 64,
            "seed": 0, "trajectories_per_prompt": 1, "drift_weight": 1.0}},
        "save": {"class_type": "ConceptEraser_SaveErasure", "inputs": {"erasure": ["erase", 1],
                                                                       "filename_prefix": "erasures/xl_server"}},
        **draw(["erase", 0], "xl_erased"), **draw(["toy", 0], "xl_original"),
    }
    entry = comfy.run(erase)
    erased, original = comfy.images(entry, "xl_erased_save")[0], comfy.images(entry, "xl_original_save")[0]
    assert np.abs(erased - original).mean() > 0.5, "the erased SDXL MODEL draws something else"
    saved = entry["outputs"]["save"]
    files = list((comfy.base / "models/loras/erasures").glob("xl_server_*.safetensors"))
    assert len(files) == 1, (files, saved)
    name = f"erasures/{files[0].name}"
    comfy.object_info = comfy.get("/object_info")  # the new file is now in LoraLoader's list
    fresh = {
        "toy": {"class_type": "ConceptEraserTest_LoadXLToy", "inputs": {"folder": str(toy_xl_dir)}},
        "lora": {"class_type": "LoraLoader", "inputs": {"model": ["toy", 0], "clip": ["toy", 1], "lora_name": name,
                                                        "strength_model": 1.0, "strength_clip": 0.0}},
        **draw(["lora", 0], "xl_lora"),
    }
    loaded = comfy.images(comfy.run(fresh), "xl_lora_save")[0]
    assert np.abs(loaded - erased).max() <= 2, "the core LoraLoader applies exactly the erase node's change"

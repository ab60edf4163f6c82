"""SDXL in ComfyUI, headless: an SDXL-architecture toy in ComfyUI's own SDXL model and CLIP classes, the pack's nodes
run on it, and the saved file read by the core LoraLoader, Load Erasure and the diffusers backend."""
from __future__ import annotations

import pytest
import torch

from test_comfy_headless import weights_hash

PROMPT = "a red solid circle"
# Small but real: each erasure takes seconds on one core. image_size 32 is the toy's native size (the toy VAE halves the side).
FAST = dict(preserve="a blue solid square", templates="a {} solid circle", steps=3, learning_rate=2e-3, rank=0,
            batch_size=2, sampling_steps=2, image_size=32, seed=0)


def api(patcher, clip, vae=None):
    from erasure_core.backends.comfy import ComfyModel

    return ComfyModel(patcher, clip, vae, image_size=32)


def eps(patcher, clip, vae, prompts=(PROMPT, ""), seed: int = 1) -> torch.Tensor:
    """The MODEL's noise prediction for `prompts` at a fixed x_t and t (through ComfyUI's conditioning)."""
    model = api(patcher, clip, vae)
    x = torch.randn((len(prompts), *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.predict_noise(model.unet, x, torch.tensor([200, 700][:len(prompts)]), model.encode_text(list(prompts)))


def run_cg(pack, model, clip, **overrides):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return pack["ConceptEraser_EraseCG"].execute(model=model, clip=clip, concept="red", alternative="blue",
                                                     **{**FAST, **overrides}, trajectories_per_prompt=1,
                                                     drift_weight=1.0, parameter_group="cross_attn")


def test_comfy_sdxl_conditioning_and_noise_match_diffusers(tiny_xl, toy_xl_model):
    """ComfyUI's SDXL CLIP and encode_adm give the diffusers pipeline's conditioning (the empty prompt zeroed in
    both), and the SDXL MODEL the same noise prediction."""
    model, clip, vae = tiny_xl
    comfy_api, ref = api(model, clip, vae), toy_xl_model
    assert comfy_api.latent_shape == ref.latent_shape
    prompts = [PROMPT, "", "a disc, striped"]
    mine, theirs = comfy_api.encode_text(prompts), ref.encode_text(prompts)
    assert torch.allclose(mine["context"], theirs["context"], atol=1e-5)
    assert mine["context"][1].abs().max() == 0 and theirs["context"][1].abs().max() == 0
    x = torch.randn((3, *ref.latent_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 400, 990])
    with torch.no_grad():
        ours, want = comfy_api.predict_noise(comfy_api.unet, x, t, mine), ref.predict_noise(ref.unet, x, t, theirs)
    assert (ours - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(comfy_api.encode_images(images), ref.encode_images(images), atol=1e-5)


def test_sdxl_erasure_saved_loads_in_core_lora_loader_with_the_same_effect(pack, tiny_xl, toy_xl_model):
    """Erase on an SDXL MODEL; Save Erasure writes kohya's SDXL layout; the core LoraLoader, Load Erasure and the
    diffusers backend all turn the file into the erase node's MODEL. The input MODEL is never changed."""
    import folder_paths
    import nodes as comfy_nodes

    from erasure_core.erasure_file import apply_erasure, load_erasure, unet_fingerprint

    model, clip, vae = tiny_xl
    before_hash, before = weights_hash(model), eps(model, clip, vae)
    erased, lora, loss = run_cg(pack, model, clip, rank=2).args
    assert len(loss["loss"]) == FAST["steps"] and erased.patches and not model.patches
    assert weights_hash(model) == before_hash and torch.equal(eps(model, clip, vae), before)
    assert lora and all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
                        for k in lora), "kohya's SDXL (ldm) layer names"
    assert any("_transformer_blocks_" in k and "_attn2_" in k for k in lora)
    want = eps(erased, clip, vae)
    assert (want - before).abs().max() > 1e-4, "the erasure changes the prediction"
    with torch.inference_mode():
        name = pack["ConceptEraser_SaveErasure"].execute(erasure=lora, filename_prefix="erasures/xl_red").args[0]
    tensors, meta = load_erasure(folder_paths.get_full_path("loras", name))
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["concept_eraser.unet_fingerprint"] == unet_fingerprint(toy_xl_model.unet)
    with torch.inference_mode():
        core = comfy_nodes.LoraLoader().load_lora(model, clip, name, 1.0, 0.0)[0]
        loaded = pack["ConceptEraser_LoadErasure"].execute(model=model, lora_name=name, strength=1.0).args[0]
    assert torch.allclose(eps(core, clip, vae), want, atol=1e-5), "core LoraLoader: the same MODEL as the erase node's"
    assert torch.allclose(eps(loaded, clip, vae), want, atol=1e-5)
    # The diffusers backend applies the same file (ldm names mapped onto diffusers modules) to the same effect.
    ref = toy_xl_model
    merged = apply_erasure(ref.unet, tensors, metadata=meta)
    x = torch.randn((2, *ref.latent_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = ref.predict_noise(merged, x, torch.tensor([200, 700]), ref.encode_text([PROMPT, ""]))
    assert torch.allclose(theirs, want, atol=1e-4)


def test_sdxl_dt_node_and_compare(pack, tiny_xl):
    model, clip, vae = tiny_xl
    before = weights_hash(model)
    with torch.inference_mode():
        erased, lora, loss = pack["ConceptEraser_EraseDT"].execute(
            model=model, clip=clip, vae=vae, concept="circle", **FAST, parameter_group="cross_attn", grid=4,
            images_per_prompt=1).args
        grid, after = pack["ConceptEraser_Compare"].execute(
            original=model, erased=erased, clip=clip, vae=vae, prompts="a red solid circle\na blue solid square",
            seed=0, steps=2, cfg=1.5, sampler_name="euler", scheduler="normal", image_size=32).args
    assert len(loss["loss"]) == FAST["steps"] and erased.patches and weights_hash(model) == before
    assert after.shape == (2, 32, 32, 3) and grid.shape == (1, 2 * 32 + 4, 2 * 32 + 4, 3)


def tiny_model(config_class, unet_config: dict):
    """A real ComfyUI MODEL of another architecture, at toy size (random weights: it is only refused)."""
    import comfy.model_patcher

    model_config = config_class(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_other_architectures_are_refused_by_name(pack, tiny_xl):
    """SD3, Flux and the SDXL refiner (ComfyUI's own model classes) get an error naming the model type and what is
    supported, before any work."""
    import comfy.supported_models

    from erasure_core.errors import ErasureInputError

    _, clip, _ = tiny_xl
    flux = tiny_model(comfy.supported_models.Flux, dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64,
        mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, qkv_bias=True,
        guidance_embed=False, patch_size=2))
    sd3 = tiny_model(comfy.supported_models.SD3, dict(
        in_channels=16, out_channels=16, patch_size=2, depth=1, num_patches=64, pos_embed_max_size=8,
        adm_in_channels=32, context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32,
                                                                                             "out_features": 64}}))
    refiner = tiny_model(comfy.supported_models.SDXLRefiner, dict(
        image_size=32, model_channels=32, use_linear_in_transformer=True, context_dim=64, adm_in_channels=32 + 4 * 256,
        in_channels=4, out_channels=4, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
        transformer_depth_output=[1, 1], transformer_depth_middle=1, num_classes="sequential", num_head_channels=8,
        use_spatial_transformer=True, legacy=False, use_temporal_attention=False, use_temporal_resblock=False))
    for patcher, name in ((flux, "Flux"), (sd3, "SD3"), (refiner, "SDXLRefiner")):
        with pytest.raises(ErasureInputError, match=rf"model: a {name} model is not a Stable Diffusion 1.x/2.x or SDXL"):
            run_cg(pack, patcher, clip)

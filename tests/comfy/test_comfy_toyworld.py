"""The toy world and its ControlNet as ComfyUI objects (erasure_core.backends.comfy_toyworld): each part
computes what its diffusers original computes, and the pack's toy-world nodes hand them to the graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def parts(comfy_env, toy_diffusers):
    from erasure_core.backends import comfy_toyworld
    from erasure_core.controlnet import load_controlnet
    from erasure_core.toyworld import CONTROLNET_DIR, MODEL_DIR

    return {"model": comfy_toyworld.build_model(toy_diffusers.unet, toy_diffusers.vae_scale),
            "clip": comfy_toyworld.build_clip(toy_diffusers.text_encoder, MODEL_DIR / "tokenizer"),
            "vae": comfy_toyworld.build_vae(toy_diffusers.vae),
            "diffusers_controlnet": (cn := load_controlnet(CONTROLNET_DIR)),
            "controlnet": comfy_toyworld.build_controlnet(cn)}


def test_clip_encodes_as_the_toy_text_encoder(parts, toy_diffusers):
    prompts = ["a red striped circle", "green cross, solid", "a square that is blue and dotted", ""]
    clip = parts["clip"]
    mine = torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(p))[0][0] for p in prompts])
    assert torch.allclose(mine, toy_diffusers.encode_text(prompts), atol=1e-5)


def test_vae_and_unet_compute_as_the_diffusers_ones(parts, toy_diffusers):
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    decoded = parts["vae"].decode(latents / toy_diffusers.vae_scale).permute(0, 3, 1, 2)
    assert torch.allclose(decoded, toy_diffusers.decode_latents(latents), atol=1e-5)
    model = parts["model"].model
    assert model.latent_format.scale_factor == toy_diffusers.vae_scale
    t, ctx = torch.tensor([100, 700]), toy_diffusers.encode_text(["a red circle", "a blue square"])
    with torch.no_grad():
        assert torch.allclose(model.diffusion_model(latents, t.float(), context=ctx),
                              toy_diffusers.unet(latents, t, ctx).sample, atol=1e-5)


def test_controlnet_computes_as_the_diffusers_one(parts, toy_diffusers):
    gen = torch.Generator().manual_seed(1)
    x, hint = torch.randn(2, 4, 16, 16, generator=gen), torch.rand(2, 3, 128, 128, generator=gen)
    t, ctx = torch.tensor([50, 900]), toy_diffusers.encode_text(["a red circle", ""])
    with torch.no_grad():
        down, mid = parts["diffusers_controlnet"](x, t, encoder_hidden_states=ctx, controlnet_cond=hint,
                                                  return_dict=False)
        mine = parts["controlnet"].control_model(x, hint, t.float(), ctx)
    assert len(mine["output"]) == len(down)
    for a, b in zip(mine["output"] + mine["middle"], list(down) + [mid]):
        assert torch.allclose(a, b, atol=1e-5)
    assert any(d.abs().max() > 0 for d in down), "the shipped ControlNet is trained (its zero convs moved)"


def test_apply_erasure_to_controlnet_node_computes_as_the_library(parts, toy_diffusers, pack):
    """The node's CONTROL_NET, once ComfyUI patches it, computes what erasure_core.controlnet.erase_controlnet's
    diffusers ControlNet computes; the CONTROL_NET passed in stays as it was."""
    from erasure_core.controlnet import erase_controlnet
    from erasure_core.methods.uce import UCEConfig, erase_uce

    erasure = erase_uce(toy_diffusers, UCEConfig(concepts=["circle"], alternatives=["square"])).state_dict
    gen = torch.Generator().manual_seed(2)
    x, hint = torch.randn(2, 4, 16, 16, generator=gen), torch.rand(2, 3, 128, 128, generator=gen)
    t, ctx = torch.tensor([50, 900]), toy_diffusers.encode_text(["a red solid circle", "a blue solid square"])
    original = parts["controlnet"]
    with torch.no_grad():
        before = original.control_model(x, hint, t.float(), ctx)["output"]
        down, _ = erase_controlnet(parts["diffusers_controlnet"], erasure)(
            x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        erased = pack["ConceptEraser_EraseControlNet"].execute(parts["model"], original, erasure, 1.0).result[0]
        assert erased is not original and not original.control_model_wrapped.patches
        erased.control_model_wrapped.patch_model()
        try:
            mine = erased.control_model(x, hint, t.float(), ctx)["output"]
        finally:
            erased.control_model_wrapped.unpatch_model()
        after_unpatch = original.control_model(x, hint, t.float(), ctx)["output"]
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(mine, before)), "the erasure changed it"
    for a, b in zip(mine, down):
        assert torch.allclose(a, b, atol=1e-4)
    for a, b in zip(after_unpatch, before):
        assert torch.equal(a, b)


def test_toy_nodes(pack):
    from erasure_core.toyworld.control import control_image
    from erasure_core.toyworld.draw import Placement

    model, clip, vae = pack["ConceptEraser_ToyWorldLoader"].execute().result
    assert vae.downscale_ratio == 2 and model.model.latent_format.scale_factor > 1
    cnet = pack["ConceptEraser_ToyControlNetLoader"].execute().result[0]
    assert type(cnet).__name__ == "ControlNet"
    image = pack["ConceptEraser_ToyControlImage"].execute("outline", "square", 12.0, 18.0, 10.0, 0.1).result[0]
    assert image.shape == (1, 32, 32, 3)
    assert np.array_equal(image[0].numpy(), control_image("outline", "square", Placement(12.0, 18.0, 10.0, 0.1)))


def test_audit_node_on_the_toy_world(pack):
    """Audit Erasure in the graph: the toy world's MODEL as original and as erased (a CG erasure node's output),
    attacked through ComfyUI's own CLIP by the soft prompt (gradients through its token embeddings)."""
    model, clip, vae = pack["ConceptEraser_ToyWorldLoader"].execute().result
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        erased = pack["ConceptEraser_EraseCG"].execute(
            model=model, clip=clip, concept="circle", alternative="", templates="a red solid {}", preserve="",
            steps=2, learning_rate=5e-4, rank=0, batch_size=2, sampling_steps=3, image_size=32, seed=0,
            trajectories_per_prompt=1, drift_weight=1.0, parameter_group="cross_attn").args[0]
        out = pack["ConceptEraser_Audit"].execute(
            original=model, erased=erased, clip=clip, vae=vae, concept="circle", attack="soft_prompt", steps=2, tokens=1,
            templates="a red solid {}\na blue dotted {}", neutral="square\ntriangle", images_per_template=2,
            sampling_steps=3, cfg=1.5, image_size=32, seed=0)
    asr, images, found, conditioning = out.args
    assert 0.0 <= asr <= 1.0 and asr * 4 == round(asr * 4)  # 2 templates x 2 held-out seeds
    assert tuple(images.shape) == (4, 32, 32, 3) and "ASR" in found and "diffusion classifier" in found
    typed = clip.encode_from_tokens(clip.tokenize("a red solid circle"))
    assert conditioning[0][0].shape == typed.shape  # one prompt, as ComfyUI's own CLIP encodes text
    assert out.ui is not None

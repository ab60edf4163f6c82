"""SDXL in the webui backend: a real ldm UNet holding an SDXL-architecture toy's weights behind A1111's SDXL contract.

The UNet is ComfyUI's ldm UNetModel (the layout of A1111's sgm and of Forge), or with SGM_DIR set to a
generative-models checkout (A1111's repositories/generative-models) sgm's own UNetModel. The rest of the
stand-in does what A1111's `modules/sd_models_xl.py` does: `get_learned_conditioning(SdConditioning)` ->
{"crossattn", "vector"}, the empty negative prompt zeroed, the sizes embedded at 256 per number; the toy's
diffusers text encoders and VAE do the encoding. Skips without ComfyUI (and the sgm case without SGM_DIR).
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from erasure_core.errors import ErasureInputError

PROMPTS = ["a red solid circle", "", "a blue striped square"]
SIZE = 128  # the webui's latents are image_size / 8: 16x16, the toy's native latent size


def diffusers_conditioning(toy, prompts):
    """The diffusers model's conditioning with the sizes the webui is asked for (SIZE, not the toy's 32 px)."""
    from erasure_core.conditioning import Conditioning

    cond = toy.encode_text(prompts)
    sizes = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).expand(len(prompts), -1)
    return Conditioning(context=cond["context"], pooled=cond["pooled"], time_ids=sizes)


def ldm_state_dict(diffusers_unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet's weights under ldm names (erasure_core.layouts, checked against ComfyUI's own map below)."""
    from erasure_core.layouts import file_layer_name

    rename = file_layer_name(diffusers_unet)
    out = {}
    for key, value in diffusers_unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        out[f"{rename(module)}.{leaf}"] = value
    return out


def ldm_config(d) -> dict:
    """UNetModel keyword arguments (ComfyUI's and sgm's share them) for the XL toy's diffusers config."""
    levels = len(d.block_out_channels)
    depth = list(d.transformer_layers_per_block)
    attn = [t.startswith("CrossAttn") for t in d.down_block_types]
    return dict(in_channels=4, out_channels=4, model_channels=d.block_out_channels[0], num_res_blocks=d.layers_per_block,
                channel_mult=[c // d.block_out_channels[0] for c in d.block_out_channels],
                attention_resolutions=[2 ** i for i in range(levels) if attn[i]], num_head_channels=8,
                transformer_depth=[depth[i] if attn[i] else 0 for i in range(levels)], context_dim=d.cross_attention_dim,
                num_classes="sequential", adm_in_channels=d.projection_class_embeddings_input_dim,
                use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False)


def comfy_unet(config: dict):
    from comfy_paths import import_comfy

    reason = import_comfy()
    if reason:
        pytest.skip(reason)
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    levels = len(config["channel_mult"])
    depth, n = config["transformer_depth"], config["num_res_blocks"]
    comfy_config = {k: v for k, v in config.items() if k != "attention_resolutions"}
    comfy_config.update(image_size=16, num_res_blocks=[n] * levels, transformer_depth=[d for d in depth for _ in range(n)],
                        transformer_depth_output=[d for d in depth for _ in range(n + 1)], transformer_depth_middle=depth[-1])
    return UNetModel(**comfy_config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)


def sgm_unet(config: dict):
    root = os.environ.get("SGM_DIR")
    if not root or not Path(root, "sgm", "modules", "diffusionmodules", "openaimodel.py").exists():
        pytest.skip("SGM_DIR is not set to a generative-models checkout (A1111's repositories/generative-models)")
    pytest.importorskip("omegaconf")
    pytest.importorskip("einops")
    for name in ("sgm", "sgm.modules", "sgm.modules.diffusionmodules"):  # their __init__s import lightning, open_clip
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(Path(root, *name.split(".")))]
            sys.modules[name] = package
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**config)


class SdConditioning(list):
    """A1111's modules.prompt_parser.SdConditioning: the prompts, the image size and whether they are negative."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        self.is_negative_prompt, self.width, self.height = is_negative_prompt, width, height


class FakeSDXLWebui:
    """What A1111's sgm DiffusionEngine offers the backend (modules/sd_models_xl.py), over a real ldm UNet."""

    is_sdxl = True
    parameterization = "eps"

    def __init__(self, unet, toy):
        self.model = SimpleNamespace(diffusion_model=unet)
        self.toy = toy
        self.alphas_cumprod = toy.alphas_cumprod.clone()
        self.conditioner = SimpleNamespace(embedders=[SimpleNamespace(input_key=k) for k in (
            "txt", "txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")])

    @torch.inference_mode()  # outputs are inference tensors, as in the webui
    def get_learned_conditioning(self, batch):
        width, height = getattr(batch, "width", 1024) or 1024, getattr(batch, "height", 1024) or 1024
        context, _, pooled, _ = self.toy.pipeline().encode_prompt(list(batch), device=torch.device("cpu"),
                                                                  do_classifier_free_guidance=False)
        if getattr(batch, "is_negative_prompt", False) and all(x == "" for x in batch):  # force_zero_embeddings
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        sizes = torch.tensor([[height, width, 0, 0, height, width]] * len(batch), dtype=torch.float32)
        embedded = self.toy.unet.add_time_proj(sizes.flatten()).reshape(len(batch), -1)  # 256 per number
        return {"crossattn": context, "vector": torch.cat([pooled, embedded], dim=1)}

    def encode_first_stage(self, x):  # sgm: already scaled
        return self.toy.vae.encode(x).latent_dist.mean * self.toy.vae_scale

    def get_first_stage_encoding(self, x):  # A1111 makes it the identity for SDXL
        return x

    def decode_first_stage(self, z):
        return self.toy.vae.decode(z / self.toy.vae_scale).sample


@pytest.fixture(params=["comfy", "forge", "sgm"])
def webui_xl(request, toy_xl_model, monkeypatch):
    """(the webui model stand-in, its ldm UNet) with the XL toy's weights; SdConditioning where the webui has it.
    "forge": the ldm UNet with a `config` of its ldm arguments, as Forge's IntegratedUNet2DConditionModel registers
    them through diffusers' ConfigMixin (its family and layer names must still be read as an ldm UNet's)."""
    from diffusers.configuration_utils import FrozenDict

    config = ldm_config(toy_xl_model.unet.config)
    unet = sgm_unet(config) if request.param == "sgm" else comfy_unet(config)
    if request.param == "forge":
        unet.config = FrozenDict(config)
    unet.load_state_dict(ldm_state_dict(toy_xl_model.unet), strict=True)
    unet.eval().requires_grad_(False)
    monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.setitem(sys.modules, "modules.prompt_parser", SimpleNamespace(SdConditioning=SdConditioning))
    return FakeSDXLWebui(unet, toy_xl_model), unet


def test_webui_sdxl_conditioning_and_noise_match_diffusers(webui_xl, toy_xl_model):
    from erasure_core.backends.webui import model_from_webui

    sd_model, unet = webui_xl
    model = model_from_webui(sd_model, image_size=SIZE)
    assert model.latent_shape == toy_xl_model.latent_shape and not model.v_prediction
    mine, theirs = model.encode_text(PROMPTS), diffusers_conditioning(toy_xl_model, PROMPTS)
    assert not mine["context"].is_inference()
    assert torch.allclose(mine["context"], theirs["context"], atol=1e-6)
    assert mine["context"][1].abs().max() == 0, "the empty prompt is zeros, by the webui's own negative-prompt rule"
    x = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 400, 990])
    with torch.no_grad():
        ours, want = model.predict_noise(unet, x, t, mine), toy_xl_model.predict_noise(toy_xl_model.unet, x, t, theirs)
    assert (ours - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_webui_sdxl_erasure_saved_for_the_lora_networks(webui_xl, toy_xl_model, tmp_path):
    """A short erasure from the loaded SDXL model; the file has kohya's SDXL keys, which A1111's Lora network maps
    by `key.replace("lora_unet", "diffusion_model")` onto the model's modules, and the diffusers backend applies it
    to the same effect as the trained copy."""
    from safetensors.torch import load_file, save_file

    from erasure_core import erasure_file
    from erasure_core.backends.webui import file_fingerprint, merge_into_checkpoint, model_from_webui, save_to_lora_dir
    from erasure_core.methods.cg import CGConfig, erase_cg

    sd_model, unet = webui_xl
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    model = model_from_webui(sd_model, image_size=SIZE)
    config = CGConfig(concepts=["red"], alternatives=["blue"], steps=3, rank=2, lr=2e-3, sample_steps=2,
                      trajectories_per_prompt=1, batch_size=2, templates=["a {} solid circle"],
                      preserve_prompts=["a blue solid square"])
    result = erase_cg(model, config)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items()), "the loaded model is never written to"
    path = save_to_lora_dir(result, unet, tmp_path / "Lora", "toy-xl", file_fingerprint(unet))
    tensors, meta = erasure_file.load_erasure(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["concept_eraser.unet_fingerprint"] == erasure_file.unet_fingerprint(toy_xl_model.unet)
    wrapper_modules = {f"diffusion_model_{n}".replace(".", "_") for n, _ in unet.named_modules()}
    keys = {erasure_file.split_key(k)[0] for k in tensors}
    assert keys and all(k.startswith("lora_unet_input_blocks_") or k.startswith("lora_unet_middle_block_")
                        or k.startswith("lora_unet_output_blocks_") for k in keys)
    assert {k.replace("lora_unet", "diffusion_model") for k in keys} <= wrapper_modules  # A1111 networks.py's rule
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 800])
    with torch.no_grad():
        tuned = model.predict_noise(result.tuned_unet, x, t, model.encode_text(PROMPTS[:2]))
        merged = erasure_file.apply_erasure(toy_xl_model.unet, tensors, metadata=meta)
        theirs = toy_xl_model.predict_noise(merged, x, t, diffusers_conditioning(toy_xl_model, PROMPTS[:2]))
    assert torch.allclose(tuned, theirs, atol=1e-4)
    # merged into a single-file checkpoint (ldm keys) as the tab offers
    ckpt = tmp_path / "toy_xl.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in before.items()}, str(ckpt))
    out = load_file(str(merge_into_checkpoint(ckpt, result.state_dict, unet, tmp_path / "toy_xl_erased.safetensors")))
    changed = {k for k in out if not torch.equal(out[k], load_file(str(ckpt))[k])}
    assert changed and all("attn2" in k for k in changed)


def test_webui_sdxl_v_prediction_is_converted(webui_xl):
    from erasure_core.backends.webui import model_from_webui

    sd_model, unet = webui_xl
    sd_model.parameterization = "v"  # A1111: VScaling denoiser (v-prediction SDXL fine-tunes)
    model = model_from_webui(sd_model, image_size=SIZE)
    assert model.v_prediction
    x, t = torch.randn(1, *model.latent_shape), torch.tensor([600])
    c = model.encode_text(PROMPTS[:1])
    with torch.no_grad():
        v = unet(x, timesteps=t, context=c["context"], y=c["y"])
        a = model.alphas_cumprod[600]
        assert torch.allclose(model.predict_noise(unet, x, t, c), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-6)


@pytest.mark.parametrize("model, words", [
    (SimpleNamespace(is_sdxl=True, conditioner=SimpleNamespace(embedders=[SimpleNamespace(input_key="aesthetic_score")])),
     "SDXL refiner"),
    (type("StableDiffusionXLRefiner", (), {"is_sdxl": True})(), "SDXL refiner"),
    (SimpleNamespace(is_sd3=True), "SD3"),
    (SimpleNamespace(is_flux=True), "Flux"),
    (SimpleNamespace(is_sdxl=True, is_sdxl_inpaint=True), "SDXL inpainting"),
    (SimpleNamespace(is_sdxl=True, parameterization="edm"), "prediction type 'edm'"),
    (SimpleNamespace(is_sd2=True), "SD2"),
])
def test_webui_refusals_name_the_architecture(model, words):
    from erasure_core.backends.webui import check_supported

    with pytest.raises(ErasureInputError) as err:
        check_supported(model)
    assert words in str(err.value) and err.value.fix

"""Loading is offline only: a missing local config is a clear error, never a download."""

import pytest
import torch
from safetensors.torch import save_file

from erasure_core.errors import ErasureInputError
from erasure_core.model import load_diffusers_model


def test_missing_path(tmp_path):
    with pytest.raises(ErasureInputError, match="model: .* does not exist"):
        load_diffusers_model(tmp_path / "nope")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ErasureInputError, match="model_index.json"):
        load_diffusers_model(tmp_path)


def test_single_file_without_config_is_refused_before_any_download(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(ckpt))
    with pytest.raises(ErasureInputError, match="config: .*local diffusers folder"):
        load_diffusers_model(ckpt)


def test_pickle_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ErasureInputError, match="never opened"):
        load_diffusers_model(ckpt)


def ldm_unet_and_vae(model) -> dict[str, torch.Tensor]:
    """A diffusers model's UNet and VAE in the single-file ldm layout (ComfyUI's own key maps do the renaming)."""
    import comfy.utils

    from erasure_core.backends.comfy_toyworld import ldm_vae_state_dict, unet_config_for

    unet_keys = comfy.utils.unet_to_diffusers(unet_config_for(dict(model.unet.config)))  # diffusers name -> ldm name
    sd = {f"model.diffusion_model.{unet_keys[k]}": v for k, v in model.unet.state_dict().items()}
    return sd | {f"first_stage_model.{k}": v for k, v in ldm_vae_state_dict(model.vae).items()}


def text_model_keys(encoder) -> dict[str, torch.Tensor]:
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
            for k, v in encoder.state_dict().items()}  # either transformers layout


def ldm_checkpoint_of(model) -> dict[str, torch.Tensor]:
    """A diffusers model's weights in the single-file ldm layout that A1111, Forge and ComfyUI save
    (ComfyUI's own key maps do the renaming; ComfyUI and tests/comfy must be importable)."""
    sd = ldm_unet_and_vae(model)
    sd |= {f"cond_stage_model.transformer.{k}": v for k, v in text_model_keys(model.text_encoder).items()}
    return {k: v.contiguous() for k, v in sd.items()}


def xl_ldm_checkpoint_of(model) -> dict[str, torch.Tensor]:
    """An SDXL diffusers model's weights in the single-file sgm layout, the text encoders written by ComfyUI's own
    SDXL checkpoint saver (CLIP-L as it is under conditioner.embedders.0, bigG in OpenCLIP's layout under
    conditioner.embedders.1.model)."""
    import comfy.supported_models

    clip = {f"clip_l.transformer.{k}": v for k, v in text_model_keys(model.text_encoder).items()}
    clip |= {f"clip_g.transformer.{k}": v for k, v in text_model_keys(model.text_encoder_2).items()}
    saved = comfy.supported_models.SDXL({}).process_clip_state_dict_for_saving(clip)
    saved.pop("conditioner.embedders.0.transformer.text_model.embeddings.position_ids")  # CLIP's 77; the toy has 16
    return {k: v.contiguous() for k, v in (ldm_unet_and_vae(model) | saved).items()}


def single_file_round_trip(tmp_path, monkeypatch, model, to_checkpoint, config, parts: tuple[str, ...]):
    """`model` written as one .safetensors by `to_checkpoint` (a function above; ComfyUI's key maps), loaded back with
    `config` as its architecture: every part's weights must come back as they were. Returns the loaded model."""
    from comfy_paths import REPO, import_comfy

    reason = import_comfy()
    if reason:
        pytest.skip(reason)
    monkeypatch.syspath_prepend(str(REPO / "tests" / "comfy"))
    ckpt = tmp_path / "single-file.safetensors"
    save_file(to_checkpoint(model), str(ckpt))
    single = load_diffusers_model(ckpt, config=config)
    for part in parts:
        mine, theirs = getattr(single, part).state_dict(), getattr(model, part).state_dict()
        assert mine.keys() == theirs.keys(), part
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part
    return single


def test_single_file_checkpoint_loads_as_its_diffusers_folder(tmp_path, toy_model, monkeypatch):
    """The toy model saved as one ldm-layout .safetensors, loaded with the toy folder as its config: offline,
    the same weights in every component and the same noise prediction as the folder."""
    from erasure_core.toyworld import MODEL_DIR

    single = single_file_round_trip(tmp_path, monkeypatch, toy_model, ldm_checkpoint_of, MODEL_DIR,
                                    ("unet", "vae", "text_encoder"))
    x = torch.randn(2, *toy_model.latent_shape, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.tensor([100, 700]), toy_model.encode_text(["a red circle", "a blue square"])
    assert torch.equal(single.encode_text(["a red circle", "a blue square"]), ctx)
    with torch.no_grad():
        assert torch.equal(single.predict_noise(single.unet, x, t, ctx), toy_model.predict_noise(toy_model.unet, x, t, ctx))


def test_sdxl_single_file_checkpoint_loads_as_its_diffusers_folder(tmp_path, toy_xl_model, toy_xl_dir, monkeypatch):
    """An SDXL-architecture toy saved as one sgm-layout .safetensors (what ComfyUI, A1111 and Forge save for SDXL),
    loaded with its folder as the config: offline, the same weights and the same conditioning and noise."""
    from erasure_core.model import DiffusersXLModel

    single = single_file_round_trip(tmp_path, monkeypatch, toy_xl_model, xl_ldm_checkpoint_of, toy_xl_dir,
                                    ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert isinstance(single, DiffusersXLModel)
    prompts = ["a red circle", "", "a blue square"]
    x = torch.randn(3, *toy_xl_model.latent_shape, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.tensor([100, 400, 700]), toy_xl_model.encode_text(prompts)
    assert torch.allclose(single.encode_text(prompts)["context"], ctx["context"], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(single.predict_noise(single.unet, x, t, ctx), toy_xl_model.predict_noise(
            toy_xl_model.unet, x, t, ctx), atol=1e-6)

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


def ldm_checkpoint_of(model) -> dict[str, torch.Tensor]:
    """A diffusers model's weights in the single-file ldm layout that A1111, Forge and ComfyUI save
    (ComfyUI's own key maps do the renaming; ComfyUI and tests/comfy must be importable)."""
    import comfy.utils

    from erasure_core.backends.comfy_toyworld import ldm_vae_state_dict, unet_config_for

    unet_keys = comfy.utils.unet_to_diffusers(unet_config_for(dict(model.unet.config)))  # diffusers name -> ldm name
    sd = {f"model.diffusion_model.{unet_keys[k]}": v for k, v in model.unet.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in ldm_vae_state_dict(model.vae).items()}
    text = {k.removeprefix("text_model."): v for k, v in model.text_encoder.state_dict().items()}  # either transformers
    sd |= {f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.items()}
    return {k: v.contiguous() for k, v in sd.items()}


def test_single_file_checkpoint_loads_as_its_diffusers_folder(tmp_path, toy_model, monkeypatch):
    """The toy model saved as one ldm-layout .safetensors, loaded with the toy folder as its config: offline,
    the same weights in every component and the same noise prediction as the folder."""
    from comfy_paths import REPO, import_comfy

    reason = import_comfy()
    if reason:
        pytest.skip(reason)
    from erasure_core.toyworld import MODEL_DIR

    monkeypatch.syspath_prepend(str(REPO / "tests" / "comfy"))
    ckpt = tmp_path / "toy-single-file.safetensors"
    save_file(ldm_checkpoint_of(toy_model), str(ckpt))
    single = load_diffusers_model(ckpt, config=MODEL_DIR)
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(single, part).state_dict(), getattr(toy_model, part).state_dict()
        assert mine.keys() == theirs.keys(), part
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part
    x = torch.randn(2, *toy_model.latent_shape, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.tensor([100, 700]), toy_model.encode_text(["a red circle", "a blue square"])
    assert torch.equal(single.encode_text(["a red circle", "a blue square"]), ctx)
    with torch.no_grad():
        assert torch.equal(single.predict_noise(single.unet, x, t, ctx), toy_model.predict_noise(toy_model.unet, x, t, ctx))

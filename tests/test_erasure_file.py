"""The result file: kohya keys, metadata, and load-apply reproducing the tuned model exactly."""
import pytest
import torch
from safetensors import safe_open

from erasure_core.erasure_file import apply_erasure, load_erasure, module_key
from erasure_core.errors import ErasureCancelled, ErasureInputError
from erasure_core.methods.dt import DTConfig, erase_dt


def _quick_dt(model, **kw):
    options = dict(concepts=["circle"], templates=["a red solid {}"], steps=3, lr=1e-3, batch_size=2,
                   images_per_prompt=1, preserve_images_per_prompt=1, sample_steps=4, preserve_prompts=["a blue square"])
    options.update(kw)
    return erase_dt(model, DTConfig(**options))


def _eps(model, unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *model.latent_shape, generator=g)
    t = torch.tensor([100, 700])
    ctx = model.encode_text(["a red solid circle", "a green dotted cross"])
    with torch.no_grad():
        return model.predict_noise(unet, x, t, ctx)


@pytest.mark.parametrize("rank,group", [(None, "all"), (4, "cross_attn")])
def test_round_trip_reproduces_tuned_predictions(toy_model, tmp_path, rank, group):
    before = {k: v.clone() for k, v in toy_model.unet.state_dict().items()}
    result = _quick_dt(toy_model, rank=rank, group=group)
    path = result.save(tmp_path / "e.safetensors")
    sd, meta = load_erasure(path)
    applied = apply_erasure(toy_model.unet, sd, metadata=meta)
    tuned_eps, applied_eps, orig_eps = (_eps(toy_model, u) for u in (result.tuned_unet, applied, toy_model.unet))
    assert torch.allclose(applied_eps, tuned_eps, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(orig_eps, tuned_eps, atol=1e-5)  # the erasure did change something
    # The input model is untouched, bit for bit.
    assert all(torch.equal(before[k], v) for k, v in toy_model.unet.state_dict().items())


def test_kohya_keys_and_metadata(toy_model, tmp_path):
    result = _quick_dt(toy_model, rank=2, group="cross_attn")
    path = result.save(tmp_path / "e.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    key = module_key(name)
    assert key == "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    assert {f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"} <= keys
    assert all("_attn2_to_" in k for k in keys)  # cross-attention only
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_base_model_version"] == "sd_v1"
    full = _quick_dt(toy_model, rank=None, group="cross_attn_kv").save(tmp_path / "f.safetensors")
    with safe_open(str(full), "pt") as f:
        assert all(k.endswith(".diff") for k in f.keys()) and any("attn2_to_v" in k for k in f.keys())


def test_wrong_architecture_is_refused(toy_model, tmp_path):
    result = _quick_dt(toy_model, rank=2, group="cross_attn")
    sd, meta = load_erasure(result.save(tmp_path / "e.safetensors"))
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ErasureInputError, match="architecture"):
        apply_erasure(other, sd, metadata=meta)
    with pytest.raises(ErasureInputError, match="does not exist"):
        apply_erasure(other, sd)


def test_cancel_hook_stops_without_changing_anything(toy_model):
    before = {k: v.clone() for k, v in toy_model.unet.state_dict().items()}
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(ErasureCancelled):
        erase_dt(toy_model, DTConfig(concepts=["circle"], templates=["a red solid {}"], steps=50, batch_size=2,
                                     images_per_prompt=1, preserve_images_per_prompt=1, sample_steps=4),
                 should_cancel=cancel)
    assert len(calls) == 3  # checked before every step, stopped at the first true
    assert all(torch.equal(before[k], v) for k, v in toy_model.unet.state_dict().items())


def test_progress_reports_every_step(toy_model):
    seen = []
    _quick_dt(toy_model, steps=4)  # warm
    erase_dt(toy_model, DTConfig(concepts=["circle"], templates=["a red solid {}"], steps=4, batch_size=2,
                                 images_per_prompt=1, preserve_images_per_prompt=1, sample_steps=4),
             progress=lambda s, n, loss: seen.append((s, n, loss)))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(n == 4 and loss > 0 for _, n, loss in seen)


def test_merged_model_export_reproduces_the_erasure(toy_model, tmp_path):
    """`erase --save-merged DIR`: a plain diffusers folder whose UNet predicts what the tuned one does."""
    from erasure_core.__main__ import main
    from erasure_core.model import load_diffusers_model

    code = main(["erase", "--method", "cg", "--concept", "circle", "--steps", "2", "--rank", "2",
                 "--out", str(tmp_path / "out"), "--save-merged", str(tmp_path / "merged")])
    assert code == 0
    merged = load_diffusers_model(tmp_path / "merged")
    sd, meta = load_erasure(tmp_path / "out" / "erase_circle_cg.safetensors")
    applied = apply_erasure(toy_model.unet, sd, metadata=meta)
    assert torch.allclose(_eps(toy_model, merged.unet), _eps(toy_model, applied), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_eps(toy_model, merged.unet), _eps(toy_model, toy_model.unet), atol=1e-6)
    assert not list(tmp_path.glob(".merged*"))  # no temporary folder left behind

"""The ldm-layout backend and the webui backend on a real ldm UNetModel (ComfyUI's, same layout as the webui's).

Needs the ComfyUI tree that tests/comfy_setup.sh installs (or $COMFYUI_DIR); skips with the reason without it.
"""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn


def import_comfy():
    """ComfyUI imported the way tests/comfy/ imports it (so both can run in one session, in any order)."""
    from comfy_paths import import_comfy as load

    reason = load()
    if reason:
        pytest.skip(reason)
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return comfy, UNetModel


CONFIG = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2],
              channel_mult=[1, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1],
              transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], transformer_depth_middle=1, context_dim=32,
              num_head_channels=16, use_linear_in_transformer=False, use_spatial_transformer=True, legacy=False)


@pytest.fixture(scope="module")
def ldm_unet():
    comfy, UNetModel = import_comfy()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = UNetModel(**CONFIG, dtype=torch.float32, operations=comfy.ops.manual_cast)
    with torch.no_grad():  # ComfyUI skips weight init (weights come from files): give it some
        for p in unet.parameters():
            p.normal_(0, 0.05)
    return unet.eval().requires_grad_(False)


def state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class FakeWebuiModel:
    """What A1111's LatentDiffusion offers the backend, over a real ldm UNet (text and VAE are fakes)."""

    scale_factor = 0.5
    parameterization = "eps"
    is_sdxl = False

    def __init__(self, unet):
        self.model = SimpleNamespace(diffusion_model=unet)
        self.alphas_cumprod = torch.linspace(0.9991, 0.0047, 1000)
        self.text_calls = 0

    @torch.inference_mode()  # as Forge does: outputs are inference tensors
    def get_learned_conditioning(self, prompts):
        self.text_calls += 1
        g = [torch.Generator().manual_seed(sum(map(ord, p))) for p in prompts]
        return torch.stack([torch.randn(7, 32, generator=x) for x in g])

    def encode_first_stage(self, x):  # 32 px RGB in [-1, 1] -> 8x8x4, a "posterior" with mode()
        z = torch.nn.functional.avg_pool2d(x, 4)
        z = torch.cat([z, z.mean(1, keepdim=True)], 1)
        return SimpleNamespace(mode=lambda: z)

    def decode_first_stage(self, z):
        return torch.nn.functional.interpolate(z[:, :3] / self.scale_factor, scale_factor=4).clamp(-1, 1)


def test_ldm_names_map_like_comfyui(ldm_unet):
    import comfy.utils

    from erasure_core.backends.ldm import ldm_to_diffusers_name

    pairs = comfy.utils.unet_to_diffusers(dict(CONFIG))
    checked = 0
    for diff, ldm in pairs.items():
        name = ldm[: -len(".weight")]
        if not ldm.endswith(".weight") or not isinstance(dict(ldm_unet.named_modules()).get(name), (nn.Linear, nn.Conv2d)):
            continue
        assert ldm_to_diffusers_name(name, 2) == diff[: -len(".weight")]
        checked += 1
    assert checked == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in ldm_unet.modules())


def test_predict_noise_calls_the_ldm_unet(ldm_unet):
    from erasure_core.backends.webui import model_from_webui

    model = model_from_webui(FakeWebuiModel(ldm_unet), image_size=64)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 7, 32)
    assert torch.allclose(model.predict_noise(ldm_unet, x, t, c), ldm_unet(x, timesteps=t, context=c))
    assert model.predict_noise(ldm_unet, x, torch.tensor(5), c).shape == x.shape  # scalar t
    assert model.latent_shape == (4, 8, 8)
    assert not model.encode_text(["a"]).is_inference()  # cloned out of inference mode


@pytest.mark.parametrize("rank", [None, 2])
def test_short_erasure_through_the_webui_backend(ldm_unet, tmp_path, rank):
    from safetensors import safe_open

    from erasure_core import erasure_file
    from erasure_core.backends.webui import model_from_webui, save_to_lora_dir
    from erasure_core.methods.cg import CGConfig, erase_cg

    before = state_hash(ldm_unet)
    model = model_from_webui(FakeWebuiModel(ldm_unet), image_size=32)
    config = CGConfig(concepts=["circle"], alternatives=["square"], steps=3, rank=rank, sample_steps=3,
                      trajectories_per_prompt=1, batch_size=2, templates=["a {}"], preserve_prompts=["a dog"])
    result = erase_cg(model, config)
    assert len(result.losses) == 3 and all(v == v for v in result.losses)
    assert state_hash(ldm_unet) == before  # the loaded model is never written to

    path = save_to_lora_dir(result, ldm_unet, tmp_path / "Lora", checkpoint_name="tiny")
    again = save_to_lora_dir(result, ldm_unet, tmp_path / "Lora")
    assert path != again and path.exists()  # never overwrites
    sd, meta = erasure_file.load_erasure(path)
    assert sd and all(k.startswith("lora_unet_down_blocks_") or k.startswith("lora_unet_up_blocks_")
                      or k.startswith("lora_unet_mid_block_") for k in sd)  # diffusers paths, consistently
    assert all("attn2" in k for k in sd)  # the cross_attn group only
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_output_name"] == "erase_circle_cg" and meta["ss_sd_model_name"] == "tiny"
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["ss_output_name"] == "erase_circle_cg"


def test_clean_weights_when_a_lora_is_merged_in(ldm_unet):
    from erasure_core.backends.webui import clean_unet, lora_backups

    live = __import__("copy").deepcopy(ldm_unet)
    name = next(n for n, m in live.named_modules() if n.endswith("attn2.to_k"))
    module = live.get_submodule(name)
    module.network_weights_backup = module.weight.detach().clone()  # what A1111's Lora network keeps
    module.network_current_names = (("some_lora", 1.0),)
    with torch.no_grad():
        module.weight.add_(1.0)  # the LoRA merged into the live weight
    backups = lora_backups(live)
    assert list(backups) == [name]
    clean = clean_unet(live, backups)
    assert torch.equal(clean.get_submodule(name).weight, ldm_unet.get_submodule(name).weight)
    assert not torch.equal(live.get_submodule(name).weight, clean.get_submodule(name).weight)  # live untouched
    assert clean_unet(ldm_unet, {}) is ldm_unet  # no LoRA: no copy
    # No weight memory: the backup itself, the live weights elsewhere, the webui's backups shared, not copied.
    assert clean.get_submodule(name).weight.data_ptr() == module.network_weights_backup.data_ptr()
    assert clean.get_submodule(name).network_weights_backup is module.network_weights_backup
    other = next(n for n in weight_module_names(live) if n != name)
    assert clean.get_submodule(other).weight.data_ptr() == live.get_submodule(other).weight.data_ptr()


def weight_module_names(unet):
    return [n for n, m in unet.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]


def test_merge_into_checkpoint(ldm_unet, tmp_path):
    from safetensors.torch import load_file, save_file

    from erasure_core import erasure_file
    from erasure_core.backends.webui import merge_into_checkpoint

    ckpt = tmp_path / "tiny.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in ldm_unet.state_dict().items()}, str(ckpt))
    name = next(n for n, m in ldm_unet.named_modules() if n.endswith("attn2.to_v"))
    delta = torch.full_like(ldm_unet.get_submodule(name).weight, 0.5)
    sd = erasure_file.to_state_dict(weight_deltas={name: (delta, None)})
    out = merge_into_checkpoint(ckpt, sd, ldm_unet, tmp_path / "tiny_erased.safetensors")
    merged, original = load_file(str(out)), load_file(str(ckpt))
    key = f"model.diffusion_model.{name}.weight"
    assert torch.allclose(merged[key], original[key] + 0.5)
    assert sum(not torch.equal(merged[k], original[k]) for k in original) == 1


def test_checkpointing_an_ldm_copy_gives_the_same_gradients(ldm_unet):
    """trainable.enable_checkpointing wraps an ldm UNet's blocks on the copy only; the loss and
    gradients are those of the plain copy."""
    from erasure_core.trainable import make_trainable

    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 7, 32)
    grads = []
    for checkpointing in (False, True):
        tuned, params = make_trainable(ldm_unet, "cross_attn", checkpointing=checkpointing)
        tuned(x, timesteps=t, context=c).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        assert ("functools.partial" in repr(tuned.input_blocks[1].forward)) == checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert "functools.partial" not in repr(ldm_unet.input_blocks[1].forward)  # the shared UNet is untouched


def test_the_memory_plan_counts_an_ldm_unet_on_diffusers_layout(ldm_unet):
    """Hosts' attention code cannot run on `meta`; the plan counts diffusers' UNet of the same layout, which has
    the same layers: the same number of weights, and the same trained weights for a group."""
    from erasure_core.backends.ldm import meta_diffusers_unet
    from erasure_core.memory import trained_numel

    meta = meta_diffusers_unet(ldm_unet)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in ldm_unet.parameters())
    for group in ("cross_attn", "all"):
        assert trained_numel(meta, group, None) == trained_numel(ldm_unet, group, None)


def test_split_rows_through_the_webui_backend_with_checkpointing(ldm_unet):
    """Rows back-propagated one group at a time (split_rows.py) on the webui backend, with the ldm blocks
    checkpointed inside each group's recomputation: the loss and gradients of one call on every row."""
    from erasure_core.backends.webui import model_from_webui
    from erasure_core.methods.cg import cg_loss
    from erasure_core.methods.trajectories import PreserveRows
    from erasure_core.split_rows import RowsSplit
    from erasure_core.trainable import make_trainable

    model = model_from_webui(FakeWebuiModel(ldm_unet), image_size=64)
    tuned, params = make_trainable(ldm_unet, "cross_attn", checkpointing=True)
    gen = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn((2, 4, 8, 8), generator=gen)  # noqa: E731
    context = lambda: torch.randn((2, 7, 32), generator=gen)  # noqa: E731
    x, target, frozen, concept, uncond = noise(), noise(), noise(), context(), context()
    keep = PreserveRows(noise(), torch.tensor([300, 900]), context(), noise())
    results = []
    for m in (model, RowsSplit(model, 2)):
        for p in params:
            p.grad = None
        loss = cg_loss(m, tuned, x, torch.tensor([10, 900]), concept, uncond, target, frozen, 1.0, keep, 10.0)
        loss.backward()
        results.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in params])))
    (joint_loss, joint), (split_loss, split) = results
    assert split_loss == pytest.approx(joint_loss, rel=1e-4)
    assert (split - joint).norm() <= 1e-4 * joint.norm() and joint.norm() > 0

"""Headless harness: the pack's node classes run directly on real (small) ComfyUI objects."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from comfy_paths import REPO

# Small but real settings: every node run below takes a few seconds on one CPU core.
FAST = dict(preserve="a photo of a square", templates="a photo of {}", steps=3, learning_rate=1e-3, rank=0,
            batch_size=2, sampling_steps=2, image_size=128, seed=0)


def weights_hash(patcher) -> str:
    """Hash of the weights the MODEL itself samples with (ComfyUI loads its patches first)."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher], force_full_load=True)
    h = hashlib.sha256()
    for name, tensor in sorted(patcher.model.diffusion_model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def eps(patcher, clip, prompt: str, seed: int = 1) -> torch.Tensor:
    """The MODEL's noise prediction for `prompt` at a fixed x_t and t."""
    from erasure_core.backends.comfy import ComfyModel

    api = ComfyModel(patcher, clip, None, image_size=128)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *api.latent_shape), generator=gen)
    with torch.no_grad():
        return api.predict_noise(api.unet, x, torch.tensor([100, 700]), api.encode_text([prompt, prompt]))


def run_cg(pack, model, clip, concept="a circle", **overrides):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return pack["ConceptEraser_EraseCG"].execute(model=model, clip=clip, concept=concept, alternative="",
                                                     **{**FAST, **overrides}, trajectories_per_prompt=1,
                                                     drift_weight=1.0, parameter_group="cross_attn")


def test_pack_import_needs_no_comfyui():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('ce', sys.argv[1], "
            "submodule_search_locations=[sys.argv[2]]); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); assert callable(m.comfy_entrypoint) and m.WEB_DIRECTORY == './web'; "
            "assert 'comfy' not in sys.modules and 'comfy_api' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(REPO / "__init__.py"), str(REPO)], check=True, cwd="/")
    core = subprocess.run(["grep", "-rlE", "^(from|import) (nodes|concept_eraser)", str(REPO / "erasure_core")],
                          capture_output=True, text=True)
    assert core.stdout == "", "erasure_core must not import the node pack"


def test_schemas(pack):
    from comfy_server import PACK_NODE_IDS

    assert set(pack) == PACK_NODE_IDS
    for cls in pack.values():
        schema = cls.GET_SCHEMA()
        assert schema.category == "Concept Eraser" and schema.description
        info = cls.GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"] == "Concept Eraser"
    dt = pack["ConceptEraser_EraseDT"].GET_NODE_INFO_V1()
    assert dt["output"] == ["MODEL", "LORA_MODEL", "LOSS_MAP"]
    widgets = {k: v for k, v in dt["input"]["required"].items() if v[0] not in ("MODEL", "CLIP", "VAE")}
    assert all(v[1].get("tooltip") for v in widgets.values()), "every widget has a tooltip"


def test_backend_matches_diffusers(tiny, toy_diffusers):
    """Same weights, same x_t, t and text embedding: the same noise prediction and schedule."""
    from erasure_core.backends.comfy import ComfyModel

    model, clip, vae = tiny
    api = ComfyModel(model, clip, vae, image_size=128)
    assert api.latent_shape == toy_diffusers.latent_shape
    assert torch.allclose(api.alphas_cumprod, toy_diffusers.alphas_cumprod, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, *api.latent_shape), generator=gen)
    ctx = torch.randn((3, 16, 64), generator=gen)
    t = torch.tensor([5, 400, 990])
    with torch.no_grad():
        ours = api.predict_noise(api.unet, x, t, ctx)
        ref = toy_diffusers.predict_noise(toy_diffusers.unet, x, t, ctx)
    assert (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    images = torch.rand(2, 3, 128, 128)
    z = api.encode_images(images)
    assert z.shape == (2, *api.latent_shape)
    assert api.decode_latents(z).shape == images.shape


def test_cg_node_fresh_model_and_input_untouched(pack, tiny):
    import comfy.model_patcher
    from comfy_extras.nodes_train import LoraModelLoader

    model, clip, _ = tiny
    before_hash, before_eps = weights_hash(model), eps(model, clip, "a photo of a circle")
    out = run_cg(pack, model, clip)
    erased, lora, loss = out.args
    assert isinstance(erased, comfy.model_patcher.ModelPatcher) and erased is not model
    assert erased.patches and not model.patches
    assert len(loss["loss"]) == FAST["steps"]
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith(("lora_unet_up_blocks_", "lora_unet_mid_block_"))
               for k in lora), "diffusers-path kohya keys"
    assert weights_hash(model) == before_hash
    assert torch.equal(eps(model, clip, "a photo of a circle"), before_eps)
    after = eps(erased, clip, "a photo of a circle")
    assert not torch.allclose(after, before_eps)
    # The core's LoRA loader reads the LORA_MODEL output as it is, to the same MODEL.
    with torch.inference_mode():
        core = LoraModelLoader.execute(model=model, lora=lora, strength_model=1.0).args[0]
    assert torch.allclose(eps(core, clip, "a photo of a circle"), after, atol=1e-5)


def test_preserve_weight_widget_reaches_the_training(pack, tiny):
    """Both erase nodes take preserve_weight last and optional (older saved workflows and API prompts still run),
    default to the method's own weight, and train with the value given."""
    from workflows import input_specs, is_widget

    from erasure_core.methods.cg import CGConfig
    from erasure_core.methods.dt import DTConfig

    # node -> its default, and the widgets added after preserve_weight (each new one goes last)
    for node, default, newer in (("ConceptEraser_EraseDT", DTConfig.preserve_weight, ["degeneration"]),
                                 ("ConceptEraser_EraseCG", CGConfig.preserve_weight, ["anchor"])):
        info = pack[node].GET_NODE_INFO_V1()
        assert "preserve_weight" not in info["input"]["required"]
        assert info["input"]["optional"]["preserve_weight"][1]["default"] == default
        widgets = [name for name, spec in input_specs(info) if is_widget(spec)]  # the frontend's order
        assert widgets[-1 - len(newer):] == ["preserve_weight", *newer], \
            "a new widget goes last, after every saved workflow's values"
        assert all(name in info["input"]["optional"] for name in newer)
    model, clip, _ = tiny
    default = run_cg(pack, model, clip).args[2]["loss"]
    assert run_cg(pack, model, clip, preserve_weight=CGConfig.preserve_weight).args[2]["loss"] == default
    off = run_cg(pack, model, clip, preserve_weight=0.0).args[2]["loss"]
    # Step 1 trains the original weights, where preservation costs nothing; after that the term weighs in.
    assert off[0] == pytest.approx(default[0], rel=1e-3)
    assert off[1:] != pytest.approx(default[1:], rel=1e-3)


def test_anchor_widget_reaches_the_training(pack, tiny):
    """The CG node's anchor: 'auto' is the kind's default ('a circle' names an object: 'empty'); 'without concept'
    trains towards the prompts without the concept, so its targets, and losses, differ from the first step."""
    info = pack["ConceptEraser_EraseCG"].GET_NODE_INFO_V1()
    assert info["input"]["optional"]["anchor"][1]["options"] == ["auto", "empty", "without concept"]
    model, clip, _ = tiny
    auto = run_cg(pack, model, clip, steps=2).args[2]["loss"]
    assert run_cg(pack, model, clip, steps=2, anchor="empty").args[2]["loss"] == auto
    without = run_cg(pack, model, clip, steps=2, anchor="without concept").args[2]["loss"]
    assert without[0] != pytest.approx(auto[0], rel=1e-3)


def test_cancel_mid_run_leaves_input_untouched(pack, tiny, monkeypatch):
    import comfy.model_management as mm
    from erasure_core.backends import comfy as backend

    model, clip, _ = tiny
    before = weights_hash(model)
    calls = {"n": 0}
    real = backend.check_interrupt

    def cancel_on_fifth_unet_call():
        calls["n"] += 1
        if calls["n"] == 5:
            mm.interrupt_current_processing(True)  # what POST /interrupt does
        real()

    monkeypatch.setattr(backend, "check_interrupt", cancel_on_fifth_unet_call)
    with pytest.raises(mm.InterruptProcessingException):
        run_cg(pack, model, clip)
    assert calls["n"] == 5, "cancel is honoured at the next UNet call, within a step"
    assert not mm.processing_interrupted()
    assert weights_hash(model) == before and not model.patches


def test_two_erasures_are_independent(pack, tiny):
    model, clip, _ = tiny
    first = run_cg(pack, model, clip, concept="a circle").args[0]
    first_eps = eps(first, clip, "a photo of a circle")
    second = run_cg(pack, model, clip, concept="a square", seed=1).args[0]
    assert set(first.patches) and first.patches is not second.patches
    assert torch.equal(eps(first, clip, "a photo of a circle"), first_eps)
    assert not torch.allclose(eps(second, clip, "a photo of a circle"), first_eps)


def test_dataset_and_dt_node(pack, tiny):
    model, clip, vae = tiny
    before = weights_hash(model)
    images = torch.rand(2, 128, 128, 3)
    with torch.inference_mode():
        dataset, preview = pack["ConceptEraser_ScrambledGridDataset"].execute(
            grid=4, seed=0, concept="", templates="{}", images_per_prompt=1, image_size=128, sampling_steps=2,
            image=images).args
        assert preview.shape == images.shape and dataset["grid"] == 4
        drawn = pack["ConceptEraser_ScrambledGridDataset"].execute(
            grid=4, seed=0, concept="a circle", templates="{}", images_per_prompt=1, image_size=128,
            sampling_steps=2, model=model, clip=clip, vae=vae).args[1]
        assert drawn.shape == (1, 128, 128, 3)
        erased, lora, loss = pack["ConceptEraser_EraseDT"].execute(
            model=model, clip=clip, vae=vae, concept="a circle", **FAST, parameter_group="cross_attn_kv", grid=4,
            images_per_prompt=1, dataset=dataset).args
    assert len(loss["loss"]) == FAST["steps"] and erased.patches
    assert weights_hash(model) == before


def test_save_load_and_diffusers_host_agree(pack, tiny, toy_diffusers, comfy_env):
    """Saved from ComfyUI, the file loads with Load Erasure, the core LoraLoader and the diffusers backend alike."""
    import folder_paths
    import nodes as comfy_nodes

    from erasure_core.erasure_file import apply_erasure, load_erasure, unet_fingerprint
    from erasure_core.errors import ErasureInputError

    model, clip, _ = tiny
    erased, lora, _ = run_cg(pack, model, clip, rank=2).args
    with torch.inference_mode():
        name = pack["ConceptEraser_SaveErasure"].execute(erasure=lora, filename_prefix="erasures/circle").args[0]
    assert name == "erasures/circle_00001.safetensors"
    tensors, meta = load_erasure(folder_paths.get_full_path("loras", name))
    assert meta["concept_eraser.unet_fingerprint"] == unet_fingerprint(toy_diffusers.unet)
    spec = pack["ConceptEraser_LoadErasure"].GET_NODE_INFO_V1()["input"]["required"]["lora_name"]
    assert name in spec[1]["options"], "the saved file is offered at once"
    with torch.inference_mode():
        loaded = pack["ConceptEraser_LoadErasure"].execute(model=model, lora_name=name, strength=1.0).args[0]
        core = comfy_nodes.LoraLoader().load_lora(model, clip, name, 1.0, 0.0)[0]
    want = eps(erased, clip, "a photo of a circle")
    assert torch.allclose(eps(loaded, clip, "a photo of a circle"), want, atol=1e-5)
    assert torch.allclose(eps(core, clip, "a photo of a circle"), want, atol=1e-5)
    # The diffusers host applies the same file to the same weights and predicts the same noise.
    merged = apply_erasure(toy_diffusers.unet, tensors, metadata=meta)
    from erasure_core.backends.comfy import ComfyModel

    api = ComfyModel(erased, clip, None, image_size=128)
    gen = torch.Generator().manual_seed(3)
    x, ctx, t = torch.randn((2, *api.latent_shape), generator=gen), torch.randn((2, 16, 64), generator=gen), \
        torch.tensor([50, 600])
    with torch.no_grad():
        assert torch.allclose(api.predict_noise(api.unet, x, t, ctx),
                              toy_diffusers.predict_noise(merged, x, t, ctx), atol=1e-4)
    # A pickle is refused by its header, with the field and the fix in the message.
    bad = comfy_env / "loras" / "evil.safetensors"
    bad.write_bytes(b"\x80\x04" + b"\0" * 64)
    with pytest.raises(ErasureInputError, match="lora_name|erasure file"):
        pack["ConceptEraser_LoadErasure"].execute(model=model, lora_name="evil.safetensors", strength=1.0)


def test_bad_input_names_the_field(pack, tiny):
    from erasure_core.errors import ErasureInputError

    model, clip, _ = tiny
    with pytest.raises(ErasureInputError, match="concept"):
        run_cg(pack, model, clip, concept="   ")
    with pytest.raises(ErasureInputError, match="filename_prefix"):
        pack["ConceptEraser_SaveErasure"].execute(erasure=run_cg(pack, model, clip).args[1],
                                                  filename_prefix="../../escape")


@pytest.mark.parametrize("prefix, problem", [
    (".", "names the loras folder itself"), ("./", "names the loras folder itself"),
    ("erasures/..", "names the loras folder itself"), ("../../escape", "points outside the loras folder"),
    ("/tmp/escape", "points outside the loras folder"), ("erasures/../../x", "points outside the loras folder"),
    ("a:b", "not a file name that works on every system"), ("CON", "not a file name that works on every system"),
    ("x\x00y", "control character"), ("", "is empty"),
])
def test_save_erasure_refuses_prefixes_that_leave_or_name_the_folder(pack, comfy_env, prefix, problem):
    """ComfyUI's own prefix rules, and nothing written beside models/loras: before, '.' or 'erasures/..' wrote
    next to the loras folder and failed with a raw ValueError."""
    from erasure_core.errors import ErasureInputError

    files = pack["ConceptEraser_SaveErasure"].__module__
    target_path = sys.modules[files].target_path
    before = sorted(p.name for p in comfy_env.iterdir())
    with pytest.raises(ErasureInputError, match=f"^filename_prefix: .*{problem}"):
        target_path(prefix)
    assert sorted(p.name for p in comfy_env.iterdir()) == before


def test_save_erasure_prefix_with_sub_folders_and_spaces(pack, comfy_env):
    files = sys.modules[pack["ConceptEraser_SaveErasure"].__module__]
    path = files.target_path("my erasures/no dogs")
    assert path == (comfy_env / "loras" / "my erasures" / "no dogs_00001.safetensors").resolve()


def test_load_erasure_refuses_hostile_tensors_before_comfy_multiplies_them(pack, tiny, comfy_env):
    """A NaN delta or a LoRA whose product is not the layer's shape never reaches ComfyUI's patches."""
    from safetensors.torch import save_file

    from erasure_core.errors import ErasureInputError

    from erasure_core.backends.comfy import ldm_to_diffusers_names
    from erasure_core.erasure_file import module_key

    model, _, _ = tiny
    ldm = next(n for n, _ in model.model.diffusion_model.named_modules() if n.endswith("attn2.to_k"))
    key = module_key(ldm_to_diffusers_names(model)[ldm])
    weight = model.model.diffusion_model.get_submodule(ldm).weight
    for name, tensors, problem in (
            ("nan.safetensors", {f"{key}.diff": torch.full(weight.shape, float("nan"))}, "NaN or infinite"),
            ("bomb.safetensors", {f"{key}.lora_up.weight": torch.zeros(20000, 1),
                                  f"{key}.lora_down.weight": torch.zeros(1, 20000)}, "for a weight of shape")):
        save_file(tensors, str(comfy_env / "loras" / name))
        with pytest.raises(ErasureInputError, match=problem):
            pack["ConceptEraser_LoadErasure"].execute(model=model, lora_name=name, strength=1.0)


def test_compare_node(pack, tiny):
    model, clip, vae = tiny
    erased = run_cg(pack, model, clip).args[0]
    with torch.inference_mode():
        grid, after = pack["ConceptEraser_Compare"].execute(
            original=model, erased=erased, clip=clip, vae=vae, prompts="a circle\na square", seed=0, steps=2, cfg=4.0,
            sampler_name="euler", scheduler="normal", image_size=128).args
    assert grid.shape == (1, 2 * 128 + 4, 2 * 128 + 4, 3) and after.shape == (2, 128, 128, 3)


def test_erase_node_shows_the_memory_plan_before_training(pack, tiny, monkeypatch):
    progress = sys.modules[pack["ConceptEraser_EraseCG"].__module__.rsplit(".", 1)[0] + ".progress"]
    shown = []
    monkeypatch.setattr(progress.Reporter, "text", lambda self, message: shown.append(message))
    model, clip, _ = tiny
    run_cg(pack, model, clip)
    assert shown[0].startswith("Classifier-guidance erasure: memory plan: ") and "fits" in shown[0]
    assert shown.index(shown[0]) < next(i for i, m in enumerate(shown) if "drawing the original model" in m)


def test_split_rows_give_the_same_gradients_on_comfyuis_model(tiny):
    """Rows back-propagated one group at a time (erasure_core/split_rows.py) through ComfyUI's own model call: the
    same loss and gradients as one call on every row."""
    from erasure_core.backends.comfy import ComfyModel
    from erasure_core.methods.cg import cg_loss
    from erasure_core.methods.trajectories import PreserveRows
    from erasure_core.split_rows import RowsSplit
    from erasure_core.trainable import make_trainable

    model, clip, _ = tiny
    api = ComfyModel(model, clip, None, image_size=128)
    tuned, params = make_trainable(api.unet, "cross_attn", None)
    gen = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn((2, *api.latent_shape), generator=gen)  # noqa: E731
    x, target, frozen = noise(), noise(), noise()
    t = torch.tensor([100, 700])
    keep = PreserveRows(noise(), torch.tensor([300, 900]), api.encode_text(["a photo of a square"] * 2), noise())
    concept, uncond = api.encode_text(["a photo of a circle"] * 2), api.encode_text([""]).expand(2, -1, -1)

    def loss_and_grads(m):
        for p in params:
            p.grad = None
        loss = cg_loss(m, tuned, x, t, concept, uncond, target, frozen, 1.0, keep, 10.0)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in params])

    joint_loss, joint = loss_and_grads(api)
    split_loss, split = loss_and_grads(RowsSplit(api, 2))
    assert split_loss == pytest.approx(joint_loss, rel=1e-4)
    assert (split - joint).norm() <= 1e-4 * joint.norm() and joint.norm() > 0

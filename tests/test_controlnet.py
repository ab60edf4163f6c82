"""Sampling under a ControlNet: the control images, the UNet+ControlNet join, the shipped toy ControlNet
doing what its control asks, and the command line's --controlnet/--control-image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from erasure_core.controlnet import ControlledUNet, load_control_image, load_controlnet, prepare_hint
from erasure_core.errors import ErasureInputError
from erasure_core.sampling import sample_images
from erasure_core.toyworld import CONTROLNET_DIR
from erasure_core.toyworld.control import control_image, controls_for, placed_right, shape_centre, to_tensor
from erasure_core.toyworld.draw import Placement, draw_scene, random_placement
from erasure_core.toyworld.world import SHAPE_NAMES, Scene


@pytest.fixture(scope="module")
def toy_controlnet():
    return load_controlnet(CONTROLNET_DIR)


def test_blob_is_the_same_for_every_shape_and_the_outline_is_not():
    place = Placement(15.0, 17.5, 11.0, 0.2)
    blobs = [control_image("blob", s, place) for s in SHAPE_NAMES]
    outlines = [control_image("outline", s, place) for s in SHAPE_NAMES]
    assert all(np.array_equal(b, blobs[0]) for b in blobs)
    assert len({o.tobytes() for o in outlines}) == len(SHAPE_NAMES)
    assert 0.0 <= min(o.min() for o in outlines) and max(o.max() for o in outlines) <= 1.0


def test_draw_scene_with_its_own_placement_is_draw_scene():
    """Drawing at a given placement is the same drawing (the control images share the scene's geometry)."""
    scene = Scene("triangle", "blue", "striped")
    plain = draw_scene(scene, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    placed = draw_scene(scene, rng, placement=random_placement(scene.shape, rng))
    assert np.array_equal(plain, placed)


def test_shape_centre_finds_the_drawn_shape():
    scenes = [Scene(s, "red", "solid") for s in SHAPE_NAMES]
    rng = np.random.default_rng(0)
    placements = [Placement(10.0 + 3 * i, 20.0 - 2 * i, 10.0, 0.1) for i in range(len(scenes))]
    images = to_tensor([draw_scene(s, rng, placement=p) for s, p in zip(scenes, placements)])
    assert placed_right(images, placements, tolerance=0.6) == [True] * len(scenes)
    assert not any(placed_right(images, [Placement(p.cx + 3, p.cy, p.radius, 0) for p in placements]))
    assert torch.isnan(shape_centre(torch.full((1, 3, 32, 32), 0.92))).all(), "an empty canvas has no centre"


def test_zero_initialised_controlnet_changes_nothing(toy_model):
    """A ControlNet fresh from ControlNetModel.from_unet (zero output convolutions) adds nothing: the join is exact."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(toy_model.unet).eval()
    prompts, seeds = ["a red solid circle", "a blue striped square"], [1, 2]
    control = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = sample_images(toy_model, prompts, seeds, steps=4, guidance=1.5)
    joined = sample_images(toy_model, prompts, seeds, steps=4, guidance=1.5, controlnet=controlnet,
                           control_image=control)
    assert torch.equal(plain, joined)
    unet = ControlledUNet(toy_model.unet, controlnet, prepare_hint(control[:1], (16, 16)))
    assert unet.hint.shape == (1, 3, 128, 128), "ComfyUI's size: 8x the latent side"


def test_control_needs_both_halves(toy_model, toy_controlnet):
    with pytest.raises(ErasureInputError, match="controlnet: a ControlNet and a control image go together"):
        sample_images(toy_model, ["a red circle"], [0], controlnet=toy_controlnet)
    with pytest.raises(ErasureInputError, match="control image: 2 control images for 3 prompts"):
        sample_images(toy_model, ["a"] * 3, [0, 1, 2], controlnet=toy_controlnet,
                      control_image=torch.zeros(2, 3, 32, 32))


def test_bad_controlnet_and_control_image_files(tmp_path):
    with pytest.raises(ErasureInputError, match="controlnet: .* is not a diffusers ControlNet folder"):
        load_controlnet(tmp_path)
    bad = tmp_path / "control.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ErasureInputError, match="control image: .* could not be read as an image"):
        load_control_image(bad)


def test_shipped_controlnet_follows_its_control(toy_model, toy_controlnet, judge):
    """Under an outline the prompted shapes are drawn where the outline is; under a blob they keep the prompt's
    shape, colour and fill (the blob forces none of them). Under both, the shape is drawn where the control puts it."""
    scenes = [Scene(s, c, f) for s, c, f in [("circle", "red", "solid"), ("square", "blue", "striped"),
                                             ("triangle", "green", "dotted"), ("cross", "yellow", "solid")]]
    seeds = [11, 12, 13, 14]
    from erasure_core.toyworld.world import canonical_prompt

    prompts = [canonical_prompt(s) for s in scenes]
    for kind in ("blob", "outline"):
        controls, placements = controls_for(kind, scenes, seeds)
        images = sample_images(toy_model, prompts, seeds, steps=25, guidance=1.5, controlnet=toy_controlnet,
                               control_image=controls)
        seen = judge.predict(images)
        assert [(a, b, c) for a, b, c in zip(seen["shape"], seen["color"], seen["style"])] == \
            [(s.shape, s.color, s.style) for s in scenes], kind
        assert sum(placed_right(images, placements)) >= 3, kind


def test_cli_sample_with_controlnet(tmp_path, capsys):
    from PIL import Image

    from erasure_core.__main__ import main
    from erasure_core.toyworld.control import control_image as draw_control

    png = tmp_path / "blob.png"
    Image.fromarray((draw_control("blob", "circle", Placement(12, 20, 10, 0)) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "samples.png"
    assert main(["sample", "--prompt", "a red solid square", "--controlnet", str(CONTROLNET_DIR),
                 "--control-image", str(png), "--out", str(out), "--steps", "10"]) == 0
    printed = capsys.readouterr().out
    assert "original  'a red solid square': judge reads shape" in printed
    assert Image.open(out).size[0] > 32
    assert main(["sample", "--prompt", "a red circle", "--controlnet", str(CONTROLNET_DIR)]) == 2
    assert "--controlnet and --control-image go together" in capsys.readouterr().err


def test_erasure_job_under_control(tmp_path, toy_model, toy_controlnet):
    """run_erasure with a Control: the before/after grid under control and the erased rate under control in the
    report (a 2-step erasure: this checks the wiring, the tables measure the erasure)."""
    from erasure_core.controlnet import Control
    from erasure_core.jobs import run_erasure
    from erasure_core.methods.cg import CGConfig

    control = Control(toy_controlnet, to_tensor([control_image("blob", "circle", Placement(16, 16, 11, 0))]))
    config = CGConfig(concepts=["circle"], templates=["a red solid {}"], preserve_prompts=["a blue solid square"],
                      steps=2, batch_size=2, sample_steps=4, guidance=1.5, trajectories_per_prompt=1)
    out = run_erasure(toy_model, "cg", config, tmp_path, control=control, log=lambda m: None)
    assert out.control_grid_path == tmp_path / "comparison_controlnet.png" and out.control_grid_path.exists()
    report = out.report["controlnet"]
    assert report["concept_prompts"] == 1 and report["other_prompts"] == 1 and report["scale"] == 1.0
    assert report["controlnet_erased"] is True


def _uce_erasure(toy_model):
    from erasure_core.methods.uce import UCEConfig, erase_uce

    return erase_uce(toy_model, UCEConfig(concepts=["circle"], alternatives=["square"])).state_dict


def test_erase_controlnet_changes_the_layers_it_shares_with_the_unet(toy_model, toy_controlnet):
    """The erasure's delta lands on the ControlNet's copy of each UNet layer it has (down and middle blocks), the
    UNet-only layers are skipped, and the ControlNet passed in is left as it was."""
    from erasure_core.controlnet import erase_controlnet
    from erasure_core.erasure_file import module_deltas

    erasure = _uce_erasure(toy_model)
    before = {k: v.clone() for k, v in toy_controlnet.state_dict().items()}
    erased = erase_controlnet(toy_controlnet, erasure)
    assert all(torch.equal(v, before[k]) for k, v in toy_controlnet.state_dict().items())
    deltas = module_deltas(erasure, toy_model.unet)
    shared = [name for name in deltas if name.startswith(("down_blocks.", "mid_block."))]
    assert shared and any(name.startswith("up_blocks.") for name in deltas)  # UCE edits every cross-attention
    for name in shared:
        change = erased.get_submodule(name).weight - toy_controlnet.get_submodule(name).weight
        assert torch.allclose(change, deltas[name][0], atol=1e-6), name
    changed = {k for k, v in erased.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{name}.weight" for name in shared}


def test_erase_controlnet_refuses_an_erasure_it_shares_no_layer_with(toy_controlnet):
    from erasure_core.controlnet import erase_controlnet

    only_up = {"lora_unet_up_blocks_0_attentions_0_proj_out.diff": torch.zeros(1)}
    with pytest.raises(ErasureInputError, match="shares no layer"):
        erase_controlnet(toy_controlnet, only_up)


def test_cli_sample_applies_the_erasure_to_the_controlnet_unless_kept(tmp_path, toy_model, monkeypatch):
    """`sample --erasure F --controlnet DIR` samples the erased rows with the erased ControlNet; --keep-controlnet
    with the ControlNet as it is."""
    from PIL import Image

    import erasure_core.controlnet as controlnet_module
    from erasure_core.__main__ import main
    from erasure_core.erasure_file import save_erasure

    path = save_erasure(tmp_path / "circle.safetensors", _uce_erasure(toy_model), {})
    png = tmp_path / "blob.png"
    Image.fromarray((control_image("blob", "circle", Placement(16, 16, 11, 0)) * 255).astype(np.uint8)).save(png)
    calls = []
    real = controlnet_module.erase_controlnet
    monkeypatch.setattr(controlnet_module, "erase_controlnet", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = ["sample", "--prompt", "a red solid circle", "--erasure", str(path), "--controlnet", str(CONTROLNET_DIR),
            "--control-image", str(png), "--steps", "2"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0 and calls == [1]
    assert main(args + ["--out", str(tmp_path / "b.png"), "--keep-controlnet"]) == 0 and calls == [1]

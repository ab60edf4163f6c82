"""The UI's logic without a browser: form parsing, pictures, the Blocks build, and a real run."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import torch

from erasure_core import ui_blocks
from erasure_core.errors import ErasureInputError
from erasure_core.ui_blocks import EraseRunner, Host, build_config, loss_plot, split_list


def toy_model_dir() -> Path | None:
    """The shipped toy world, or CE_TOY_MODEL (a toy-world build's model/ folder) while it is being trained."""
    from erasure_core.toyworld import MODEL_DIR

    for path in (MODEL_DIR, os.environ.get("CE_TOY_MODEL")):
        if path and (Path(path) / "model_index.json").exists():
            return Path(path)
    return None


def test_split_list_accepts_commas_and_newlines():
    assert split_list(" circle, square\n\ntriangle ,") == ["circle", "square", "triangle"]
    assert split_list(None) == []


def test_defaults_match_the_core():
    from erasure_core import defaults
    from erasure_core.methods import METHODS
    from erasure_core.trainable import GROUPS

    assert tuple(ui_blocks.GROUPS) == tuple(GROUPS)
    assert ui_blocks.SAMPLE_STEPS == {f.name: f.default for f in dataclasses.fields(METHODS["cg"][0])}["sample_steps"]
    assert set(ui_blocks.METHOD_DEFAULTS) == set(METHODS)
    for name in METHODS:
        assert ui_blocks.METHOD_DEFAULTS[name] == defaults.settings(name)
        for kind in defaults.KINDS:
            assert ui_blocks.method_defaults(name, kind) == defaults.settings(name, kind)
        fields = {f.name: f.default for f in dataclasses.fields(METHODS[name][0])}  # the library's own defaults
        chosen = defaults.settings(name)
        for key in ("lr", "group", "rank"):
            if key in chosen or key == "rank":  # UCE has no learning rate; no rank given is full weights
                assert fields[key] == chosen.get(key), (name, key)


@pytest.mark.parametrize("changes, field", [
    ({"concepts_text": "  "}, "concept"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"lr": "fast"}, "learning rate"),
    ({"rank": -1}, "LoRA rank"),
    ({"method": "magic"}, "method"),
    ({"group": "nothing"}, "parameter group"),
    ({"alternative_text": "circle"}, "alternative"),
    ({"method": "dt", "grid": 1}, "grid size"),
])
def test_bad_form_values_name_their_field(changes, field):
    form = dict(method="cg", concepts_text="circle", alternative_text="", preserve_text="", steps=5, lr=1e-3,
                group="cross_attn", rank=0, seed=0)
    form.update(changes)
    with pytest.raises(ErasureInputError) as err:
        build_config(**form)
    assert err.value.field == field
    assert err.value.fix


def test_form_to_config():
    config = build_config("cg", "van gogh, monet", "photo", "a dog\na cat, sitting", 7, "0.002", "cross_attn_kv", 4, 3)
    assert config.concepts == ["van gogh", "monet"]
    assert config.alternatives == ["photo", "photo"]  # one alternative serves every concept
    assert config.preserve_prompts == ["a dog", "a cat, sitting"]  # prompts are whole lines
    assert (config.steps, config.lr, config.group, config.rank, config.seed) == (7, 0.002, "cross_attn_kv", 4, 3)
    assert build_config("esd", "x", "", "", 5, 1e-4, "all", 0, 0).rank is None  # 0 = full weights
    assert build_config("dt", "x", "", "", 5, 1e-4, "all", 0, 0, grid=16).grid == 16
    assert build_config("dt", "x", "", "", 5, 1e-4, "all", 0, 0, grid=None).grid == 4
    assert build_config("dt", "x", "", "", 5, 1e-4, "all", 0, 0, grid=0).grid == 4  # the form's untouched field


def test_toy_world_uses_its_own_prompts():
    config = build_config("dt", "circle", "", "", 5, 3e-4, "all", 0, 0, toy=True)
    assert all("circle" in p for p in config.concept_prompts("circle"))
    assert config.preserve_prompts and not any("circle" in p for p in config.preserve_prompts)
    with pytest.raises(ErasureInputError) as err:
        build_config("dt", "van gogh", "", "", 5, 3e-4, "all", 0, 0, toy=True)
    assert err.value.field == "concept"
    assert build_config("dt", "striped", "", "", 5, 1e-3, "cross_attn", 0, 0, toy=True).grid == 32  # a fill
    assert build_config("dt", "wavy", "", "", 5, 1e-3, "cross_attn", 0, 0, kind="style").grid == 32  # a chosen kind
    assert build_config("dt", "striped", "", "", 5, 1e-3, "cross_attn", 0, 0, toy=True, grid=8).grid == 8


def test_loss_plot_is_an_image_for_any_length():
    for losses in ([], [0.5], [1.0, 0.5, float("nan"), 0.25] * 10):
        image = loss_plot(losses)
        assert image.size == (560, 260) and image.mode == "RGB"
    curve = loss_plot([1.0, 0.1])
    assert len(curve.getcolors(maxcolors=100_000)) > 2  # something was drawn


def test_loss_plot_title_is_clear_of_gradios_label_and_buttons():
    """gradio draws its label over an image's top left (~100 px) and its buttons over the top right (~60 px)."""
    import numpy as np

    top = np.asarray(loss_plot([1.0, 0.5]).convert("L"))[:26]
    columns = np.nonzero((top < 128).any(axis=0))[0]
    assert len(columns) and columns.min() >= 110 and columns.max() <= 560 - 70, (columns.min(), columns.max())


def test_blocks_build_and_method_defaults():
    gr = pytest.importorskip("gradio")
    host = Host(load_model=lambda: None, out_dir=Path("unused"))
    blocks = build_blocks_checked(host)
    assert isinstance(blocks, gr.Blocks)
    from erasure_core import defaults

    for kind in defaults.KINDS:
        for method in ("esd", "dt", "ca"):
            lr, group, steps, rank = ui_blocks.on_method_change(method, kind)
            expected = defaults.settings(method, kind)
            assert (lr["value"], group["value"], steps["value"], rank["value"]) == \
                (expected["lr"], expected["group"], expected["steps"], expected.get("rank") or 0)
        lr, group, _, rank = ui_blocks.on_method_change("uce", kind)  # an edit: the learning rate stays as it is
        assert "value" not in lr and (group["value"], rank["value"]) == ("cross_attn_kv", 0)
    assert ui_blocks.on_concepts_change("crimson", "object")["value"] == "color"  # the words tell
    assert "value" not in ui_blocks.on_concepts_change("van gogh", "style")  # they do not: the choice stays
    assert "value" not in ui_blocks.on_concepts_change("circle", "object")  # no change, no change event


def build_blocks_checked(host):
    blocks = ui_blocks.build_blocks(host)
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert {"ce_method", "ce_concepts", "ce_run", "ce_cancel", "ce_gallery", "ce_loss", "ce_saved"} <= ids
    return blocks


def unet_hash(unet) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def toy():
    path = toy_model_dir()
    if path is None:
        pytest.skip("the toy world model is not built yet (set CE_TOY_MODEL to a toy-world build's model/ folder)")
    from erasure_core.model import load_diffusers_model

    torch.set_num_threads(1)  # tiny model: threads only fight each other on a small shared CPU
    return load_diffusers_model(path)


def test_a_short_run_saves_and_shows_before_after(toy, tmp_path):
    host = Host(load_model=lambda: toy, out_dir=tmp_path, toy=True, log=lambda m: None)
    before_hash = unet_hash(toy.unet)
    calls = []
    outcome = EraseRunner(host).run("esd", "circle", "", "a red solid square", 2, 1e-4, "cross_attn", 0, 0,
                                    progress=lambda value, desc=None: calls.append((value, desc)))
    assert outcome.status.startswith("Done"), outcome.status
    saved = Path(outcome.saved_path)
    assert saved.exists() and saved.suffix == ".safetensors" and saved.parent.parent == tmp_path
    assert (2, 2) in [c[0] for c in calls] and any("step 2/2" in (c[1] or "") for c in calls)
    assert len(outcome.gallery) == 2 * 6  # 5 prompts with the concept + the 1 without, before and after
    assert outcome.gallery[0][1].startswith("before") and outcome.gallery[6][1].startswith("after")
    assert outcome.gallery[5][1] == "before · a red solid square"
    assert outcome.gallery[0][0].size[0] >= ui_blocks.DISPLAY_MIN_SIDE
    assert outcome.loss_image.size == (560, 260)
    assert unet_hash(toy.unet) == before_hash  # the input model is never modified
    assert any((c[1] or "").startswith("memory plan: ") for c in calls)  # shown before the work
    assert "Memory: " in outcome.status and "GiB planned on cpu" in outcome.status


def test_the_memory_plan_button_shows_the_plan_without_running(toy, tmp_path):
    host = Host(load_model=lambda: toy, out_dir=tmp_path, toy=True, log=lambda m: None)
    text = EraseRunner(host).plan("cg", "circle", "square", "", 300, 5e-4, "cross_attn", 0, 0)
    assert text.startswith("memory plan: ") and "activations (" in text and "cg, cross_attn full weights" in text
    assert EraseRunner(host).plan("cg", "", "", "", 300, 5e-4, "cross_attn", 0, 0).startswith("Error in concept")
    assert not list(tmp_path.iterdir())


def test_errors_and_cancel_show_in_the_status(toy, tmp_path):
    host = Host(load_model=lambda: toy, out_dir=tmp_path, toy=True, log=lambda m: None)
    runner = EraseRunner(host)
    bad = runner.run("esd", "dragon", "", "", 2, 1e-4, "cross_attn", 0, 0)
    assert bad.status.startswith("Error in concept") and "Fix:" in bad.status
    host.should_cancel = lambda: True  # e.g. the webui's Interrupt
    cancelled = runner.run("esd", "circle", "", "a red solid square", 2, 1e-4, "cross_attn", 0, 0)
    assert cancelled.status.startswith("Cancelled"), cancelled.status
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing written
    assert runner.cancel().startswith("Cancelling") and runner.cancel_event.is_set()


def test_one_run_at_a_time(tmp_path):
    runner = EraseRunner(Host(load_model=lambda: None, out_dir=tmp_path))
    runner._lock.acquire()
    try:
        assert "already running" in runner.run("esd", "x", "", "", 1, 1e-4, "all", 0, 0).status
    finally:
        runner._lock.release()


def test_summary_rounds_the_judges_figures():
    report = dict(concept="circle", method="dt", steps=300, seconds=72.4, total_seconds=96.0, final_loss=0.11,
                  erased_rate_before=1.0, erased_rate_after=0.0, preserved_acc_before=0.75,
                  preserved_acc_after=0.7083333333333334, alt_hit_rate_after=None, divergence=0.03821)
    text = ui_blocks.summary(report, None)
    assert "preserved accuracy: 0.750 → 0.708" in text and "erased rate (judge still sees the concept): 1.000 → 0.000" in text
    assert "alternative" not in text and "0.0382" in text

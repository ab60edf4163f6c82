"""End to end on the toy world, judged: the erasures work (reduced versions of the demo and table).

These are the slow tests (a few minutes together on a 2-core CPU).
"""
import json

import pytest

from erasure_core.__main__ import demo_dt_options, main
from erasure_core.jobs import run_erasure
from erasure_core.methods import CGConfig, DTConfig
from erasure_core.toyworld import evaluate as toy_eval

pytestmark = pytest.mark.slow


def test_demo_dt_erases_a_shape_and_preserves_the_rest(toy_model, judge, tmp_path):
    out = run_erasure(toy_model, "dt", DTConfig(**demo_dt_options()), tmp_path, judge=judge, log=lambda m: None)
    r = out.report
    assert r["erased_rate_before"] >= 0.90, r
    assert r["erased_rate_after"] <= 0.10, r
    assert r["preserved_acc_after"] >= r["preserved_acc_before"] - 0.05, r
    assert 0 <= r["divergence"] < 0.1
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("method", "concept", "erased_rate_before", "erased_rate_after", "preserved_acc_before",
                "preserved_acc_after", "divergence", "seconds", "steps"):
        assert key in saved
    assert out.erasure_path.exists() and out.grid_path.exists()


def test_cg_erases_and_the_alternative_takes_its_place(toy_model, judge, tmp_path):
    concept, alternative = "circle", "square"
    config = CGConfig(concepts=[concept], alternatives=[alternative], **toy_eval.toy_options([concept]), steps=200,
                      batch_size=16)
    r = run_erasure(toy_model, "cg", config, None, judge=judge, log=lambda m: None).report
    assert r["erased_rate_after"] <= 0.10, r
    assert r["alt_hit_rate_after"] >= 0.70, r
    assert r["preserved_acc_after"] >= r["preserved_acc_before"] - 0.05, r


def test_cli_erase_writes_the_three_files(tmp_path, capsys):
    code = main(["erase", "--method", "esd", "--concept", "cross", "--steps", "5", "--out", str(tmp_path)])
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["comparison.png", "erase_cross_esd.safetensors", "report.json"]
    assert "erased rate" in capsys.readouterr().out


def test_cli_erases_from_an_sdxl_folder(tmp_path, capsys, toy_xl_dir):
    """The command line on an SDXL diffusers folder writes kohya's SDXL file; the shipped XL toy world is also
    judged like the toy world."""
    from erasure_core.erasure_file import load_erasure
    from erasure_core.toyworld import XL_MODEL_DIR

    model = str(toy_xl_dir)
    code = main(["erase", "--method", "cg", "--concept", "circle", "--alternative", "square", "--model", model,
                 "--steps", "5", "--rank", "4", "--lr", "1e-3", "--out", str(tmp_path),
                 # one concept prompt and one other prompt: the before/after comparison draws two images, not 16
                 "--template", "a red solid {}", "--preserve", "a blue striped square"])
    assert code == 0
    tensors, meta = load_erasure(tmp_path / "erase_circle_cg.safetensors")
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in tensors)
    report = json.loads((tmp_path / "report.json").read_text())
    if model == str(XL_MODEL_DIR):  # the shipped XL toy world is scored by the judge
        assert report["erased_rate_before"] >= 0.9 and report["erased_rate_after"] is not None
    assert "training" in capsys.readouterr().out


def test_cli_reports_bad_input_by_field(capsys):
    assert main(["erase", "--method", "cg", "--concept", "circle", "--alternative", "circle", "--steps", "1"]) == 2
    assert "alternative: is the concept itself" in capsys.readouterr().err


class _Captured(BaseException):  # not an Exception: the CLI turns those into one-line errors
    pass


def test_cli_uses_the_defaults_per_kind_and_flags_override_them(monkeypatch):
    import erasure_core.jobs as jobs
    from erasure_core import defaults

    configs = []

    def capture(model, method, config, *args, **kwargs):
        configs.append(config)
        raise _Captured

    monkeypatch.setattr(jobs, "run_erasure", capture)
    for argv in (["--concept", "striped"], ["--concept", "striped", "--preserve-weight", "2", "--lr", "1e-4"],
                 ["--concept", "circle"], ["--concept", "red"]):
        with pytest.raises(_Captured):
            main(["erase", "--method", "dt", *argv])
    style, overridden, shape, color = configs
    for config, kind in ((style, "style"), (shape, "object"), (color, "color")):
        for key, value in defaults.settings("dt", kind).items():
            assert getattr(config, key) == value, (kind, key)
        assert config.kind == kind
    assert (overridden.lr, overridden.preserve_weight, overridden.grid) == (1e-4, 2.0, style.grid)
    assert color.chosen_degeneration() == "desaturate" and color.warnings()  # said before any work

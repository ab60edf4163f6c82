"""The XL toy world: the SDXL architecture in the diffusers layout, offline loading, size, the shared build code,
and the generation accuracy guard (the same judge and bar as the SD1 toy world)."""
import hashlib

import pytest
import torch

from erasure_core.toyworld import XL_ASSETS
from erasure_core.toyworld.evaluate import generation_accuracy


def test_loads_offline_with_plain_diffusers_as_sdxl(monkeypatch, toy_xl_dir):
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionXLPipeline.from_pretrained(toy_xl_dir, local_files_only=True)
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.config.force_zeros_for_empty_prompt
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    out = pipe("a red solid circle", num_inference_steps=3, guidance_scale=1.5, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


def test_shipped_size_and_build_info():
    if not (XL_ASSETS / "build_info.json").exists():
        pytest.skip(f"the trained XL toy world is not shipped ({XL_ASSETS})")
    size = sum(f.stat().st_size for f in XL_ASSETS.rglob("*") if f.is_file())
    assert size <= 30 * 2 ** 20, size
    info = (XL_ASSETS / "build_info.json").read_text()
    assert "toyworld-train --xl" in info and "threads" in info


def test_xl_build_is_deterministic_and_shares_the_sd1_training_loop(tmp_path):
    """Two tiny builds give the same bytes (the recipe plugs into the SD1 toy's own train_diffusion)."""
    from erasure_core.toyworld import build, build_xl

    assert build_xl.SDXL.make is build_xl.xl_modules and build_xl.train_diffusion is build.train_diffusion
    digests = []
    for run in ("a", "b"):
        build_xl.build_xl(tmp_path / run, diffusion_steps=2, batch=4, log=lambda m: None)
        h = hashlib.sha256()
        for f in sorted((tmp_path / run / "model").rglob("*.safetensors")):
            h.update(f.read_bytes())
        digests.append(h.hexdigest())
    assert digests[0] == digests[1]


def test_generation_accuracy_stays_above_the_bar(trained_xl_model, judge):
    """The README's XL table: two seeds per scene (96 images), bar 0.90 for shape, colour and fill."""
    acc = generation_accuracy(trained_xl_model, judge, seeds_per_scene=2)
    for key in ("gen_shape_acc", "gen_color_acc", "gen_style_acc"):
        assert acc[key] >= 0.90, (key, acc[key])


@pytest.mark.slow
def test_an_xl_erasure_is_judged_like_the_toy_worlds(trained_xl_model, judge):
    """The judged XL erasure: UCE's closed-form edit (seconds) of the held-out triangle into a cross, drawn with the
    same prompts, seeds and sampler as the SD1 quick subset and scored by the same judge, with its bars."""
    from erasure_core import defaults
    from erasure_core.methods import UCEConfig, erase_uce
    from erasure_core.toyworld import evaluate as toy_eval

    concept, alternative = "triangle", "cross"
    eval_set = toy_eval.make_eval_set(concept, seeds_per_prompt=1)
    before = toy_eval.generate(trained_xl_model, eval_set, paraphrases=False)
    config = UCEConfig(concepts=[concept], alternatives=[alternative],
                       **defaults.options_for("uce", [concept], toy=True))
    after = toy_eval.generate(trained_xl_model, eval_set, unet=erase_uce(trained_xl_model, config).tuned_unet,
                              paraphrases=False)
    original = toy_eval.score(judge, eval_set, before)
    erased = toy_eval.score(judge, eval_set, after, before=before, alternative=alternative)
    assert original["erased_rate"] >= 0.9, original
    assert erased["erased_rate"] <= 0.10 and erased["alt_hit_rate"] >= 0.70, erased
    assert erased["preserved_acc"] >= original["preserved_acc"] - 0.06, (original, erased)

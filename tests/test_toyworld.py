"""The toy world: judge accuracy, offline loading, deterministic sampling, generation accuracy guard."""
import numpy as np
import torch
from transformers import CLIPTokenizer

from erasure_core.defaults import settings
from erasure_core.sampling import sample_images
from erasure_core.toyworld import MODEL_DIR
from erasure_core.toyworld.draw import draw_batch
from erasure_core.toyworld.evaluate import generation_accuracy, sample_grid
from erasure_core.toyworld import judge as judge_mod
from erasure_core.toyworld.judge import heldout_accuracy
from erasure_core.toyworld.world import COLORS, SHAPES, STYLES, Scene, all_scenes, canonical_prompt, vocabulary_words


def test_every_word_is_one_token():
    tok = CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer", local_files_only=True)
    for word in vocabulary_words():
        assert len(tok(word).input_ids) == 3, word  # <bos> word <eos>


def test_drawing_is_deterministic():
    scenes = all_scenes()[:6]
    assert np.array_equal(draw_batch(scenes, 3), draw_batch(scenes, 3))
    assert not np.array_equal(draw_batch(scenes, 3), draw_batch(scenes, 4))


def test_judge_is_accurate_on_heldout_procedural_images(judge):
    acc = heldout_accuracy(judge)
    assert min(acc.values()) >= 0.98, acc


def test_loads_offline_with_plain_diffusers(monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, local_files_only=True)
    out = pipe("a red solid circle", num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


def test_sampling_is_deterministic_for_a_seed(toy_model):
    kw = dict(steps=10, guidance=4.0)
    a = sample_images(toy_model, ["a red solid circle", "a blue striped cross"], [1, 2], **kw)
    b = sample_images(toy_model, ["a blue striped cross"], [2], **kw)  # same seed, other batch
    c = sample_images(toy_model, ["a red solid circle"], [3], **kw)
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert (a[0] - c[0]).abs().mean() > 1e-3


def test_generation_accuracy_stays_above_the_bar(toy_model, judge):
    """Regression guard on the README's table: two seeds per scene (96 images, the same set).
    The issue's bar is 90% for shape, colour and fill; the shipped model gives 1.000 / 0.938 / 1.000 (the misread
    colours are dotted and striped greens the model drew olive to red)."""
    bars = {"gen_shape_acc": 0.90, "gen_color_acc": 0.90, "gen_style_acc": 0.90}
    acc = generation_accuracy(toy_model, judge, seeds_per_scene=2)
    for key, bar in bars.items():
        assert acc[key] >= bar, (key, acc[key])


def test_sample_grid_puts_each_scene_under_its_own_labels():
    scenes = [s for s in all_scenes() for _ in range(2)]
    images = torch.arange(len(scenes), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    rows, columns = sample_grid(images, scenes)
    assert columns == list(COLORS) and len(rows) == len(SHAPES) * len(STYLES)
    for label, row in rows:
        style, shape = label.split(" ", 1)
        for color, image in zip(columns, row):
            assert scenes[int(image[0, 0, 0])] == Scene(shape, color, style), (label, color)


def test_judge_colour_variation_stays_within_the_colours_name():
    """The judge's training recolours drawings: a varied colour is nearer its own name's hue than any other's and
    never grey; the canvas stays the canvas and the shape's inside takes the new colour."""
    import colorsys

    rng = np.random.default_rng(0)
    hues = {name: colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in judge_mod.RGB.items()}

    def hue_distance(a, b):
        return min(abs(a - b), 1 - abs(a - b))

    for name in COLORS:
        for _ in range(50):
            h, s, _ = colorsys.rgb_to_hsv(*judge_mod.jittered_colour(name, rng))
            assert min(hues, key=lambda other: hue_distance(h, hues[other])) == name
            assert s > 0.3
    drawing = draw_batch([Scene("square", "red", "solid")], 0)[0]
    new = np.array([0.1, 0.6, 0.2], dtype=np.float32)
    recoloured = judge_mod.recolour(drawing, np.array(judge_mod.RGB["red"], dtype=np.float32), new)
    assert np.allclose(recoloured[0, 0], drawing[0, 0], atol=1e-6)  # a corner: canvas
    assert np.allclose(recoloured[16, 16], new, atol=0.1)  # the centre: inside the square


def test_judge_reads_noise_scrambles_and_blanks_as_none(judge):
    """Worst case over every scramble grid (2..32) and noise block size (1..16 px), on images never trained on:
    no shape in a scramble, no fill once the patches are smaller than a stripe or a dot (so a scramble cannot pass
    for "dotted"), nothing at all in noise or an empty canvas; a scramble keeps its colour, a grey shape has none."""
    acc = judge_mod.negative_accuracy(judge)
    for key in ("scramble_shape_none", "scramble_fill_none", "noise_none", "blank_none"):
        assert acc[key] >= 0.95, (key, acc)
    for key in ("scramble_color_kept", "grey_color_none"):
        assert acc[key] >= 0.90, (key, acc)


def _dts_scrambles(toy_model, scenes, grid):
    """The frozen model's own generations of `scenes`, and Degeneration-Tuning's training images made from them: two
    scrambles of each at `grid`, passed through the VAE exactly as DT builds them, with the scene each one shows."""
    from erasure_core.methods.dt import scrambled_latents

    images = sample_images(toy_model, [canonical_prompt(s) for s in scenes], list(range(len(scenes))), steps=25,
                           guidance=1.5)
    latents, index = scrambled_latents(toy_model, images, grid, 2, torch.Generator().manual_seed(0))
    return images, toy_model.decode_latents(latents).cpu(), [scenes[i] for i in index.tolist()]


def test_dts_own_fill_scrambles_read_as_no_fill(toy_model, judge):
    """A fill's scrambles (the fills' grid: single pixels) show no shape and no fill."""
    scenes = [Scene(shape, "red" if i % 2 else "blue", style) for i, shape in enumerate(SHAPES)
              for style in ("dotted", "striped")]
    images, scrambles, _ = _dts_scrambles(toy_model, scenes, settings("dt", "style")["grid"])
    assert judge.predict(images)["style"] == [s.style for s in scenes]  # the originals read as their fill
    pred = judge.predict(scrambles)
    assert np.mean([p == "none" for p in pred["style"]]) >= 0.9, pred["style"]
    assert np.mean([p == "none" for p in pred["shape"]]) >= 0.9, pred["shape"]


def test_dts_own_object_scrambles_read_as_no_shape_in_their_colour(toy_model, judge):
    """An object's scrambles (DT's object grid, 4 x 4) show no shape; every pixel keeps its colour, so they read as
    the colour they were drawn in, green included."""
    scenes = [Scene("circle", color, style) for color in COLORS for style in STYLES]
    images, scrambles, shown = _dts_scrambles(toy_model, scenes, settings("dt", "object")["grid"])
    assert judge.predict(images)["shape"] == ["circle"] * len(scenes)  # the originals read as circles
    pred = judge.predict(scrambles)
    assert pred["shape"] == ["none"] * len(shown), pred["shape"]
    assert np.mean([p == s.color for p, s in zip(pred["color"], shown)]) >= 0.9, pred["color"]

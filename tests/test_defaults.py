"""One source of defaults: the library's configs, the command line, the tab and the nodes start from
erasure_core/defaults.py, per method and kind of concept."""
import dataclasses

import pytest

from erasure_core import defaults
from erasure_core.methods import METHODS, DTConfig


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_config_default_is_the_object_setting(method):
    fields = {f.name: f.default for f in dataclasses.fields(METHODS[method][0])}
    for key, value in defaults.settings(method, "object").items():
        assert fields[key] == value, (method, key)


def test_steps_and_batch_are_the_measured_ones_everywhere():
    for method in METHODS:
        for kind in defaults.KINDS:
            chosen = defaults.settings(method, kind)
            assert (chosen["steps"], chosen["batch_size"]) == (defaults.STEPS, defaults.BATCH_SIZE)


def test_kind_from_the_words():
    assert defaults.guess_kind(["circle"]) == "object" and defaults.guess_kind(["disc"]) == "object"
    assert defaults.guess_kind(["stripy"]) == "style" and defaults.guess_kind(["scarlet"]) == "color"
    assert defaults.guess_kind(["light blue"]) == "color" and defaults.guess_kind(["Van Gogh"]) == "object"
    assert defaults.kind_from_words(["Van Gogh"]) is None and defaults.kind_from_words(["circle", "red"]) is None


def test_options_for_a_kind_and_the_toy_world():
    style = defaults.options_for("dt", ["striped"], toy=True)
    assert style["kind"] == "style" and style["grid"] == defaults.SETTINGS["dt"]["style"]["grid"]
    assert all("striped" not in p for p in style["preserve_prompts"]) and style["guidance"] == 1.5
    assert defaults.options_for("dt", ["Van Gogh"], kind="style")["grid"] == defaults.SETTINGS["dt"]["style"]["grid"]
    config = DTConfig(concepts=["Van Gogh"], **defaults.options_for("dt", ["Van Gogh"]))
    config.validate()


def test_dt_says_before_training_that_it_does_not_erase_a_colour():
    warning, = DTConfig(concepts=["red"], degeneration="scramble").warnings()
    assert "does not erase a colour" in warning and "keeps their colour" in warning and "cg" in warning
    warning, = DTConfig(concepts=["crimson"]).warnings()  # the colour default, desaturate, says what it measured
    assert "'desaturate'" in warning and "0.625" in warning
    assert DTConfig(concepts=["circle"]).warnings() == []
    assert DTConfig(concepts=["my hat"], kind="color", degeneration="scramble").warnings()  # the user said so


def test_every_sd15_default_fits_an_8_gb_gpu_without_changing_the_result():
    """The memory plan of every method's default for every kind, on SD1.5 at 512 px on a GPU with 8 GiB free:
    it fits as it is or with result-neutral changes only (gradient checkpointing, micro-batches)."""
    from erasure_core.memory import GiB, ShapeOnlyModel, fit, plan_memory

    model = ShapeOnlyModel.sd15()
    for method, (config_cls, _) in METHODS.items():
        for kind in defaults.KINDS:
            config = config_cls(concepts=["x"], **defaults.settings(method, kind))
            config.validate()
            fitted, plan = fit(model, method, config, plan_memory(model, method, config, available=8 * GiB))
            assert plan.fits, (method, kind)
            assert all(c.startswith(("micro-batches", "gradient checkpointing")) for c in plan.changes), \
                (method, kind, plan.changes)

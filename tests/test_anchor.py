"""Where a concept without an alternative goes (cg, ca, uce): the empty prompt, or its prompt without the
concept's words; the kind's default, and the warnings every host shows before training."""
import pytest

from erasure_core import defaults
from erasure_core.errors import ErasureInputError
from erasure_core.methods import CAConfig, CGConfig, DTConfig, UCEConfig
from erasure_core.methods.common import without_concept


def test_without_concept_takes_the_words_out():
    assert without_concept("a red {} circle") == "a red circle"
    assert without_concept("{}, oil painting") == ", oil painting"
    assert without_concept("{}") == ""


def test_prompt_pairs_follow_the_anchor():
    templates = ["a red {} circle", "a photo of {}"]
    empty = CGConfig(concepts=["dotted", "square"], alternatives=[None, "circle"], templates=templates)
    empty.validate()
    assert empty.prompt_pairs() == (["a red dotted circle", "a photo of dotted", "a red square circle",
                                     "a photo of square"], [None, None, "a red circle circle", "a photo of circle"])
    without = CGConfig(concepts=["dotted"], templates=templates, anchor="without concept")
    without.validate()  # fills in one alternative (None) per concept
    assert without.prompt_pairs() == (["a red dotted circle", "a photo of dotted"], ["a red circle", "a photo of"])


@pytest.mark.parametrize("config_cls", [CGConfig, CAConfig, UCEConfig])
def test_an_unknown_anchor_is_refused_by_name(config_cls):
    with pytest.raises(ErasureInputError) as err:
        config_cls(concepts=["dotted"], anchor="nowhere").validate()
    assert err.value.field == "anchor" and "without concept" in str(err.value)


def test_the_kinds_defaults():
    for method in ("cg", "ca", "uce"):
        assert defaults.options_for(method, ["striped"])["anchor"] == "without concept"
        assert defaults.options_for(method, ["circle"])["anchor"] == "empty"
        assert defaults.options_for(method, ["red"])["anchor"] == "empty"
        assert defaults.options_for(method, ["Van Gogh"], kind="style")["anchor"] == "without concept"


def test_warnings_say_what_an_attribute_without_alternative_becomes():
    # the measured defaults of a style: no warning; its former anchor: the object goes, and the fix is named
    assert CGConfig(concepts=["striped"], **defaults.settings("cg", "style"), kind="style").warnings() == []
    warning, = UCEConfig(concepts=["Van Gogh"], kind="style", anchor="empty").warnings()
    assert "'Van Gogh'" in warning and "set the anchor to 'without concept'" in warning
    # a colour: neither anchor erases it and keeps the object; the advice is an alternative colour
    warning, = CGConfig(concepts=["red"]).warnings()
    assert "name another colour as the alternative" in warning
    warning, = CAConfig(concepts=["red"], anchor="without concept").warnings()
    assert "0.583" in warning and "another colour" in warning
    # with an alternative, or for an object, or for a method without an anchor: nothing to say
    assert CGConfig(concepts=["red"], alternatives=["green"]).warnings() == []
    assert CGConfig(concepts=["circle"]).warnings() == []
    assert DTConfig(concepts=["striped"], kind="style", anchor="empty").warnings() == []


def test_every_host_takes_the_kinds_anchor():
    """The tab and the command line start from the kind's settings (defaults.options_for), anchor included."""
    from erasure_core import __main__ as cli
    from erasure_core.ui_blocks import build_config

    style = build_config("cg", "striped", "", "", 300, 5e-4, "cross_attn", 0, 0, toy=True)
    assert style.anchor == "without concept"
    assert build_config("uce", "Van Gogh", "", "", 300, 1e-4, "cross_attn_kv", 0, 0, kind="style").anchor \
        == "without concept"
    assert build_config("cg", "circle", "", "", 300, 5e-4, "cross_attn", 0, 0, toy=True).anchor == "empty"
    args = cli.build_parser().parse_args(["erase", "--method", "cg", "--concept", "dotted",
                                          "--anchor", "without concept"])
    assert args.anchor == "without concept"

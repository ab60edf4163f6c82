"""How erasures are scored on the toy world: kept attributes, what concept prompts become, and multi-concept runs
(prompts "without the concept" show none of the run's concepts)."""
import json

import pytest

from erasure_core.__main__ import print_report
from erasure_core.jobs import run_erasure, worst_case
from erasure_core.methods import UCEConfig
from erasure_core.toyworld import evaluate as toy_eval
from erasure_core.toyworld.world import Scene


def test_prompts_without_the_concepts_show_none_of_them():
    single = toy_eval.make_eval_set("circle")
    both = toy_eval.make_eval_set("circle", erased=["circle", "stripy"])
    assert any(s.style == "striped" for s in single.other_scenes)
    assert both.other_scenes and not any(s.shape == "circle" or s.style == "striped" for s in both.other_scenes)
    assert both.concept_scenes == single.concept_scenes  # the concept's own prompts are the same


def test_kept_attributes_are_those_the_prompt_names_besides_the_erased():
    scenes = [Scene("circle", "red", "dotted"), Scene("square", "red", "striped")]
    pred = {"shape": ["circle", "none"], "color": ["none", "red"], "style": ["dotted", "striped"]}
    erased = [("color", "red")]
    assert toy_eval.kept_attributes(pred, scenes, erased) == [True, False]  # the second lost its shape
    assert toy_eval.kept_attributes(pred, scenes, erased + [("shape", "square")]) == [True, True]
    everything = [("shape", "circle"), ("color", "red"), ("style", "dotted")]
    assert toy_eval.kept_attributes(pred, scenes[:1], everything) == []  # nothing left to keep


def test_becomes_counts_shape_other_shape_texture_and_empty():
    scenes = [Scene("circle", "red", "solid")] * 4
    pred = {"shape": ["circle", "square", "none", "none"], "color": ["red", "red", "red", "none"],
            "style": ["solid"] * 4}
    assert toy_eval.becomes(pred, scenes) == {"same_shape": 1, "other_shape": 1, "texture": 1, "empty": 1}


def test_worst_case_over_concepts():
    per = {"a": {"erased_rate_after": 0.1, "preserved_acc_after": 0.9, "kept_rate_after": None, "divergence": 0.01},
           "b": {"erased_rate_after": 0.3, "preserved_acc_after": 0.95, "kept_rate_after": 0.5, "divergence": 0.02}}
    worst = worst_case(per)
    assert (worst["erased_rate_after"], worst["preserved_acc_after"], worst["kept_rate_after"]) == (0.3, 0.9, 0.5)
    assert worst["divergence"] == 0.02 and worst["alt_hit_rate_after"] is None


@pytest.mark.slow
def test_a_two_concept_run_reports_and_draws_every_concept(toy_model, judge, tmp_path, capsys):
    concepts = ["circle", "striped"]
    config = UCEConfig(concepts=concepts, alternatives=["square", "dotted"], **{
        k: v for k, v in toy_eval.toy_options(concepts).items()})
    out = run_erasure(toy_model, "uce", config, tmp_path, judge=judge, log=lambda m: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["per_concept"]) == set(concepts)
    for scores in report["per_concept"].values():
        assert scores["erased_rate_before"] >= 0.9 and scores["alt_hit_rate_after"] is not None
    assert report["erased_rate_after"] == max(s["erased_rate_after"] for s in report["per_concept"].values())
    assert report["eval"]["other_prompts"] == len(toy_eval.make_eval_set("circle", erased=concepts).other_prompts)
    from PIL import Image

    assert Image.open(out.grid_path).height == 6 * (32 * 3 + 4) + 4  # rows: each concept before/after, then without
    print_report(report)
    printed = capsys.readouterr().out
    assert "'circle'" in printed and "'striped'" in printed

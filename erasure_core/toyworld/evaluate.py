"""Measuring the toy model and erasures on it with the judge (methods.md, "How quality is judged").

One fixed prompt/seed set per concept; every method is scored on the same images' prompts,
seeds and judge:
- erased_rate: share of concept prompts whose image the judge still reads as the concept
- preserved_acc: share of prompts without the concept whose shape, colour and style all read right
- divergence: mean per-pixel |after - before| (0..1) of same-seed images of prompts without the concept
- alt_hit_rate: share of concept prompts whose image reads as the alternative
- alt_ceiling: the original model's alt_hit_rate when asked for the alternative itself (the concept prompts with
  the alternative in the concept's place, same seeds): the most an erasure towards it can be expected to hit, as
  the toy model draws some alternatives (its dull, dotted greens) less surely than others
- paraphrase_erased_rate: erased_rate on other wordings of the concept the toy model knows
- kept_rate: share of concept prompts whose image keeps every attribute the prompt names besides the erased
  concept(s) right ("a red dotted circle" with "dotted" erased still reads as a red circle)
- becomes: what the concept prompts' images show, as counts: their own shape, another shape, texture (no
  shape but a colour: a scramble) or nothing (the empty canvas)
In a run that erases several concepts, "prompts without the concept" are the prompts with none of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import ErasureInputError
from ..sampling import sample_images
from .world import ATTRIBUTE_TABLES, COLORS, NONE, SHAPES, STYLES, Scene, all_scenes, canonical_prompt, find_concept

TABLES = ATTRIBUTE_TABLES
# The toy model's sampler: DDIM 25 steps, CFG 1.5. Measured over CFG 1.0-4.0 and 25/50 steps (README "The toy
# world"): colour accuracy falls as guidance rises (0.990 at CFG 1.0, 0.938 at 1.5, 0.80 at 2.0), because the
# empty prompt means the empty canvas and guidance pushes colours away from it. 1.5 rather than 1.0 because
# with CFG 1.0 the unconditional branch, and so a negative prompt, has no effect at all.
EVAL_GUIDANCE = 1.5
EVAL_STEPS = 25


def parse_concept(text: str) -> tuple[str, str]:
    """'disc' -> ('shape', 'circle'): which attribute a toy-world word names, and its canonical name."""
    found = find_concept(text)
    if found is None:
        known = sorted(w for table in TABLES.values() for ws in table.values() for w in ws)
        raise ErasureInputError("concept", f"{text!r} is not something the toy world knows",
                                f"use one of: {', '.join(known)}")
    return found


def _scene_prompt(scene: Scene, attribute: str, word: str | None = None) -> str:
    return canonical_prompt(scene, shape_word=word if attribute == "shape" else None,
                            style_word=word if attribute == "style" else None)


def concept_templates(concept: str) -> list[str]:
    """Training prompt templates ("{}" = the concept) covering every other attribute combination."""
    attribute, _ = parse_concept(concept)
    if attribute == "shape":
        return [f"a {COLORS[c][0]} {STYLES[s][0]} {{}}" for c in COLORS for s in STYLES]
    if attribute == "style":
        return [f"a {COLORS[c][0]} {{}} {SHAPES[s][0]}" for c in COLORS for s in SHAPES]
    return [f"a {{}} {STYLES[s][0]} {SHAPES[sh][0]}" for s in STYLES for sh in SHAPES]


def toy_options(concepts: list[str]) -> dict:
    """EraseConfig options for the toy world: its own prompts for each concept and its sampler."""
    return {"templates": {c: concept_templates(c) for c in concepts}, "preserve_prompts": preserve_prompts(concepts),
            "guidance": EVAL_GUIDANCE, "sample_steps": EVAL_STEPS}


def preserve_prompts(concepts: list[str]) -> list[str]:
    """Prompts of every scene that shows none of `concepts`."""
    parsed = [parse_concept(c) for c in concepts]
    return [canonical_prompt(s) for s in all_scenes() if not any(getattr(s, a) == n for a, n in parsed)]


ATTRIBUTES = ("shape", "color", "style")


@dataclass
class EvalSet:
    """Fixed prompts and seeds for judging an erasure of one toy-world concept."""

    attribute: str
    concept: str  # canonical name
    concept_scenes: list[Scene]
    concept_prompts: list[str]
    concept_seeds: list[int]
    other_scenes: list[Scene]
    other_prompts: list[str]
    other_seeds: list[int]
    paraphrase_prompts: list[str] = field(default_factory=list)
    paraphrase_seeds: list[int] = field(default_factory=list)
    erased: list[tuple[str, str]] = field(default_factory=list)  # (attribute, name) of every concept of the run


def make_eval_set(concept: str, seeds_per_prompt: int = 2, seed: int = 1000,
                  erased: list[str] | None = None) -> EvalSet:
    """The concept's prompts (every scene that shows it), its paraphrases, and the prompts that show none of the
    run's erased concepts (`erased`, default: the concept alone)."""
    attribute, name = parse_concept(concept)
    erased_names = list(dict.fromkeys([(attribute, name)] + [parse_concept(c) for c in erased or []]))
    scenes = all_scenes()
    inside = [s for s in scenes if getattr(s, attribute) == name]
    outside = [s for s in scenes if not any(getattr(s, a) == n for a, n in erased_names)]

    def expand(items):
        return [x for x in items for _ in range(seeds_per_prompt)]

    concept_scenes, other_scenes = expand(inside), expand(outside)
    paraphrases = TABLES[attribute][name][1:]
    para = [_scene_prompt(s, attribute, w) for w in paraphrases for s in inside]
    return EvalSet(
        attribute=attribute, concept=name,
        concept_scenes=concept_scenes, concept_prompts=[canonical_prompt(s) for s in concept_scenes],
        concept_seeds=[seed + i for i in range(len(concept_scenes))],
        other_scenes=other_scenes, other_prompts=[canonical_prompt(s) for s in other_scenes],
        other_seeds=[seed + 10_000 + i for i in range(len(other_scenes))],
        paraphrase_prompts=para, paraphrase_seeds=[seed + 20_000 + i for i in range(len(para))],
        erased=erased_names,
    )


@dataclass
class EvalImages:
    concept: torch.Tensor
    other: torch.Tensor
    paraphrase: torch.Tensor


def generate(model, eval_set: EvalSet, unet=None, negative_prompt: str = "", paraphrases: bool = True) -> EvalImages:
    kw = dict(unet=unet, steps=EVAL_STEPS, guidance=EVAL_GUIDANCE, negative_prompt=negative_prompt)
    concept = sample_images(model, eval_set.concept_prompts, eval_set.concept_seeds, **kw)
    other = sample_images(model, eval_set.other_prompts, eval_set.other_seeds, **kw)
    para = (sample_images(model, eval_set.paraphrase_prompts, eval_set.paraphrase_seeds, **kw)
            if paraphrases and eval_set.paraphrase_prompts else torch.empty(0))
    return EvalImages(concept, other, para)


def kept_attributes(pred: dict[str, list[str]], scenes: list[Scene], erased: list[tuple[str, str]]) -> list[bool]:
    """Per image: every attribute its scene names, except the erased concepts, read right. Scenes whose every
    attribute was erased are left out."""
    kept = []
    for i, scene in enumerate(scenes):
        named = [a for a in ATTRIBUTES if (a, getattr(scene, a)) not in erased]
        if named:
            kept.append(all(pred[a][i] == getattr(scene, a) for a in named))
    return kept


def becomes(pred: dict[str, list[str]], scenes: list[Scene]) -> dict[str, int]:
    """What images of `scenes` show, as counts: their own shape, another shape, texture (no shape, but a colour)
    or nothing (no shape, no colour: the empty canvas)."""
    counts = {"same_shape": 0, "other_shape": 0, "texture": 0, "empty": 0}
    for shape, color, scene in zip(pred["shape"], pred["color"], scenes):
        if shape == scene.shape:
            counts["same_shape"] += 1
        elif shape != NONE:
            counts["other_shape"] += 1
        else:
            counts["texture" if color != NONE else "empty"] += 1
    return counts


def score(judge, eval_set: EvalSet, images: EvalImages, before: EvalImages | None = None,
          alternative: str | None = None) -> dict:
    attr = eval_set.attribute
    seen = judge.predict(images.concept)
    other = judge.predict(images.other)
    correct = [all(other[a][i] == getattr(s, a) for a in ATTRIBUTES) for i, s in enumerate(eval_set.other_scenes)]
    kept = kept_attributes(seen, eval_set.concept_scenes, eval_set.erased)
    result: dict = {
        "erased_rate": float(np.mean([p == eval_set.concept for p in seen[attr]])),
        "paraphrase_erased_rate": None,
        "preserved_acc": float(np.mean(correct)),
        "kept_rate": float(np.mean(kept)) if kept else None,
        "alt_hit_rate": None,
        "divergence": None,
        "becomes": becomes(seen, eval_set.concept_scenes),
    }
    if before is not None:
        result["divergence"] = float((images.other - before.other).abs().mean())
    if alternative:
        result["alt_hit_rate"] = alternative_hit_rate(seen, alternative)
    if images.paraphrase.numel():
        para_seen = judge.predict(images.paraphrase)[attr]
        result["paraphrase_erased_rate"] = float(np.mean([p == eval_set.concept for p in para_seen]))
    return result


def alternative_images(model, eval_set: EvalSet, alternative: str) -> torch.Tensor | None:
    """The original model's images of the concept prompts with the alternative in the concept's place (same scenes
    otherwise, same seeds); None when the alternative names another attribute than the concept."""
    alt_attr, alt_name = parse_concept(alternative)
    if alt_attr != eval_set.attribute:
        return None
    prompts = [canonical_prompt(replace(s, **{alt_attr: alt_name})) for s in eval_set.concept_scenes]
    return sample_images(model, prompts, eval_set.concept_seeds, steps=EVAL_STEPS, guidance=EVAL_GUIDANCE)


def alternative_hit_rate(pred: dict[str, list[str]], alternative: str) -> float:
    """Share of images the judge's predictions `pred` read as the alternative."""
    alt_attr, alt_name = parse_concept(alternative)
    return float(np.mean([p == alt_name for p in pred[alt_attr]]))


def generation_accuracy(model, judge, seeds_per_scene: int = 4, seed: int = 5000, unet=None) -> dict:
    """The toy model's own generations judged per attribute over every scene (canonical prompts)."""
    scenes = [s for s in all_scenes() for _ in range(seeds_per_scene)]
    prompts = [canonical_prompt(s) for s in scenes]
    seeds = [seed + i for i in range(len(scenes))]
    images = sample_images(model, prompts, seeds, unet=unet, steps=EVAL_STEPS, guidance=EVAL_GUIDANCE)
    pred = judge.predict(images)
    return {
        "gen_shape_acc": float(np.mean([p == s.shape for p, s in zip(pred["shape"], scenes)])),
        "gen_color_acc": float(np.mean([p == s.color for p, s in zip(pred["color"], scenes)])),
        "gen_style_acc": float(np.mean([p == s.style for p, s in zip(pred["style"], scenes)])),
        "samples": len(scenes),
        "images": images,
        "prompts": prompts,
        "scenes": scenes,
    }


def sample_grid(images: torch.Tensor, scenes: list[Scene]) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """Rows for a picture of generations: one row per (fill, shape), one column per colour, each cell the
    first image drawn for that scene; and the column labels."""
    first = {}
    for image, scene in zip(images, scenes):
        first.setdefault(scene, image)
    rows = [(f"{style} {shape}", torch.stack([first[Scene(shape, color, style)] for color in COLORS]))
            for shape in SHAPES for style in STYLES]
    return rows, list(COLORS)

"""The toy world under ControlNet: its control images, and judging generations made under control.

Two kinds of control image, both drawn from a shape's placement (draw.Placement):
- "outline": the shape's 1-px outline, white on black (an edge map). It fixes the shape, its
  position, size and rotation; not the colour, not the fill.
- "blob": a soft round blob where the shape sits, as wide as it is. It fixes position and size
  only: the same blob for every shape, so shape, colour and fill are all left to the prompt.
One toy ControlNet (erasure_core/toyworld/assets/controlnet) reads both.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from .draw import IMAGE_SIZE, BACKGROUND, Placement, blob_hint, draw_scene, outline_hint, random_placement
from .world import Scene, all_scenes, caption

CONTROL_KINDS = ("outline", "blob")
# What each kind fixes (beyond position and size); the rest is the prompt's.
FORCED = {"outline": ("shape",), "blob": ()}
CAPTION_DROPOUT = 0.5  # share of training examples with the empty prompt (as the ControlNet paper): the control alone
# must draw, which is what makes the control worth learning


def control_image(kind: str, shape: str, placement: Placement, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the control image of `kind` for a shape placed at `placement`."""
    if kind == "outline":
        return outline_hint(shape, placement, size)
    if kind == "blob":
        return blob_hint(placement, size)
    raise ValueError(f"unknown control kind {kind!r}; one of {CONTROL_KINDS}")


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) arrays -> (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def controlled_batch(rng: np.random.Generator, prng: random.Random, size: int,
                     caption_dropout: float = CAPTION_DROPOUT):
    """Training examples for the ControlNet: images (N,3,H,W) in [0,1], their control images (same
    layout) and captions. Kinds alternate; a share of captions is empty (the control alone draws)."""
    scenes = all_scenes()
    images, hints, captions = [], [], []
    for i in range(size):
        scene = scenes[prng.randrange(len(scenes))]
        placement = random_placement(scene.shape, rng)
        images.append(draw_scene(scene, rng, placement=placement))
        hints.append(control_image(CONTROL_KINDS[i % len(CONTROL_KINDS)], scene.shape, placement))
        captions.append("" if prng.random() < caption_dropout else caption(scene, prng))
    return to_tensor(images), to_tensor(hints), captions


def shape_centre(images: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """(N, 2) centre (x, y) in pixels of what differs from the canvas's background; NaN for an empty image."""
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    painted = ((images.float() - background).abs().amax(dim=1) > threshold).float()  # (N, H, W)
    size = images.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    mass = painted.sum(dim=(1, 2))
    cx = (painted.sum(dim=1) * coords).sum(dim=1) / mass
    cy = (painted.sum(dim=2) * coords).sum(dim=1) / mass
    return torch.stack([cx, cy], dim=1)


def placed_right(images: torch.Tensor, placements: list[Placement], tolerance: float = 2.0) -> list[bool]:
    """Whether each image's shape sits where its placement says: its painted pixels' centre within
    `tolerance` px of the placement's centre (every toy shape's centre of area is that centre)."""
    centres = shape_centre(images)
    out = []
    for (cx, cy), placement in zip(centres.tolist(), placements):
        out.append(bool(np.hypot(cx - placement.cx, cy - placement.cy) <= tolerance))
    return out


def controls_for(kind: str, scenes: list[Scene], seeds: list[int]) -> tuple[torch.Tensor, list[Placement]]:
    """One control image per (scene, seed): the scene's shape at a placement drawn from the seed, so the
    same prompt and seed always get the same control."""
    placements = [random_placement(s.shape, np.random.default_rng(int(seed))) for s, seed in zip(scenes, seeds)]
    images = [control_image(kind, s.shape, p) for s, p in zip(scenes, placements)]
    return to_tensor(images), placements


def sample_under_control(model, controlnet, kind: str, prompts: list[str], scenes: list[Scene], seeds: list[int],
                         **kwargs) -> torch.Tensor:
    """Images of `prompts` with the toy sampler, each driven by its scene's control image of `kind`
    (`kwargs`: sample_images' own, e.g. unet=, negative_prompt=)."""
    from ..sampling import sample_images
    from .evaluate import EVAL_GUIDANCE, EVAL_STEPS

    controls, _ = controls_for(kind, scenes, seeds)
    return sample_images(model, prompts, seeds, steps=EVAL_STEPS, guidance=EVAL_GUIDANCE, controlnet=controlnet,
                         control_image=controls, **kwargs)


def generate_under_control(model, eval_set, controlnet, kind: str, prompt: str | None = None,
                           concept_only: bool = False, **kwargs):
    """evaluate.EvalImages of an eval set's concept and other prompts (same seeds as without control) under
    control of `kind`. `prompt` replaces every prompt (e.g. "" to see what the control alone draws);
    `concept_only` skips the other prompts. No paraphrases. `kwargs` as sample_under_control's."""
    from .evaluate import EvalImages

    def run(prompts, scenes, seeds):
        prompts = prompts if prompt is None else [prompt] * len(prompts)
        return sample_under_control(model, controlnet, kind, prompts, scenes, seeds, **kwargs)

    concept = run(eval_set.concept_prompts, eval_set.concept_scenes, eval_set.concept_seeds)
    other = torch.empty(0) if concept_only else run(eval_set.other_prompts, eval_set.other_scenes,
                                                    eval_set.other_seeds)
    return EvalImages(concept=concept, other=other, paraphrase=torch.empty(0))


def controlnet_accuracy(model, controlnet, judge, seeds_per_scene: int = 2, seed: int = 7000) -> dict:
    """How well the ControlNet does what its control asks, per kind, over every scene (canonical prompts):
    shape / colour / fill judged right, and the shape placed where the control puts it; and with the
    empty prompt, what the control alone draws (outline: its shape; blob: something at its place).
    "picture": rows (label, images) of some of the controls and generations, for figures.labelled_rows."""
    from .world import canonical_prompt

    scenes = [s for s in all_scenes() for _ in range(seeds_per_scene)]
    seeds = [seed + i for i in range(len(scenes))]
    prompts = [canonical_prompt(s) for s in scenes]
    result: dict = {"samples_per_kind": len(scenes), "picture": []}
    shown = slice(0, len(scenes), max(1, len(scenes) // 12))  # 12 scenes of every kind in the picture
    for kind in CONTROL_KINDS:
        controls, placements = controls_for(kind, scenes, seeds)
        result["picture"].append((f"{kind}\ncontrol", controls[shown]))
        for label, texts in (("prompt", prompts), ("empty_prompt", [""] * len(prompts))):
            images = sample_under_control(model, controlnet, kind, texts, scenes, seeds)
            result["picture"].append((f"{kind}\n{label.replace('_', ' ')}", images[shown]))
            seen = judge.predict(images)
            row = {"placed": float(np.mean(placed_right(images, placements))),
                   "shape": float(np.mean([p == s.shape for p, s in zip(seen["shape"], scenes)]))}
            if label == "prompt":
                row["color"] = float(np.mean([p == s.color for p, s in zip(seen["color"], scenes)]))
                row["style"] = float(np.mean([p == s.style for p, s in zip(seen["style"], scenes)]))
            else:
                row["drawn"] = float(np.mean([p != "none" for p in seen["shape"]]))
            result[f"{kind}/{label}"] = row
    return result

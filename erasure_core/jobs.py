"""An erasure end to end: measure before, erase, measure after, write the three result files.

Used by the command line, the ComfyUI nodes and the Gradio tab alike. On the toy world the
judge scores the result; on a user's own model the grid is the evidence.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checks, figures
from .errors import ErasureInputError
from .methods import METHODS
from .methods.common import EraseConfig, ErasureResult, prepare
from .naming import erasure_stem, path_inside
from .progress import report as report_progress
from .safe_files import atomic_path
from .sampling import latent_shape_for, sample_images
from .trainable import delta_bytes
from .training import memory_advice

GENERIC_PRESERVE = ["a photo of a dog", "a landscape painting", "a city street", "a bowl of fruit"]
REPORT_PROMPTS = 8  # prompts with the concept, and as many without it, in the report's before/after images


@dataclass
class ReportImages:
    """The report's images: the same prompts and seeds before and after the erasure, (N, 3, H, W) in [0, 1]."""

    concept_prompts: list[str]
    other_prompts: list[str]
    concept_before: torch.Tensor | None = None
    other_before: torch.Tensor | None = None
    concept_after: torch.Tensor | None = None
    other_after: torch.Tensor | None = None


@dataclass
class ReportSettings:
    """What the report samples: its prompts (None: the first of the concept's and the preserve prompts),
    DDIM steps (0: no images at all, the fastest) and image size in pixels (None: the model's own)."""

    concept_prompts: list[str] | None = None
    other_prompts: list[str] | None = None
    steps: int = 25
    image_size: int | None = None


@dataclass
class JobOutput:
    result: ErasureResult
    report: dict
    erasure_path: Path | None
    grid_path: Path | None
    report_path: Path | None
    images: ReportImages | None = None
    control_grid_path: Path | None = None


def write_json(path: Path, data: dict) -> Path:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return Path(path)


def sample_report(model, config: EraseConfig, settings: ReportSettings) -> ReportImages | None:
    """The original model's report images (None when the settings ask for none)."""
    if settings.steps <= 0:
        return None
    concept_prompts = settings.concept_prompts or config.concept_prompts(config.concepts[0])[:REPORT_PROMPTS]
    other_prompts = settings.other_prompts or (list(config.preserve_prompts) or GENERIC_PRESERVE)[:REPORT_PROMPTS]
    images = ReportImages(list(concept_prompts), list(other_prompts))
    images.concept_before, images.other_before = report_pass(model, config, settings, images, None, "before")
    return images


def report_pass(model, config: EraseConfig, settings: ReportSettings, images: ReportImages, unet, when: str):
    """(concept images, other images) of the report's prompts through `unet` (None: the original's).

    Each group's seeds count from 0, so a prompt gets the same noise before and after."""
    prompts = images.concept_prompts + images.other_prompts
    seeds = list(range(len(images.concept_prompts))) + list(range(len(images.other_prompts)))
    drawn = sample_images(model, prompts, seeds, unet=unet, steps=settings.steps, guidance=config.guidance,
                          desc=f"sampling the '{when}' images",
                          latent_shape=latent_shape_for(model, settings.image_size, "report image size"))
    n = len(images.concept_prompts)
    return drawn[:n], drawn[n:]


def run_erasure(model, method: str, config: EraseConfig, out_dir: str | Path | None = None, judge=None,
                progress=None, should_cancel=None, log=print, control=None,
                report_settings: ReportSettings | None = None,
                save: Callable[[ErasureResult], Path] | None = None) -> JobOutput:
    """Erase with `method`; with `judge` (toy world) score before/after; write files into `out_dir`.

    The before/after images follow `report_settings` (with a judge: the toy world's evaluation set).
    `save(result) -> path` writes the erasure file where a host wants it (default: `out_dir`), so it
    is stored once. Each phase is reported through erasure_core.progress; training steps through
    `progress(step, total, loss)`.
    With `control` (erasure_core.controlnet.Control) the same prompts and seeds are also drawn before and
    after under that ControlNet and control image: `comparison_controlnet.png`, and with `judge` the erased
    rate under control in the report.
    """
    if method not in METHODS:
        raise ErasureInputError("method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    erase = METHODS[method][1]
    config.validate()
    erasure_path = None
    if out_dir is not None:  # every file's place checked before any work, so nothing is lost at save time
        if save is None:
            erasure_path = output_path(out_dir, config, method, model)
        else:
            checks.output_folder(out_dir)
    if control is not None:
        from .controlnet import check_controlnet_fits

        check_controlnet_fits(model, control.controlnet)
    config, plan = prepare(model, method, config)  # the memory plan: refused or fitted before any work
    if plan is not None:
        log(plan.describe())
    with memory_advice("drawing and judging the before/after images", getattr(model.device, "type", "cpu")):
        return _run(model, method, erase, config, out_dir, erasure_path, judge, progress, should_cancel, log, plan,
                    control, report_settings or ReportSettings(), save)


def output_path(out_dir: str | Path, config: EraseConfig, method: str, model=None) -> Path:
    """Where the erasure file of this job goes: directly inside `out_dir`, whatever the concept's text, in a
    folder that was tried for writing and has room for it."""
    name = f"{erasure_stem(config.concepts, method)}.safetensors"
    need = delta_bytes(model.unet, config.group, config.rank) + 2**20 if model is not None else 0
    folder = checks.output_folder(out_dir, need)
    return path_inside(folder, name, "concept")


def _run(model, method, erase, config, out_dir, erasure_path, judge, progress, should_cancel, log, plan,
         control, settings, save) -> JobOutput:
    concept = config.concepts[0]
    started = time.time()
    report: dict = {"method": method, "concept": ", ".join(config.concepts),
                    "alternative": ", ".join(a for a in config.alternatives if a) or None}

    if judge is not None:
        from .toyworld import evaluate as toy_eval

        eval_sets = [toy_eval.make_eval_set(c) for c in config.concepts]
        log(f"measuring the original model on {sum(len(e.concept_prompts) + len(e.other_prompts) for e in eval_sets)} "
            "prompts")
        report_progress("sampling the 'before' images", 0, 1)
        befores = [toy_eval.generate(model, e) for e in eval_sets]
        images = ReportImages(list(eval_sets[0].concept_prompts), list(eval_sets[0].other_prompts),
                              befores[0].concept, befores[0].other)
    else:
        images = sample_report(model, config, settings)

    log(f"erasing {report['concept']!r} with {method} ({config.steps} steps)")
    result = erase(model, config, progress=progress, should_cancel=should_cancel)
    report.update(seconds=round(result.seconds, 1), steps=result.steps, final_loss=round(result.losses[-1], 5))

    if judge is not None:
        per_concept = {}
        report_progress("sampling the 'after' images", 0, 1)
        for eval_set, before, name, alt in zip(eval_sets, befores, config.concepts, config.alternatives):
            after = toy_eval.generate(model, eval_set, unet=result.tuned_unet)
            score_before = toy_eval.score(judge, eval_set, before, alternative=alt)
            score_after = toy_eval.score(judge, eval_set, after, before=before, alternative=alt)
            scores = {"divergence": score_after["divergence"]}
            for key in ("erased_rate", "preserved_acc", "paraphrase_erased_rate", "alt_hit_rate"):
                scores[f"{key}_before"], scores[f"{key}_after"] = score_before[key], score_after[key]
            per_concept[name] = scores
            if name == concept:
                images.concept_after, images.other_after = after.concept, after.other
        report.update(per_concept[concept])
        if len(per_concept) > 1:
            report["per_concept"] = per_concept
        report["eval"] = {"concept_prompts": len(eval_sets[0].concept_prompts),
                          "other_prompts": len(eval_sets[0].other_prompts),
                          "paraphrase_prompts": len(eval_sets[0].paraphrase_prompts),
                          "sampler": f"DDIM {toy_eval.EVAL_STEPS} steps, CFG {toy_eval.EVAL_GUIDANCE}"}
    elif images is not None:
        images.concept_after, images.other_after = report_pass(model, config, settings, images, result.tuned_unet,
                                                               "after")
        report["divergence"] = float((images.other_after - images.other_before).abs().mean())
        report["report_sampler"] = f"DDIM {settings.steps} steps, CFG {config.guidance}, " \
                                   f"{images.other_before.shape[-1]} px"
    if plan is not None:
        report["memory_plan"] = {"total_bytes": plan.total, "new_bytes": plan.needed, "available_bytes": plan.available,
                                 "device": plan.device, "settings": plan.settings, "changed_to_fit": plan.changes,
                                 "parts_bytes": plan.parts}
    controlled = None
    if control is not None:
        report_progress("sampling under the ControlNet", 0, 1)
        controlled = _under_control(model, config, result.tuned_unet, control, judge)
        report["controlnet"] = controlled.pop("report")
    report["total_seconds"] = round(time.time() - started, 1)

    grid_path = report_path = control_grid_path = None
    report_progress("saving", 0, 1)
    if save is not None:
        erasure_path = save(result)
    elif erasure_path is not None:
        erasure_path = result.save(erasure_path)
    if out_dir is not None:
        out_dir = Path(out_dir)
        files = {}
        if erasure_path is not None:
            inside = erasure_path.parent.resolve() == out_dir.resolve()
            files["erasure"] = erasure_path.name if inside else str(erasure_path)
        if images is not None:
            grid_path = figures.comparison_grid(
                out_dir / "comparison.png", figures.spread(images.concept_before, 8),
                figures.spread(images.concept_after, 8), figures.spread(images.other_before, 8),
                figures.spread(images.other_after, 8), concept)
            files["grid"] = grid_path.name
        if controlled is not None:
            control_grid_path = figures.comparison_grid(out_dir / "comparison_controlnet.png", concept=concept,
                                                        **controlled)
            files["controlnet_grid"] = control_grid_path.name
        report["files"] = files
        report_path = write_json(out_dir / "report.json", report)
    report_progress("saving", 1, 1)
    return JobOutput(result, report, erasure_path, grid_path, report_path, images, control_grid_path)


def _under_control(model, config: EraseConfig, tuned_unet, control, judge) -> dict:
    """Up to 8 concept prompts and 8 others, before and after, under `control`; with `judge`, how many concept
    images still show the concept. Returns comparison_grid's image arguments and a "report" entry."""
    concept = config.concepts[0]
    concept_prompts = config.concept_prompts(concept)[:8]
    other_prompts = (list(config.preserve_prompts) or GENERIC_PRESERVE)[:8]
    images = {}
    for name, prompts in (("concept", concept_prompts), ("other", other_prompts)):
        seeds = list(range(len(prompts)))
        images[f"{name}_before"] = sample_images(model, prompts, seeds, **control.sampling_kwargs())
        images[f"{name}_after"] = sample_images(model, prompts, seeds, unet=tuned_unet, **control.sampling_kwargs())
    report: dict = {"concept_prompts": len(concept_prompts), "other_prompts": len(other_prompts),
                    "scale": control.scale}
    if judge is not None:
        from .toyworld import evaluate as toy_eval

        attribute, name = toy_eval.parse_concept(concept)
        for when in ("before", "after"):
            seen = judge.predict(images[f"concept_{when}"])[attribute]
            report[f"erased_rate_{when}"] = sum(p == name for p in seen) / len(seen)
    return {**images, "report": report}

"""An erasure end to end: measure before, erase, measure after, write the three result files.

Used by the command line, the ComfyUI nodes and the Gradio tab alike. On the toy world the
judge scores the result; on a user's own model the grid is the evidence.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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
    concept_of: list[str] = field(default_factory=list)  # the concept each concept prompt shows (in order)

    def rows_per_concept(self, columns: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(concept, before, after) for every concept of the run, `columns` images of each spread over its prompts."""
        rows = []
        for concept in dict.fromkeys(self.concept_of):
            index = [i for i, c in enumerate(self.concept_of) if c == concept]
            rows.append((concept, figures.spread(self.concept_before[index], columns),
                         figures.spread(self.concept_after[index], columns)))
        return rows


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


SCORE_KEYS = ("erased_rate", "paraphrase_erased_rate", "preserved_acc", "kept_rate", "alt_hit_rate")
# How to sum up several concepts in one number: the worst of them.
WORST = {"erased_rate": max, "paraphrase_erased_rate": max, "preserved_acc": min, "kept_rate": min,
         "alt_hit_rate": min, "divergence": max}


def worst_case(per_concept: dict[str, dict]) -> dict:
    """Each score of a multi-concept run as its worst value over the concepts (None where no concept has it)."""
    keys = [f"{k}_{when}" for k in SCORE_KEYS for when in ("before", "after")] + ["divergence"]
    out = {}
    for key in keys:
        values = [scores[key] for scores in per_concept.values() if scores.get(key) is not None]
        pick = WORST[key.removesuffix("_before").removesuffix("_after")]
        out[key] = pick(values) if values else None
    return out


def sample_report(model, config: EraseConfig, settings: ReportSettings) -> ReportImages | None:
    """The original model's report images (None when the settings ask for none): every concept's first prompts,
    then the prompts without any of them."""
    if settings.steps <= 0:
        return None
    if settings.concept_prompts:
        concept_prompts, concept_of = list(settings.concept_prompts), [", ".join(config.concepts)] * len(
            settings.concept_prompts)
    else:
        concept_prompts, concept_of = [], []
        for concept in config.concepts:
            prompts = config.concept_prompts(concept)[:REPORT_PROMPTS]
            concept_prompts += prompts
            concept_of += [concept] * len(prompts)
    other_prompts = settings.other_prompts or (list(config.preserve_prompts) or GENERIC_PRESERVE)[:REPORT_PROMPTS]
    images = ReportImages(concept_prompts, list(other_prompts), concept_of=concept_of)
    images.concept_before, images.other_before = report_pass(model, config, settings, images, None, "before")
    return images


def report_pass(model, config: EraseConfig, settings: ReportSettings, images: ReportImages, unet, when: str):
    """(concept images, other images) of the report's prompts through `unet` (None: the original's).

    Each prompt's seed is its place among the prompts of its concept (or among the others), so a prompt gets
    the same noise before and after."""
    prompts = images.concept_prompts + images.other_prompts
    seeds = [images.concept_of[:i].count(c) for i, c in enumerate(images.concept_of)]
    seeds += list(range(len(images.other_prompts)))
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

    Every concept of the run is measured and drawn: on the toy world, each concept's prompts, and the prompts that
    show none of the run's concepts (preserved accuracy).
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
    started = time.time()
    report: dict = {"method": method, "concept": ", ".join(config.concepts),
                    "alternative": ", ".join(a for a in config.alternatives if a) or None,
                    "warnings": config.warnings()}
    for warning in report["warnings"]:
        log(f"warning: {warning}")

    if judge is not None:
        from .toyworld import evaluate as toy_eval

        eval_sets = [toy_eval.make_eval_set(c, erased=config.concepts) for c in config.concepts]
        log(f"measuring the original model on {sum(len(e.concept_prompts) + len(e.other_prompts) for e in eval_sets)} "
            "prompts")
        report_progress("sampling the 'before' images", 0, 1)
        befores = [toy_eval.generate(model, e) for e in eval_sets]
        images = ReportImages([p for e in eval_sets for p in e.concept_prompts], list(eval_sets[0].other_prompts),
                              torch.cat([b.concept for b in befores]),
                              befores[0].other,  # the same prompts for every concept: those with none of them
                              concept_of=[c for c, e in zip(config.concepts, eval_sets) for _ in e.concept_prompts])
    else:
        images = sample_report(model, config, settings)

    log(f"erasing {report['concept']!r} with {method} ({config.steps} steps)")
    result = erase(model, config, progress=progress, should_cancel=should_cancel)
    report.update(seconds=round(result.seconds, 1), steps=result.steps, final_loss=round(result.losses[-1], 5))

    if judge is not None:
        per_concept, concept_after = {}, []
        report_progress("sampling the 'after' images", 0, 1)
        for eval_set, before, name, alt in zip(eval_sets, befores, config.concepts, config.alternatives):
            after = toy_eval.generate(model, eval_set, unet=result.tuned_unet)
            score_before = toy_eval.score(judge, eval_set, before, alternative=alt)
            score_after = toy_eval.score(judge, eval_set, after, before=before, alternative=alt)
            scores = {"divergence": score_after["divergence"], "becomes_after": score_after["becomes"]}
            for key in SCORE_KEYS:
                scores[f"{key}_before"], scores[f"{key}_after"] = score_before[key], score_after[key]
            per_concept[name] = scores
            concept_after.append(after.concept)
        images.concept_after, images.other_after = torch.cat(concept_after), after.other
        report.update(worst_case(per_concept) if len(per_concept) > 1 else per_concept[config.concepts[0]])
        report["per_concept"] = per_concept
        report["eval"] = {"concept_prompts": {c: len(e.concept_prompts) for c, e in zip(config.concepts, eval_sets)},
                          "other_prompts": len(eval_sets[0].other_prompts),
                          "paraphrase_prompts": {c: len(e.paraphrase_prompts) for c, e in zip(config.concepts, eval_sets)},
                          "sampler": f"DDIM {toy_eval.EVAL_STEPS} steps, CFG {toy_eval.EVAL_GUIDANCE}"}
        if len(per_concept) > 1:
            report["eval"]["summary"] = "top-level scores: the worst concept's"
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
        controlled = _under_control(model, config, result, control, judge)
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
            grid_path = figures.comparison_grid(out_dir / "comparison.png", images.rows_per_concept(8),
                                                figures.spread(images.other_before, 8),
                                                figures.spread(images.other_after, 8))
            files["grid"] = grid_path.name
        if controlled is not None:
            control_grid_path = figures.comparison_grid(
                out_dir / "comparison_controlnet.png",
                [(config.concepts[0], controlled["concept_before"], controlled["concept_after"])],
                controlled["other_before"], controlled["other_after"])
            files["controlnet_grid"] = control_grid_path.name
        report["files"] = files
        report_path = write_json(out_dir / "report.json", report)
    report_progress("saving", 1, 1)
    return JobOutput(result, report, erasure_path, grid_path, report_path, images, control_grid_path)


def _under_control(model, config: EraseConfig, result, control, judge) -> dict:
    """Up to 8 concept prompts and 8 others, before and after, under `control` (after: with the erasure applied to
    the ControlNet too, unless the control keeps it as is); with `judge`, how many concept images still show the
    concept. Returns comparison_grid's image arguments and a "report" entry."""
    tuned_unet, control_after = result.tuned_unet, control.for_erasure(result.state_dict)
    concept = config.concepts[0]
    concept_prompts = config.concept_prompts(concept)[:8]
    other_prompts = (list(config.preserve_prompts) or GENERIC_PRESERVE)[:8]
    images = {}
    for name, prompts in (("concept", concept_prompts), ("other", other_prompts)):
        seeds = list(range(len(prompts)))
        images[f"{name}_before"] = sample_images(model, prompts, seeds, **control.sampling_kwargs())
        images[f"{name}_after"] = sample_images(model, prompts, seeds, unet=tuned_unet,
                                                **control_after.sampling_kwargs())
    report: dict = {"concept_prompts": len(concept_prompts), "other_prompts": len(other_prompts),
                    "scale": control.scale, "controlnet_erased": control.erase_controlnet}
    if judge is not None:
        from .toyworld import evaluate as toy_eval

        attribute, name = toy_eval.parse_concept(concept)
        for when in ("before", "after"):
            seen = judge.predict(images[f"concept_{when}"])[attribute]
            report[f"erased_rate_{when}"] = sum(p == name for p in seen) / len(seen)
    return {**images, "report": report}

"""An erasure end to end: measure before, erase, measure after, write the three result files.

Used by the command line, the ComfyUI nodes and the Gradio tab alike. On the toy world the
judge scores the result; on a user's own model the grid is the evidence.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import checks, figures
from .errors import ErasureInputError
from .methods import METHODS
from .methods.common import EraseConfig, ErasureResult, prepare
from .naming import erasure_stem, path_inside
from .safe_files import atomic_path
from .sampling import sample_images
from .trainable import delta_bytes
from .training import memory_advice

GENERIC_PRESERVE = ["a photo of a dog", "a landscape painting", "a city street", "a bowl of fruit"]


@dataclass
class JobOutput:
    result: ErasureResult
    report: dict
    erasure_path: Path | None
    grid_path: Path | None
    report_path: Path | None
    control_grid_path: Path | None = None


def write_json(path: Path, data: dict) -> Path:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return Path(path)


def run_erasure(model, method: str, config: EraseConfig, out_dir: str | Path | None = None, judge=None,
                progress=None, should_cancel=None, log=print, control=None) -> JobOutput:
    """Erase with `method`; with `judge` (toy world) score before/after; write files into `out_dir`.

    With `control` (erasure_core.controlnet.Control) the same prompts and seeds are also drawn before and
    after under that ControlNet and control image: `comparison_controlnet.png`, and with `judge` the erased
    rate under control in the report."""
    if method not in METHODS:
        raise ErasureInputError("method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    erase = METHODS[method][1]
    config.validate()
    erasure_path = None
    if out_dir is not None:  # every file's place checked before any work, so nothing is lost at save time
        erasure_path = output_path(out_dir, config, method, model)
    config, plan = prepare(model, method, config)  # the memory plan: refused or fitted before any work
    if plan is not None:
        log(plan.describe())
    with memory_advice("drawing and judging the before/after images", getattr(model.device, "type", "cpu")):
        return _run(model, method, erase, config, out_dir, erasure_path, judge, progress, should_cancel, log, plan,
                    control)


def output_path(out_dir: str | Path, config: EraseConfig, method: str, model=None) -> Path:
    """Where the erasure file of this job goes: directly inside `out_dir`, whatever the concept's text, in a
    folder that was tried for writing and has room for it."""
    name = f"{erasure_stem(config.concepts, method)}.safetensors"
    need = delta_bytes(model.unet, config.group, config.rank) + 2**20 if model is not None else 0
    folder = checks.output_folder(out_dir, need)
    return path_inside(folder, name, "concept")


def _run(model, method, erase, config, out_dir, erasure_path, judge, progress, should_cancel, log, plan,
         control=None) -> JobOutput:
    concept = config.concepts[0]
    started = time.time()
    report: dict = {"method": method, "concept": ", ".join(config.concepts),
                    "alternative": ", ".join(a for a in config.alternatives if a) or None}

    if judge is not None:
        from .toyworld import evaluate as toy_eval

        eval_sets = [toy_eval.make_eval_set(c) for c in config.concepts]
        log(f"measuring the original model on {sum(len(e.concept_prompts) + len(e.other_prompts) for e in eval_sets)} "
            "prompts")
        befores = [toy_eval.generate(model, e) for e in eval_sets]
        concept_imgs, other_imgs = befores[0].concept, befores[0].other
    else:
        concept_prompts = config.concept_prompts(concept)[:8]
        other_prompts = (list(config.preserve_prompts) or GENERIC_PRESERVE)[:8]
        concept_imgs = sample_images(model, concept_prompts, list(range(len(concept_prompts))))
        other_imgs = sample_images(model, other_prompts, list(range(len(other_prompts))))

    log(f"erasing {report['concept']!r} with {method} ({config.steps} steps)")
    result = erase(model, config, progress=progress, should_cancel=should_cancel)
    report.update(seconds=round(result.seconds, 1), steps=result.steps, final_loss=round(result.losses[-1], 5))

    if judge is not None:
        per_concept = {}
        for eval_set, before, name, alt in zip(eval_sets, befores, config.concepts, config.alternatives):
            after = toy_eval.generate(model, eval_set, unet=result.tuned_unet)
            score_before = toy_eval.score(judge, eval_set, before, alternative=alt)
            score_after = toy_eval.score(judge, eval_set, after, before=before, alternative=alt)
            scores = {"divergence": score_after["divergence"]}
            for key in ("erased_rate", "preserved_acc", "paraphrase_erased_rate", "alt_hit_rate"):
                scores[f"{key}_before"], scores[f"{key}_after"] = score_before[key], score_after[key]
            per_concept[name] = scores
            if name == concept:
                concept_after, other_after = after.concept, after.other
        report.update(per_concept[concept])
        if len(per_concept) > 1:
            report["per_concept"] = per_concept
        report["eval"] = {"concept_prompts": len(eval_sets[0].concept_prompts),
                          "other_prompts": len(eval_sets[0].other_prompts),
                          "paraphrase_prompts": len(eval_sets[0].paraphrase_prompts),
                          "sampler": f"DDIM {toy_eval.EVAL_STEPS} steps, CFG {toy_eval.EVAL_GUIDANCE}"}
    else:
        concept_after = sample_images(model, concept_prompts, list(range(len(concept_prompts))), unet=result.tuned_unet)
        other_after = sample_images(model, other_prompts, list(range(len(other_prompts))), unet=result.tuned_unet)
        report["divergence"] = float((other_after - other_imgs).abs().mean())
    if plan is not None:
        report["memory_plan"] = {"total_bytes": plan.total, "new_bytes": plan.needed, "available_bytes": plan.available,
                                 "device": plan.device, "settings": plan.settings, "changed_to_fit": plan.changes,
                                 "parts_bytes": plan.parts}
    controlled = None
    if control is not None:
        controlled = _under_control(model, config, result.tuned_unet, control, judge)
        report["controlnet"] = controlled.pop("report")
    report["total_seconds"] = round(time.time() - started, 1)

    grid_path = report_path = control_grid_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        erasure_path = result.save(erasure_path)
        grid_path = figures.comparison_grid(
            out_dir / "comparison.png", figures.spread(concept_imgs, 8), figures.spread(concept_after, 8),
            figures.spread(other_imgs, 8), figures.spread(other_after, 8), concept)
        report["files"] = {"erasure": erasure_path.name, "grid": grid_path.name}
        if controlled is not None:
            control_grid_path = figures.comparison_grid(out_dir / "comparison_controlnet.png", concept=concept,
                                                        **controlled)
            report["files"]["controlnet_grid"] = control_grid_path.name
        report_path = write_json(out_dir / "report.json", report)
    return JobOutput(result, report, erasure_path, grid_path, report_path, control_grid_path)


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

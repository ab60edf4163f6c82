"""An audit of an erasure: attack the erased model, draw what the attack found on seeds the attack never saw,
and count how often the concept is back: the attack success rate (ASR).

Used by the command line (`python -m erasure_core audit`), the ComfyUI node and the Gradio tab alike. On the toy
world its judge reads the images; on any other model the original model reads them as a diffusion classifier
(erasure_core/diffusion_judge.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checks, figures
from .attacks import ATTACKS
from .attacks.common import EVAL_SEED_OFFSET, AttackConfig, AttackResult, ConceptLatents, concept_latents
from .attacks.text import require_one_context
from .diffusion_judge import DiffusionClassifier
from .errors import ErasureCancelled, ErasureInputError
from .safe_files import atomic_path
from .sampling import sample_latents

STRONGEST = 8  # attack images shown, those that show the concept most clearly first


def attack_config(attack: str, concept: str, **options) -> AttackConfig:
    """The named attack's config, every option checked before any work (None: the attack's default)."""
    if attack not in ATTACKS:
        raise ErasureInputError("attack", f"unknown attack {attack!r}", f"use one of {', '.join(ATTACKS)}")
    cls = ATTACKS[attack][0]
    unknown = [k for k, v in options.items() if v is not None and k not in cls.__dataclass_fields__]
    if unknown:
        raise ErasureInputError(unknown[0], f"the {attack} attack has no such option", "leave it out")
    config = cls(concept=concept, **{k: v for k, v in options.items() if v is not None})
    config.validate()
    return config


def toy_audit_options(concept: str) -> tuple[dict, list[str]]:
    """The toy world's own prompts and sampler for an audit of `concept`, and the other values of its attribute as
    the diffusion classifier's neutral words."""
    from .toyworld import evaluate as toy_eval

    attribute, name = toy_eval.parse_concept(concept)
    return {"templates": toy_eval.concept_templates(concept), "guidance": toy_eval.EVAL_GUIDANCE,
            "sample_steps": toy_eval.EVAL_STEPS}, [w for w in toy_eval.TABLES[attribute] if w != name]


@dataclass
class ImageReader:
    """Reads attack images as showing the concept or not, with a score (higher: shows it more clearly)."""

    name: str
    read: object  # (images (N,3,H,W), latents, template_index) -> (bool (N,), score (N,))


def toy_reader(judge, concept: str) -> ImageReader:
    """The toy world's judge: the concept's attribute read back as the concept; score = its probability."""
    from .toyworld.evaluate import parse_concept
    from .toyworld.judge import HEADS

    attribute, name = parse_concept(concept)
    column = HEADS[attribute].index(name)

    def read(images, latents, template_index):
        with torch.no_grad():
            probs = judge(images.float()).get(attribute).softmax(1)[:, column]
        predicted = judge.predict(images)[attribute]
        return torch.tensor([p == name for p in predicted]), probs
    return ImageReader("toy world judge", read)


def classifier_reader(classifier: DiffusionClassifier) -> ImageReader:
    return ImageReader(f"diffusion classifier (original model, {classifier.samples} noise samples, neutral "
                       f"{', '.join(repr(n) for n in classifier.neutral)})",
                       lambda images, latents, template_index: classifier.read(latents, template_index))


@torch.no_grad()
def attack_latents(erased, result: AttackResult, config: AttackConfig, per_template: int,
                   negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The erased model's images of each attack prompt on held-out seeds: (latents, template index, seeds)."""
    index = torch.arange(len(result.contexts)).repeat_interleave(per_template)
    seeds = [config.seed + EVAL_SEED_OFFSET + i for i in range(len(index))]
    latents = sample_latents(erased, [result.prompts[i] for i in index], seeds, steps=config.sample_steps,
                             guidance=config.guidance, negative_prompt=negative_prompt,
                             contexts=result.contexts[index.to(result.contexts.device)],
                             desc="the attack's images on held-out seeds")
    return latents, index, seeds


@dataclass
class AuditOutput:
    report: dict
    result: AttackResult
    images: torch.Tensor  # (N, 3, H, W): every attack image
    shows_concept: torch.Tensor  # (N,) bool, by the reader
    scores: torch.Tensor  # (N,)
    strongest: torch.Tensor  # the STRONGEST images with the highest scores
    files: dict = field(default_factory=dict)


def run_audit(original, erased, attack: str, config: AttackConfig, reader: ImageReader | None = None,
              per_template: int = 2, negative_prompt: str = "", neutral: list[str] | None = None,
              pool: ConceptLatents | None = None, out_dir: str | Path | None = None, second_reader: ImageReader | None = None,
              progress=None, should_cancel=None, log=print) -> AuditOutput:
    """Attack `erased` and measure the ASR. Both are DiffusionModels with the same text encoder and VAE: `original`
    draws the concept's images the attack learns from (and reads the attack images as a diffusion classifier),
    `erased` is attacked and draws the attack images (diffusers: `original.with_unet(erased_unet)`).

    `reader` reads the images (default: the original model as a diffusion classifier with `neutral` words);
    `second_reader` reads them too, and the report gives its ASR and its agreement with `reader`.
    `negative_prompt`: the erased model samples with it (the negative-prompt baseline).
    """
    config.validate()
    require_one_context(original, "the audit")
    per_template = checks.whole_number("images per template", per_template, 1, checks.MAX_PER_PROMPT, "use e.g. 2")
    if negative_prompt:
        negative_prompt = checks.prompt_text("negative prompt", negative_prompt)
    folder = checks.output_folder(out_dir) if out_dir is not None else None
    if reader is None:
        reader = classifier_reader(DiffusionClassifier(original, config.concept, config.templates, neutral or [""],
                                                       seed=config.seed))
    cancel = should_cancel or (lambda: False)
    started = time.time()
    if pool is None:
        log(f"drawing the original model's images of {config.concept!r} ({len(config.templates)} prompts × "
            f"{config.images_per_template})")
        pool = concept_latents(original, config)
    log(f"attacking with {attack} ({config.budget()})")
    result = ATTACKS[attack][1](erased, erased.unet, config, pool=pool, progress=progress, should_cancel=cancel)
    if cancel():
        raise ErasureCancelled("cancelled after the attack; nothing was written")
    log(f"drawing the attack's images on held-out seeds ({len(result.contexts)} prompts × {per_template})")
    latents, index, seeds = attack_latents(erased, result, config, per_template, negative_prompt)
    images = torch.cat([erased.decode_latents(latents[i:i + 32]) for i in range(0, len(latents), 32)]).cpu()
    shows, scores = reader.read(images, latents, index)
    order = scores.argsort(descending=True)[:STRONGEST]
    report = {"attack": attack, "concept": config.concept, "budget": config.budget(), "found": result.found,
              "prompts": result.prompts, "asr": round(float(shows.float().mean()), 4), "images": len(images),
              "judge": reader.name, "eval_seeds": [seeds[0], seeds[-1]], "negative_prompt": negative_prompt or None,
              "attack_seconds": round(result.seconds, 1), "loss_first": round(result.losses[0], 5),
              "loss_last": round(result.losses[-1], 5), **{k: v for k, v in result.extra.items()
                                                          if isinstance(v, (list, str, int, float))}}
    if second_reader is not None:
        other, _ = second_reader.read(images, latents, index)
        report["second_judge"] = second_reader.name
        report["second_asr"] = round(float(other.float().mean()), 4)
        report["agreement"] = round(float((other == shows).float().mean()), 4)
    report["total_seconds"] = round(time.time() - started, 1)
    out = AuditOutput(report, result, images, shows, scores, images[order])
    if folder is not None:
        out.files = write_audit(folder, out)
    return out


def strongest_grid(out: AuditOutput):
    """A PIL picture of the strongest attack images, labelled with the attack and its ASR."""
    label = f"{out.report['attack']}\nASR {out.report['asr']:.2f}"
    return figures.labelled_rows([(label, out.strongest)], scale=max(1, 96 // out.images.shape[-1]))


def write_audit(folder: Path, out: AuditOutput) -> dict[str, str]:
    """report.json, the strongest images, and a soft prompt's embedding (the A1111/ComfyUI embedding format)."""
    from safetensors.torch import save_file

    stem = f"audit_{out.report['attack']}"
    files = {"grid": figures.save_png(strongest_grid(out), folder / f"{stem}.png").name}
    if out.result.attack == "soft_prompt" and out.result.embedding is not None:
        path = folder / f"{stem}_embedding.safetensors"
        with atomic_path(path) as tmp:
            save_file({"emb_params": out.result.embedding.contiguous()}, str(tmp),
                      metadata={"concept_eraser.attack": "soft_prompt", "concept": out.report["concept"]})
        files["embedding"] = path.name
    out.report["files"] = files
    with atomic_path(folder / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(out.report, indent=2))
    files["report"] = f"{stem}.json"
    return files

"""Audit Erasure: attack an erased MODEL and measure how often the concept comes back (attack success rate)."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
from erasure_core.attacks import ATTACKS
from erasure_core.audit import attack_config, run_audit
from erasure_core.backends import comfy as backend
from erasure_core.errors import ErasureCancelled
from erasure_core.methods.common import DEFAULT_TEMPLATES
from erasure_core.progress import listen
from erasure_core.trainable import shared_copy

from .common import CATEGORY, lines, node_id, to_comfy_images
from .progress import Reporter

ATTACK_HELP = ("soft_prompt: learns token embeddings in the concept's place (textual inversion against the erasure); "
               "discrete_prompt: searches words put before the concept's prompt (UnlearnDiffAtk); concept_vector: adds "
               "the concept's text-embedding direction to prompts without it (Ring-A-Bell).")


class AuditErasure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_Audit", display_name="Audit Erasure", category=CATEGORY,
            description="Attack the erased MODEL (white-box) and measure the attack success rate: the share of the "
                        "attack's images, on seeds the attack never saw, that the ORIGINAL model reads as the concept "
                        "(a diffusion classifier: the concept's prompt predicts their noise better than the neutral "
                        "prompts). 0 means the erasure held.",
            inputs=[io.Model.Input("original", tooltip="The model before erasure."),
                    io.Model.Input("erased", tooltip="The erased model (e.g. an Erase Concept node's MODEL)."),
                    io.Clip.Input("clip"), io.Vae.Input("vae"),
                    io.String.Input("concept", default="", tooltip="The erased concept, e.g. 'a dog'."),
                    io.Combo.Input("attack", options=list(ATTACKS), default="soft_prompt", tooltip=ATTACK_HELP),
                    io.Int.Input("steps", default=ATTACKS["soft_prompt"][0].steps, min=1, max=10000,
                                 tooltip="The attack's budget: optimisation steps (concept_vector: loss batches per "
                                         "strength)."),
                    io.Int.Input("tokens", default=2, min=1, max=16,
                                 tooltip="The attack's budget: learnt embeddings (soft_prompt) or words "
                                         "(discrete_prompt). Ignored by concept_vector."),
                    io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES),
                                    tooltip="Prompt templates for the concept, one per line; {} is the concept."),
                    io.String.Input("neutral", multiline=True, default="",
                                    tooltip="Words put in the concept's place for the neutral prompts the judge "
                                            "compares with (one per line), e.g. 'a cat'. Empty: the concept left out."),
                    io.Int.Input("images_per_template", default=2, min=1, max=64,
                                 tooltip="Attack images per template, on held-out seeds (the ASR's sample)."),
                    io.Int.Input("sampling_steps", default=25, min=2, max=200, tooltip="DDIM steps per image."),
                    io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.5, tooltip="Classifier-free guidance."),
                    io.Int.Input("image_size", default=512, min=32, max=2048, step=32, tooltip="Image size in pixels."),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                                 tooltip="Seed of the attack (the ASR is measured on other seeds).")],
            outputs=[io.Float.Output(display_name="ASR", tooltip="Attack success rate, 0..1 (lower: a sturdier "
                                                                  "erasure)."),
                     io.Image.Output(display_name="images", tooltip="The attack images that show the concept most "
                                                                    "clearly, strongest first."),
                     io.String.Output(display_name="attack", tooltip="What the attack found: the words, the "
                                                                     "strength, or the learnt embeddings."),
                     io.Conditioning.Output(display_name="conditioning",
                                            tooltip="The attack's conditioning for the first template: wire it into a "
                                                    "KSampler with the erased MODEL to draw it yourself.")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, original, erased, clip, vae, concept, attack, steps, tokens, templates, neutral,
                images_per_template, sampling_steps, cfg, image_size, seed) -> io.NodeOutput:
        options = dict(templates=lines(templates), steps=int(steps), tokens=int(tokens), seed=int(seed),
                       sample_steps=int(sampling_steps), guidance=float(cfg))
        fields = ATTACKS[attack][0].__dataclass_fields__ if attack in ATTACKS else {}
        config = attack_config(attack, concept, **{k: v for k, v in options.items() if k in fields})
        reporter = Reporter(node_id(cls), "Audit", config.steps)
        with torch.inference_mode(False), torch.enable_grad(), listen(reporter.phase):
            before = backend.ComfyModel(original, clip, vae, image_size=int(image_size))
            # the attack back-propagates through a frozen copy of the erased UNet: the MODEL's own weights may be
            # inference tensors (ComfyUI's loaders run under inference mode), which autograd cannot save
            after = backend.ComfyModel(erased, clip, vae, image_size=int(image_size))
            after = after.with_unet(shared_copy(after.unet, []))
            try:
                out = run_audit(before, after, attack, config, per_template=int(images_per_template),
                                neutral=lines(neutral), progress=reporter, should_cancel=mm.processing_interrupted,
                                log=lambda m: (logging.info("[Concept Eraser] %s", m), reporter.text(f"Audit: {m}")))
            except ErasureCancelled:
                mm.throw_exception_if_processing_interrupted()  # report it as ComfyUI's own interruption
                raise
        report = out.report
        reporter.text(f"Audit: {attack} ASR {report['asr']:.2f} over {report['images']} images; found {report['found']}")
        images = to_comfy_images(out.strongest)
        conditioning = [[out.result.contexts[:1].detach().float().cpu(), {}]]
        return io.NodeOutput(float(report["asr"]), images, f"{report['found']} (ASR {report['asr']:.2f}; "
                             f"{report['budget']}; {report['judge']})", conditioning,
                             ui=ui.PreviewImage(images, cls=cls))

"""Erase Concept nodes: Degeneration-Tuning and classifier guidance, trained on the MODEL itself.

Both return a fresh MODEL (a clone carrying the erasure as patches: the cached input MODEL is
never written to), the erasure as a LORA_MODEL and the loss as a LOSS_MAP.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
from erasure_core.backends import comfy as backend
from erasure_core.defaults import BATCH_SIZE, STEPS, options_for
from erasure_core.degeneration import DEGENERATIONS
from erasure_core.errors import ErasureCancelled
from erasure_core.heap import return_free_heap
from erasure_core.methods import METHODS
from erasure_core.methods.cg import CGConfig
from erasure_core.methods.common import ANCHORS, DEFAULT_TEMPLATES, prepare
from erasure_core.methods.dt import DTConfig
from erasure_core.progress import listen
from erasure_core.trainable import GROUPS

from .common import CATEGORY, Dataset, ErasureLora, lines, node_id, pil_to_image
from .progress import Reporter, loss_curve_image


# -- inputs both nodes share (declared once, so both stay alike) ---------------------------------
def concept_inputs() -> list:
    return [
        io.String.Input("concept", multiline=True, default="",
                        tooltip="The concept to erase, e.g. 'Van Gogh' or 'a dog'. Several concepts: one per line."),
    ]


def training_inputs(steps: int, lr: float, group: str, rank: int | None = None) -> list:
    return [
        io.String.Input("preserve", multiline=True, default="",
                        tooltip="Prompts whose images must NOT change (one per line), e.g. related styles or "
                                "objects you want to keep."),
        io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES),
                        tooltip="Prompt templates for the concept, one per line; {} is replaced by the concept."),
        io.Int.Input("steps", default=steps, min=1, max=10000, tooltip="Training steps. More erases more firmly."),
        io.Float.Input("learning_rate", default=lr, min=1e-6, max=0.1, step=1e-5, round=False,
                       tooltip="AdamW learning rate. If the loss becomes NaN, divide it by 10."),
        io.Int.Input("rank", default=rank or 0, min=0, max=256,
                     tooltip="0 trains the chosen layers' full weights; r > 0 trains a LoRA of rank r (smaller file)."),
        io.Combo.Input("parameter_group", options=list(GROUPS), default=group,
                       tooltip="Which UNet layers change: cross_attn = the layers that read the text (surgical); "
                               "cross_attn_kv = only their keys/values; no_cross_attn = the rest; all = everything."),
        io.Int.Input("batch_size", default=BATCH_SIZE, min=1, max=64,
                     tooltip="Samples per training step (lower uses less memory)."),
        io.Int.Input("sampling_steps", default=25, min=2, max=200,
                     tooltip="Steps the original model takes to draw its own images of the prompts (done once, "
                             "before training)."),
        io.Int.Input("image_size", default=512, min=32, max=2048, step=32,
                     tooltip="Pixel size of those images. The model's native size is best (the toy world: 32); smaller is faster."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                     tooltip="Seed for the images, the noise and the training batches (same seed, same erasure)."),
    ]


def preserve_weight_input(default: float) -> io.Float.Input:
    # Last and optional: saved workflows list widget values by position, and API prompts name their inputs, so
    # those made before this input still run (with the method's default).
    return io.Float.Input("preserve_weight", default=default, min=0.0, max=100.0, step=0.5, optional=True,
                          tooltip="How strongly the preserve prompts keep the original model's predictions "
                                  "(0 turns that term off). Raise it when unrelated images change; the toy world's "
                                  "style erasures with Degeneration-Tuning used 16.")


OUTPUTS = [
    io.Model.Output(display_name="MODEL", tooltip="A new MODEL with the concept erased (the input MODEL is unchanged)."),
    io.LoraModel.Output(display_name="erasure",
                        tooltip="The erasure as LoRA tensors (kohya format): Save Erasure, core Save LoRA and "
                                "Load LoRA Model accept it."),
    io.LossMap.Output(display_name="loss", tooltip="The loss of every step (core Plot Loss Graph accepts it)."),
]


def common_config(concept, preserve, templates, steps, learning_rate, rank, parameter_group, batch_size,
                  sampling_steps, seed) -> dict:
    return dict(concepts=lines(concept), preserve_prompts=lines(preserve), templates=lines(templates),
                steps=int(steps), lr=float(learning_rate), rank=int(rank) or None, group=parameter_group,
                batch_size=int(batch_size), sample_steps=int(sampling_steps), seed=int(seed))


def run(cls, title: str, method: str, config, model, clip, vae, image_size: int) -> io.NodeOutput:
    """Train on a private copy of the MODEL's UNet; return a patched clone, the tensors and the loss."""
    config.validate()
    reporter = Reporter(node_id(cls), title, config.steps)
    warnings = config.warnings()  # shown before any work, and kept on the node: the user can still stop the run
    for warning in warnings:
        logging.warning("Concept Eraser: %s", warning)
    notes = "".join(f"Warning: {w}\n" for w in warnings)  # on every message from the first, before any work
    # ComfyUI executes under inference_mode; autograd needs it off (inputs are cloned inside the backend).
    # Cancel: the backend checks ComfyUI's interrupt at every UNet call, sampling included.
    with torch.inference_mode(False), torch.enable_grad(), listen(reporter.phase):
        model_api = backend.ComfyModel(model, clip, vae, image_size=int(image_size))
        config, plan = prepare(model_api, method, config)  # before any work: refused, or fitted and said so
        if plan is not None:
            logging.info("[Concept Eraser] %s", plan.describe())
            reporter.text(f"{notes}{title}: {plan.summary()}" + "".join(f"; changed to fit: {c}" for c in plan.changes))
        reporter.text(f"{notes}{title}: drawing the original model's images…")
        try:
            result = METHODS[method][1](model_api, config, progress=reporter, should_cancel=mm.processing_interrupted)
        except ErasureCancelled:
            mm.throw_exception_if_processing_interrupted()  # report it as ComfyUI's own interruption
            raise
    tensors = backend.to_diffusers_keys(result.state_dict, model)
    lora = ErasureLora(tensors, backend.portable_metadata(result.metadata, model))
    losses = list(result.losses)
    del result  # drop the trained UNet copy now; only the tensors live on
    mm.soft_empty_cache()
    return_free_heap()  # the server lives on: training's freed heap back to the OS
    fresh = backend.patched_clone(model, tensors)
    reporter.text(f"{notes}{title}: done, {len(losses)} steps, final loss {losses[-1]:.4f}")
    curve = pil_to_image(loss_curve_image(losses))
    return io.NodeOutput(fresh, lora, {"loss": losses}, ui=ui.PreviewImage(curve, cls=cls))


class EraseConceptDT(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_EraseDT", display_name="Erase Concept (Degeneration-Tuning)", category=CATEGORY,
            description="Erase a concept by teaching the model to draw scrambled noise for it (Degeneration-Tuning, "
                        "Ni et al. 2023), while preserve prompts keep their images. Needs the VAE. The concept "
                        "becomes texture, not another concept: to turn it into an alternative, use Erase Concept "
                        "(Classifier Guidance).",
            inputs=[io.Model.Input("model"), io.Clip.Input("clip"), io.Vae.Input("vae"), *concept_inputs(),
                    *training_inputs(STEPS, DTConfig.lr, DTConfig.group, DTConfig.rank),
                    io.Int.Input("grid", default=DTConfig.grid, min=2, max=512,
                                 tooltip="Scrambled grid size g (g×g patches); larger destroys more structure. 4 erases "
                                         "objects; for a style or texture, make the patches smaller than the texture "
                                         "(up to the image side: single pixels) and train cross_attn at lr 5e-4 "
                                         "with preserve_weight 16 (the toy world's fill settings). "
                                         "Ignored when a dataset is connected (its own grid is used)."),
                    io.Int.Input("images_per_prompt", default=DTConfig.images_per_prompt, min=1, max=64,
                                 tooltip="Images the original model draws per concept prompt (no dataset connected)."),
                    preserve_weight_input(DTConfig.preserve_weight),
                    Dataset.Input("dataset", optional=True,
                                  tooltip="Your own concept images from Scrambled Grid Dataset (optional)."),
                    io.Combo.Input("degeneration", options=["auto", *DEGENERATIONS], default="auto", optional=True,
                                   tooltip="What the concept's images become. scramble: the scrambled grid (objects, "
                                           "styles); it keeps every pixel's colour, so it cannot erase a colour. "
                                           "desaturate: the images in grey; it keeps the object, but on the toy "
                                           "world's tuning colour the colour stayed in 0.625 of the images, so "
                                           "to erase a colour use Classifier Guidance with another colour as the "
                                           "alternative. auto: desaturate when the concept is a colour word, "
                                           "else scramble.")],
            outputs=OUTPUTS, hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, model, clip, vae, concept, preserve, templates, steps, learning_rate, rank, parameter_group,
                batch_size, sampling_steps, image_size, seed, grid, images_per_prompt,
                preserve_weight=DTConfig.preserve_weight, dataset=None, degeneration="auto") -> io.NodeOutput:
        config = DTConfig(**common_config(concept, preserve, templates, steps, learning_rate, rank, parameter_group,
                                          batch_size, sampling_steps, seed),
                          grid=int(grid), images_per_prompt=int(images_per_prompt),
                          preserve_weight=float(preserve_weight), degeneration=degeneration)
        if dataset is not None:
            config.concept_images, config.grid = dataset["images"].clone(), int(dataset["grid"])
        return run(cls, "Degeneration-Tuning", "dt", config, model, clip, vae, image_size)


class EraseConceptCG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_EraseCG", display_name="Erase Concept (Classifier Guidance)", category=CATEGORY,
            description="Erase a concept surgically: its guidance is replaced by the alternative's (or removed), while "
                        "the model's unconditional behaviour is pinned (Hong et al. 2024). Needs no VAE.",
            inputs=[io.Model.Input("model"), io.Clip.Input("clip"), *concept_inputs(),
                    io.String.Input("alternative", multiline=True, default="",
                                    tooltip="What the concept's prompts should show instead, e.g. 'a cat' for 'a dog'. "
                                            "One line, or one per concept line. Empty: nothing specific."),
                    *training_inputs(STEPS, CGConfig.lr, CGConfig.group),
                    io.Int.Input("trajectories_per_prompt", default=CGConfig.trajectories_per_prompt, min=1, max=32,
                                 tooltip="Sampling runs of the original model per concept prompt used for training."),
                    io.Float.Input("drift_weight", default=CGConfig.drift_weight, min=0.0, max=100.0, step=0.1,
                                   tooltip="How strongly the model's unconditional prediction is held in place (λ)."),
                    preserve_weight_input(CGConfig.preserve_weight),
                    io.Combo.Input("anchor", options=["auto", *ANCHORS], default="auto", optional=True,
                                   tooltip="Without an alternative, what the concept's prompts become. 'without "
                                           "concept': the same prompt with the concept's words taken out, for a "
                                           "style or an attribute ('a red dotted circle' with 'dotted' erased stays "
                                           "a red circle). 'empty': the empty prompt, for an object (it goes with "
                                           "what it was drawn on). auto: the default of the kind the words name "
                                           "('without concept' for the fills the pack knows; 'empty' for objects "
                                           "and colours, and a colour then warns before training to name an "
                                           "alternative); choose 'without concept' for a style such as an "
                                           "artist's.")],
            outputs=OUTPUTS, hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, model, clip, concept, alternative, preserve, templates, steps, learning_rate, rank,
                parameter_group, batch_size, sampling_steps, image_size, seed, trajectories_per_prompt,
                drift_weight, preserve_weight=CGConfig.preserve_weight, anchor="auto") -> io.NodeOutput:
        base = common_config(concept, preserve, templates, steps, learning_rate, rank, parameter_group, batch_size,
                             sampling_steps, seed)
        alts = lines(alternative)
        if len(alts) == 1 and len(base["concepts"]) > 1:
            alts = alts * len(base["concepts"])  # one alternative for every concept
        if anchor == "auto":  # the default of the kind the words name (defaults.py)
            anchor = options_for("cg", base["concepts"])["anchor"]
        config = CGConfig(**base, alternatives=alts, trajectories_per_prompt=int(trajectories_per_prompt),
                          drift_weight=float(drift_weight), preserve_weight=float(preserve_weight), anchor=anchor)
        return run(cls, "Classifier-guidance erasure", "cg", config, model, clip, None, image_size)

"""What every erasure method shares: the request, its validation, and the result."""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import checks, erasure_file
from ..defaults import BATCH_SIZE, KINDS, MEMORY, STEPS, guess_kind
from ..errors import ErasureInputError
from ..layouts import file_layer_name
from ..naming import erasure_stem
from ..trainable import GROUPS, lora_layers, weight_deltas
from ..memory import MEMORY_MODES
from ..training import PRECISIONS, memory_advice

ANCHORS = ("empty", "without concept")


def without_concept(template: str) -> str:
    """The template's prompt with the concept taken out: "a red {} circle" -> "a red circle"."""
    return " ".join(template.replace("{}", " ").split())


# Generic prompt templates for a concept in a real model; "{}" is the concept.
DEFAULT_TEMPLATES = ("{}", "a photo of {}", "a painting of {}", "an image of {}", "a picture of {}, detailed")


@dataclass
class EraseConfig:
    """Options common to every method. Method configs extend it."""

    concepts: list[str]
    alternatives: list[str | None] = field(default_factory=list)  # one per concept, None = no alternative
    # Where a concept without an alternative is sent (cg, ca, uce): "empty", the empty prompt (the concept goes
    # with what it is drawn on: an object); "without concept", the same prompt with the concept's words taken out
    # ("a red dotted circle" -> "a red circle": an attribute goes, the object stays). README "Anchors".
    anchor: str = "empty"
    preserve_prompts: list[str] = field(default_factory=list)
    # Prompt templates with "{}" for the concept: one list for all concepts, or {concept: list}.
    templates: list[str] | dict[str, list[str]] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    steps: int = STEPS
    lr: float = 1e-4
    group: str = "cross_attn"
    rank: int | None = None  # None: full weights of the group; r: LoRA of rank r
    seed: int = 0
    batch_size: int = BATCH_SIZE
    micro_batch: int | None = MEMORY["micro_batch"]  # rows per UNet call (None: all); same update, less memory
    # Back-propagate a UNet call's row groups (concept, unconditional, preserve...) one at a time
    # (erasure_core/split_rows.py): one group's activations instead of all, for one more forward pass per step.
    split_rows: bool = False
    sample_steps: int = 25  # DDIM steps for the frozen model's own images/trajectories
    guidance: float = 7.5  # SD1.x's usual CFG; the toy world uses 1.5 (toyworld.evaluate.toy_options)
    # Speed/memory (bench/results/speed.md). checkpointing: recompute activations in the backward pass, less
    # memory for 1.2-1.6x the step time. precision: "auto" is bf16 autocast on CUDA and fp32 on CPU; "bf16" also
    # on CPU (faster for full-size models on CPUs with native bf16, slower on the toy world); fp32 masters always.
    checkpointing: bool | str = MEMORY["checkpointing"]  # "auto": on for CUDA, off on the CPU
    precision: str = MEMORY["precision"]
    # The memory plan (erasure_core/memory.py) is made before any work. "auto": when the run does not fit the
    # device's free memory, apply changes until it does (result-neutral ones first: checkpointing, micro-batches)
    # and say which; "check": refuse it, naming the changes that would fit; "off": no plan.
    memory: str = MEMORY["memory"]
    # What the concepts are (erasure_core/defaults.KINDS): picks the defaults a host fills in and the advice of
    # `warnings`; None = as far as the words tell (defaults.guess_kind).
    kind: str | None = None
    # The robust option (methods/robust.py; DT and CG): None (off), True, or an AdversarialConfig / its options.
    adversarial: object = None
    supports_adversarial = False  # a class attribute: the methods that have the robust option set it
    uses_anchor = False  # a class attribute: the methods that steer a concept without an alternative to `anchor`

    def validate(self) -> None:
        """Check every option before any work; an ErasureInputError names the field and the fix."""
        if isinstance(self.concepts, str):
            self.concepts = [self.concepts]
        if not self.concepts or not isinstance(self.concepts, (list, tuple)):
            raise ErasureInputError("concept", "is empty", "type the concept to erase, e.g. 'circle'")
        self.concepts = [checks.prompt_text("concept", c) for c in self.concepts]
        if not self.alternatives:
            self.alternatives = [None] * len(self.concepts)
        if len(self.alternatives) != len(self.concepts):
            raise ErasureInputError("alternative", f"{len(self.alternatives)} alternatives for {len(self.concepts)} "
                                    "concepts", "give one alternative per concept (or none at all)")
        self.alternatives = [checks.prompt_text("alternative", a) if isinstance(a, str) and a.strip() else None
                             for a in self.alternatives]
        for concept, alt in zip(self.concepts, self.alternatives):
            if alt is not None and alt.lower() == concept.lower():
                raise ErasureInputError("alternative", f"is the concept itself ({alt!r})",
                                        "name a different concept, or leave the alternative empty")
        if self.anchor not in ANCHORS:
            raise ErasureInputError("anchor", f"unknown anchor {self.anchor!r}", f"use one of {', '.join(ANCHORS)}")
        self.preserve_prompts = [checks.prompt_text("preserve prompts", p, "leave the line out")
                                 for p in self.preserve_prompts if isinstance(p, str) and p.strip()]
        for concept in self.concepts:
            templates = self.templates_for(concept)
            if not templates:
                raise ErasureInputError("templates", f"there is no prompt template for {concept!r}",
                                        "use templates such as 'a photo of {}'")
            for template in templates:
                checks.prompt_template(template)
        if self.group not in GROUPS:
            raise ErasureInputError("parameter group", f"unknown group {self.group!r}", f"use one of {', '.join(GROUPS)}")
        if self.rank is not None:
            self.rank = checks.whole_number("rank", self.rank, 1, checks.MAX_RANK,
                                            "use e.g. 4, or leave it empty to train full weights")
        if self.precision not in PRECISIONS:
            raise ErasureInputError("precision", f"unknown precision {self.precision!r}",
                                    f"use one of {', '.join(PRECISIONS)}")
        if self.checkpointing not in (True, False, "auto"):
            raise ErasureInputError("checkpointing", f"must be on, off or 'auto', got {self.checkpointing!r}",
                                    "use 'auto' (on for CUDA)")
        if self.memory not in MEMORY_MODES:
            raise ErasureInputError("memory", f"unknown mode {self.memory!r}", f"use one of {', '.join(MEMORY_MODES)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ErasureInputError("kind", f"unknown kind of concept {self.kind!r}", f"use one of {', '.join(KINDS)}")
        self.steps = checks.steps(self.steps)
        self.lr = checks.learning_rate(self.lr)
        self.seed = checks.seed(self.seed)
        self.batch_size = checks.whole_number("batch size", self.batch_size, 1, checks.MAX_BATCH, "use e.g. 16")
        if not isinstance(self.split_rows, bool):
            raise ErasureInputError("split rows", f"must be on or off, got {self.split_rows!r}",
                                    "turn it on to back-propagate the rows one group at a time, or leave it off")
        if self.micro_batch is not None:
            self.micro_batch = checks.whole_number("micro-batch", self.micro_batch, 1, self.batch_size,
                                                   "use a number from 1 to the batch size, or leave it empty")
        self.sample_steps = checks.whole_number("sampling steps", self.sample_steps, 1, checks.MAX_SAMPLING_STEPS,
                                                "use e.g. 25")
        self.guidance = checks.real_number("guidance", self.guidance, 0.0, 100.0, "use e.g. 7.5")
        from .robust import adversarial_config

        self.adversarial = adversarial_config(self.adversarial)
        if self.adversarial is not None and not self.supports_adversarial:
            raise ErasureInputError("adversarial", f"{type(self).__name__.removesuffix('Config')} has no robust "
                                    "option", "use dt or cg for a robust erasure, or leave the option off")

    # -- what the memory plan (erasure_core/memory.py) needs to know of a method --------------------------
    def trains(self) -> bool:
        """False for a closed-form edit (UCE): no gradients, optimiser state or activations to plan."""
        return True

    def rows_per_element(self) -> int:
        """UNet rows the method stacks into one call per batch element (concept, unconditional, preserve…)."""
        return 1

    def training_rows(self) -> int:
        """UNet rows whose activations a training step holds at once: the (micro-)batch times the rows per
        element, or the (micro-)batch alone when the row groups are back-propagated one at a time."""
        return min(self.micro_batch or self.batch_size, self.batch_size) * (1 if self.split_rows else
                                                                            self.rows_per_element())

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        """Bytes the method computes once before training and keeps through it, given the bytes of one latent,
        one image and one text context."""
        return 0

    def adversarial_bytes(self, latent: int, context: int) -> int:
        """What the robust option keeps: the frozen model's concept images as latents and the conditionings found."""
        if self.adversarial is None:
            return 0
        entries = self.steps // self.adversarial.every + 1
        return self.n_concept_prompts() * (entries * context + 4 * latent)

    def n_concept_prompts(self) -> int:
        return sum(len(self.templates_for(c)) for c in self.concepts)

    def concept_kind(self) -> str:
        return self.kind or guess_kind(self.concepts)

    def warnings(self) -> list[str]:
        """What the user should know before training: settings this method cannot erase these concepts with,
        and what to use instead. Every host shows them before it trains."""
        return self.anchor_warnings() if self.uses_anchor else []

    def anchor_warnings(self) -> list[str]:
        """An attribute without an alternative: where the anchor sends it, as measured on the toy world's tuning
        concepts (defaults.py)."""
        bare = [c for c, a in zip(self.concepts, self.alternatives or [None] * len(self.concepts)) if not a]
        kind = self.concept_kind()
        if not bare or kind == "object":
            return []
        names = ", ".join(map(repr, bare))
        if kind == "color" and self.anchor == "without concept":
            return [f"{names}: a colour without an alternative and the anchor 'without concept' was not erased on "
                    "the toy world's green (0.583 of its images stayed green: a model seldom has a colourless prompt "
                    "to fall back on). Name another colour as the alternative."]
        if self.anchor == "empty":
            fix = ("name another colour as the alternative" if kind == "color"
                   else "set the anchor to 'without concept' (the same prompt without the concept's words)")
            return [f"{names}: without an alternative, the anchor 'empty' sends the concept's prompts to the empty "
                    "prompt, and what the concept is drawn on goes with it (on the toy world an erased fill or "
                    f"colour kept its shape in none of the images). To keep the object, {fix}."]
        return []

    def templates_for(self, concept: str) -> list[str]:
        if isinstance(self.templates, dict):
            return list(self.templates.get(concept, DEFAULT_TEMPLATES))
        return list(self.templates)

    def concept_prompts(self, concept: str) -> list[str]:
        return [t.format(concept) for t in self.templates_for(concept)]

    def anchor_prompt(self, template: str, alternative: str | None) -> str | None:
        """What a concept prompt of `template` is steered to: its alternative in the concept's place; without one,
        the prompt without the concept (anchor "without concept") or None (the empty prompt)."""
        if alternative:
            return template.format(alternative)
        return without_concept(template) if self.anchor == "without concept" else None

    def prompt_pairs(self) -> tuple[list[str], list[str | None]]:
        """Every concept prompt and, template by template, the prompt it is steered to (`anchor_prompt`)."""
        concept_prompts, alt_prompts = [], []
        for concept, alt in zip(self.concepts, self.alternatives):
            for template in self.templates_for(concept):
                concept_prompts.append(template.format(concept))
                alt_prompts.append(self.anchor_prompt(template, alt))
        return concept_prompts, alt_prompts


@dataclass
class TrajectoryConfig(EraseConfig):
    """A method trained at points of the frozen model's own trajectories of the concept prompts (cg, esd, ca)."""

    trajectories_per_prompt: int = 2

    def validate(self) -> None:
        super().validate()
        self.trajectories_per_prompt = checks.whole_number("trajectories per prompt", self.trajectories_per_prompt, 1,
                                                           checks.MAX_PER_PROMPT, "use e.g. 2")

    def trajectory_points(self) -> int:
        """Points cached before training: every step of every trajectory of every concept prompt."""
        return self.n_concept_prompts() * self.trajectories_per_prompt * self.sample_steps


@dataclass
class ErasureResult:
    """A finished erasure: the tuned UNet (to use at once) and the weight delta (to save)."""

    method: str
    config: EraseConfig
    tuned_unet: nn.Module
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    losses: list[float]
    seconds: float
    memory_plan: object = None  # erasure_core.memory.MemoryPlan made before the run
    adversarial_seconds: float = 0.0  # of `seconds`, the robust option's attacks

    @property
    def steps(self) -> int:
        return len(self.losses)

    def save(self, path: str | Path) -> Path:
        return erasure_file.save_erasure(path, self.state_dict, self.metadata)


def finish(method: str, config: EraseConfig, original: nn.Module, tuned: nn.Module, losses: list[float],
           started: float, memory_plan=None, adversary=None) -> ErasureResult:
    """Package a trained copy as a result: kohya tensors for LoRA or full deltas, and metadata."""
    tuned.eval().requires_grad_(False)
    rename = file_layer_name(original)  # SDXL files use ldm layer names (layouts.py)
    if config.rank is None:
        deltas = weight_deltas(original, tuned, config.group)
        sd = erasure_file.to_state_dict(weight_deltas={rename(name): d for name, d in deltas.items()})
    else:
        sd = erasure_file.to_state_dict(lora_layers=[(rename(name), *rest) for name, *rest in lora_layers(tuned)])
    info = {"method": method, "steps": len(losses),
            **{k: v for k, v in asdict(config).items() if k not in ("templates", "concept_images")},
            "name": erasure_stem(config.concepts, method)}
    metadata = erasure_file.build_metadata(original, info)
    return ErasureResult(method, config, tuned, sd, metadata, losses, time.time() - started, memory_plan,
                         adversary.seconds if adversary is not None else 0.0)


def prepare(model, method: str, config: EraseConfig):
    """Before any work: the model checked for the robust option when it is on, and the memory plan, refused with
    the fix when it does not fit (or fitted, with memory="auto"). Returns the config to run with and the plan."""
    from ..memory import fit, plan_memory

    if config.adversarial is not None:
        from .robust import check_model

        check_model(model)
    if config.memory == "off":
        return config, None
    return fit(model, method, config, plan_memory(model, method, config))


def guard_memory(erase):
    """Out of memory anywhere in an erasure (the frozen model's images and trajectories, training) on the GPU
    or the CPU ends with ErasureOutOfMemory and its advice, not a raw allocator error."""
    @functools.wraps(erase)
    def run(model, config, *args, **kwargs):
        with memory_advice(f"running {erase.__name__.removeprefix('erase_')}", getattr(model.device, "type", "cpu")):
            return erase(model, config, *args, **kwargs)
    return run


def random_timesteps(batch: int, generator: torch.Generator, device, low: int = 0, high: int = 1000) -> torch.Tensor:
    return torch.randint(low, high, (batch,), generator=generator).to(device)


def add_noise(alphas_cumprod: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) z0 + sqrt(1 - ᾱ_t) ε (the DDPM forward process)."""
    a = alphas_cumprod.to(z0.device)[t.cpu()].to(z0.device).view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise

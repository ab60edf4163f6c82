"""The robust erasure option (DT and CG): attack embeddings found during training are erased too.

In the spirit of AdvUnlearn (Zhang et al. 2024), RECE (Gong et al. 2024) and Receler (Huang et al. 2023): every
`every` training steps a soft-prompt attack (textual inversion with the attack's own loss: the model being tuned
denoising the frozen model's images of the concept; erasure_core/attacks/soft_prompt.py) runs `steps` Adam steps
against the model being tuned, continuing from where it last stopped (a persistent adversary). What it finds,
the concept's templates with the learnt embeddings in the concept's place, joins a pool; from then on a `share`
of the concept rows of every batch is conditioned on a pool entry instead of the concept's own prompt, with the
same target. The method's loss is unchanged: only the conditioning of some of its concept rows is adversarial.
Its cost is the attack's steps (no gradients for the tuned weights), reported as `seconds`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import checks
from ..attacks.common import ConceptLatents
from ..attacks.soft_prompt import learn_embeddings, start_words, word_vectors
from ..attacks.text import SLOT, EmbeddingPrompts, require_one_context, require_token_embeddings
from ..errors import ErasureInputError


@dataclass
class AdversarialConfig:
    every: int = 25  # training steps between attacks
    steps: int = 10  # attack steps each time
    tokens: int = 2  # learnt token embeddings in the concept's place
    lr: float = 5e-3  # the soft-prompt attack's own setting
    share: float = 0.5  # of the concept rows, conditioned on found embeddings once there are some
    batch_size: int = 8
    start_candidates: int = 256  # vocabulary words tried as the adversary's starting point

    def validate(self) -> None:
        self.every = checks.whole_number("adversarial every", self.every, 1, checks.MAX_STEPS, "use e.g. 25")
        self.steps = checks.whole_number("adversarial steps", self.steps, 1, 10_000, "use e.g. 10")
        self.tokens = checks.whole_number("adversarial tokens", self.tokens, 1, 16, "use e.g. 2")
        self.lr = checks.learning_rate(self.lr)
        self.share = checks.real_number("adversarial share", self.share, 0.0, 1.0, "use e.g. 0.5")
        self.batch_size = checks.whole_number("adversarial batch size", self.batch_size, 1, checks.MAX_BATCH,
                                              "use e.g. 8")


def adversarial_config(value) -> AdversarialConfig | None:
    """None (off), an AdversarialConfig, True (the defaults) or a dict of its options; checked."""
    if value is None or value is False:
        return None
    if value is True:
        value = AdversarialConfig()
    elif isinstance(value, dict):
        try:
            value = AdversarialConfig(**value)
        except TypeError as exc:
            raise ErasureInputError("adversarial", str(exc), "use the options every, steps, tokens, lr, share, "
                                    "batch_size") from None
    if not isinstance(value, AdversarialConfig):
        raise ErasureInputError("adversarial", f"{value!r} is not an adversarial setting", "use True, or leave it off")
    value.validate()
    return value


def check_model(model) -> None:
    """Before any work: the robust option's attacks need one text context (SD1.x, SD2.x) and the token embeddings."""
    require_one_context(model, "the robust option")
    require_token_embeddings(model, "robust erasure's")


class AdversarialPool:
    """The persistent adversary of one erasure run and the conditionings it found."""

    def __init__(self, model, config: AdversarialConfig, concepts: list[tuple[str, list[str]]],
                 latents: ConceptLatents, seed: int):
        """`concepts`: (concept, its templates) in the order of the run's concept prompts; `latents`: the frozen
        model's images of them, each with the index of its concept prompt."""
        require_token_embeddings(model, "robust erasure's")
        self.model, self.config = model, config
        self.generator = torch.Generator().manual_seed(seed + 300_000)
        self.groups, offset = [], 0
        for concept, templates in concepts:
            prompts = EmbeddingPrompts(model, [t.format(SLOT) for t in templates], config.tokens)
            inside = (latents.template_index >= offset) & (latents.template_index < offset + len(templates))
            pool = ConceptLatents(latents.latents[inside.to(latents.latents.device)],
                                  latents.template_index[inside] - offset)
            words = start_words(model, model.unet, prompts, pool, concept, config.start_candidates, self.generator)
            self.groups.append([prompts, pool, word_vectors(model, prompts, words)])
            offset += len(templates)
        self.entries: list[torch.Tensor] = []  # each (concept prompts, L, C)
        self.seconds = 0.0
        self.last_step = -1

    def refresh(self, step: int, tuned, params: list[torch.nn.Parameter], should_cancel=None) -> None:
        """Every `every` steps (once per step): attack `tuned` and add what was found to the pool."""
        if step == self.last_step or step % self.config.every:
            return
        self.last_step = step
        started = time.time()
        flags = [p.requires_grad for p in params]
        for p in params:  # the attack's gradients go to its embeddings only
            p.requires_grad_(False)
        try:
            found = []
            for group in self.groups:
                prompts, pool, vectors = group
                vectors, _ = learn_embeddings(self.model, tuned, prompts, pool, vectors, self.config.steps,
                                              self.config.lr, self.config.batch_size, self.generator,
                                              should_cancel=should_cancel)
                group[2] = vectors
                with torch.no_grad():
                    found.append(prompts.encode(vectors))
            self.entries.append(torch.cat(found))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        self.seconds += time.time() - started

    def mix(self, contexts: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """`contexts` of concept rows with a `share` of them swapped for found conditionings of the same prompt."""
        if not self.entries:
            return contexts
        rows = len(contexts)
        chosen = torch.rand(rows, generator=self.generator) < self.config.share
        if not chosen.any():
            return contexts
        entry = torch.randint(len(self.entries), (rows,), generator=self.generator)
        out = contexts.clone()
        for r in chosen.nonzero().flatten().tolist():
            out[r] = self.entries[int(entry[r])][int(prompt_index[r])].to(out)
        return out

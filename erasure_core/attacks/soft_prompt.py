"""Soft-prompt attack (textual inversion against an erasure; Pham et al., arXiv 2308.01508).

A few new token embeddings are learnt so that the ERASED model, prompted with them in the concept's place,
denoises the ORIGINAL model's images of the concept; the embeddings are then prompted on new seeds. The
embeddings start at the vocabulary words (none of the concept's) under which the erased model already denoises
the concept's images best, and only they are trained.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import checks
from ..model import single_token_words
from ..training import CancelFn, ProgressFn, optimise
from .common import AttackConfig, AttackResult, ConceptLatents, LossBatch, concept_latents, draw_batch
from .text import EmbeddingPrompts, fill, require_token_embeddings


@dataclass
class SoftPromptConfig(AttackConfig):
    steps: int = 150
    tokens: int = 2
    lr: float = 5e-3  # Adam on the embeddings, as textual inversion trains them
    start_candidates: int = 256  # vocabulary words tried as starting points

    def validate(self) -> None:
        super().validate()
        self.lr = checks.learning_rate(self.lr)
        self.start_candidates = checks.whole_number("start candidates", self.start_candidates, 1, 100_000,
                                                    "use e.g. 256")


def soft_prompt_loss(model, unet, prompts: EmbeddingPrompts, vectors: torch.Tensor, batch: LossBatch) -> torch.Tensor:
    """||eps_erased(x_t, t, c(v)) − ε||², c(v) the templates with the learnt embeddings v in the concept's place."""
    return batch.loss(model, unet, prompts.encode(vectors))


def start_words(model, unet, prompts: EmbeddingPrompts, pool: ConceptLatents, concept: str, candidates: int,
                generator: torch.Generator, batch_size: int = 16) -> list[str]:
    """Where the learnt tokens start: the `prompts.tokens` one-token words under which `unet` already denoises the
    concept's images best (each word tried in every slot, on one draw of images, noise and timesteps), among
    `candidates` words drawn by the seed; no word of the concept itself. Real words keep the text encoder in its
    range: from the vocabulary's mean embedding (near zero) textual inversion on the toy world stayed at three
    times the concept prompt's loss, and from two random words it drew the concept or not depending on the words."""
    banned = set(concept.lower().split())
    vocabulary = single_token_words(model)
    words = sorted(w for w in vocabulary if w.lower() not in banned)
    if len(words) > candidates:
        words = [words[int(i)] for i in torch.randperm(len(words), generator=generator)[:candidates]]
    table = prompts.table()
    batch = draw_batch(pool, batch_size, generator)
    with torch.no_grad():
        losses = [float(batch.loss(model, unet, prompts.encode(table[vocabulary[w]].expand(prompts.tokens, -1))))
                  for w in words]
    order = sorted(range(len(words)), key=losses.__getitem__)
    return [words[order[i % len(order)]] for i in range(prompts.tokens)]


def word_vectors(model, prompts: EmbeddingPrompts, words: list[str]) -> torch.Tensor:
    vocabulary = single_token_words(model)
    return prompts.table()[torch.tensor([vocabulary[w] for w in words])]


def learn_embeddings(model, unet, prompts: EmbeddingPrompts, pool: ConceptLatents, vectors: torch.Tensor, steps: int,
                     lr: float, batch_size: int, generator: torch.Generator, progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None) -> tuple[torch.Tensor, list[float]]:
    """`steps` Adam steps on the embeddings `vectors` (a copy is trained); returns them and the losses. Also the
    inner attack of the robust erasure option (methods/robust.py)."""
    vectors = vectors.detach().clone().float().requires_grad_(True)

    def loss_fn(step: int, rows: int) -> torch.Tensor:
        return soft_prompt_loss(model, unet, prompts, vectors, draw_batch(pool, rows, generator))

    with torch.enable_grad():
        losses = optimise([vectors], loss_fn, steps, lr, model.device, progress, should_cancel, precision="fp32",
                          batch_size=batch_size)
    return vectors.detach(), losses


def attack_soft_prompt(model, unet, config: SoftPromptConfig, pool: ConceptLatents | None = None,
                       progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> AttackResult:
    """Learn `config.tokens` embeddings against `unet` (the erased UNet; `model` holds the text encoder)."""
    config.validate()
    require_token_embeddings(model, "soft_prompt")
    started = time.time()
    prompts = EmbeddingPrompts(model, config.slot_templates(), config.tokens)
    pool = pool if pool is not None else concept_latents(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    start = start_words(model, unet, prompts, pool, config.concept, config.start_candidates, gen)
    vectors, losses = learn_embeddings(model, unet, prompts, pool, word_vectors(model, prompts, start),
                                       config.steps, config.lr, config.batch_size, gen, progress, should_cancel)
    with torch.no_grad():
        contexts = prompts.encode(vectors)
    shown = " ".join(f"<learned{i + 1}>" for i in range(config.tokens))
    return AttackResult("soft_prompt", [fill(t, shown) for t in prompts.templates], contexts,
                        f"{config.tokens} learned token embeddings", config.budget() + f", lr {config.lr:g}", losses,
                        time.time() - started, embedding=vectors.cpu(), extra={"start_words": start})

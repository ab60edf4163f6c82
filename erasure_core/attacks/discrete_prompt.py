"""Discrete prompt attack in the style of UnlearnDiffAtk (Zhang et al., ECCV 2024, arXiv 2310.11868).

A few words are put before the concept's prompt and chosen from the tokenizer's vocabulary so that the ERASED
model denoises the ORIGINAL model's images of the concept as well as it can: the diffusion model's own loss is
the signal, no classifier. The words are searched by greedy coordinate gradient (GCG, Zou et al. 2023): the
gradient of the loss with respect to each word's one-hot choice names a few promising words per position,
a batch of single-word swaps among them is tried on the same draw of images, noise and timesteps, and the best
is kept when it lowers the loss. Every candidate is scored as typed text (the words are whole one-token words),
so the prompt found is one a user could type.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import checks
from ..errors import ErasureCancelled
from ..model import single_token_words
from ..training import CancelFn, ProgressFn
from .common import AttackConfig, AttackResult, ConceptLatents, LossBatch, concept_latents, draw_batch
from .text import SLOT, EmbeddingPrompts, fill, require_token_embeddings


@dataclass
class DiscretePromptConfig(AttackConfig):
    steps: int = 40
    tokens: int = 3
    candidates: int = 24  # single-word swaps tried per step
    top_k: int = 8  # words per position the gradient proposes

    def validate(self) -> None:
        super().validate()
        self.candidates = checks.whole_number("candidates", self.candidates, 1, 1024, "use e.g. 24")
        self.top_k = checks.whole_number("top k", self.top_k, 1, 4096, "use e.g. 8")

    def budget(self) -> str:
        return f"{self.steps} steps × {self.candidates} candidates, {self.tokens} words"


def prompt_loss(model, unet, templates: list[str], words: list[str], batch: LossBatch) -> float:
    """The erased model's denoising loss with `words` typed in the templates' slot."""
    with torch.no_grad():
        contexts = model.encode_text([fill(t, " ".join(words)) for t in templates])
        return float(batch.loss(model, unet, contexts))


def word_gradients(model, unet, prompts: EmbeddingPrompts, word_table: torch.Tensor, choice: torch.Tensor,
                   batch: LossBatch) -> torch.Tensor:
    """d loss / d one-hot (tokens, W): for each position, how the loss moves as each vocabulary word is chosen."""
    onehot = torch.nn.functional.one_hot(choice, len(word_table)).float().to(word_table.device).requires_grad_(True)
    with torch.enable_grad():
        loss = batch.loss(model, unet, prompts.encode(onehot @ word_table))
        (grad,) = torch.autograd.grad(loss, [onehot])
    return grad


def attack_discrete_prompt(model, unet, config: DiscretePromptConfig, pool: ConceptLatents | None = None,
                           progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> AttackResult:
    """Search `config.tokens` words put before each concept prompt, against `unet` (the erased UNet)."""
    config.validate()
    require_token_embeddings(model, "discrete_prompt")
    started = time.time()
    templates = [f"{SLOT} {p}" for p in config.concept_prompts()]  # UnlearnDiffAtk: words before the prompt
    prompts = EmbeddingPrompts(model, templates, config.tokens)
    vocabulary = single_token_words(model)
    words = sorted(vocabulary)
    word_table = prompts.table()[torch.tensor([vocabulary[w] for w in words])]
    pool = pool if pool is not None else concept_latents(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    choice = torch.randint(len(words), (config.tokens,), generator=gen)
    losses: list[float] = []
    for step in range(config.steps):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled(f"cancelled at step {step} of {config.steps}; nothing was written")
        batch = draw_batch(pool, config.batch_size, gen)
        current = prompt_loss(model, unet, templates, [words[i] for i in choice], batch)
        grad = word_gradients(model, unet, prompts, word_table, choice, batch)
        promising = (-grad).topk(min(config.top_k, len(words)), dim=1).indices.cpu()  # (tokens, top_k)
        best, best_choice = current, choice
        tried = set()
        for _ in range(config.candidates):
            position = int(torch.randint(config.tokens, (1,), generator=gen))
            word = int(promising[position, int(torch.randint(promising.shape[1], (1,), generator=gen))])
            candidate = choice.clone()
            candidate[position] = word
            key = tuple(candidate.tolist())
            if key in tried or torch.equal(candidate, choice):
                continue
            tried.add(key)
            loss = prompt_loss(model, unet, templates, [words[i] for i in candidate], batch)
            if loss < best:
                best, best_choice = loss, candidate
        choice = best_choice
        losses.append(best)
        if progress is not None:
            progress(step + 1, config.steps, best)
    found = " ".join(words[i] for i in choice)
    typed = [fill(t, found) for t in templates]
    return AttackResult("discrete_prompt", typed, model.encode_text(typed), found, config.budget(), losses,
                        time.time() - started)

"""UCE, a baseline (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024).

A closed-form edit of the cross-attention key and value projections (`attn2.to_k/to_v`), no
training: each projection W is replaced by the minimiser of

    λ ||W − W_old||² + s_e Σ_i ||W c_i − W_old g_i||² + s_p Σ_j ||W p_j − W_old p_j||²

where c_i are the text embeddings of the concept's prompts (from the concept's last token to the
end: the tokens that, in a causal text encoder, carry the concept), g_i the embeddings of the
same positions of the guide prompt (the alternative in the same template, or " " to erase
towards the unconditional, as the paper's "towards uncond"; with the anchor "without concept", the prompt
without the concept from the token before it), and p_j every token of the preserve
prompts and of "". Constants from the paper's code (train_erase.py): λ 0.5, s_e 1, s_p 0.1, keys and
values both edited, "replace" technique.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import checks
from ..conditioning import cross_attention_context
from ..defaults import SETTINGS
from ..errors import ErasureCancelled, ErasureInputError
from ..model import DiffusionModel
from ..trainable import make_trainable, select_modules
from ..training import CancelFn, ProgressFn
from .common import EraseConfig, ErasureResult, finish, guard_memory, prepare, without_concept


_OBJECT = SETTINGS["uce"]["object"]  # the defaults (erasure_core/defaults.py): the paper's code's constants


@dataclass
class UCEConfig(EraseConfig):
    uses_anchor = True
    lamb: float = _OBJECT["lamb"]  # λ: pull towards the original weights
    erase_scale: float = _OBJECT["erase_scale"]
    preserve_scale: float = _OBJECT["preserve_scale"]
    group: str = _OBJECT["group"]  # the keys and values of cross-attention: what UCE edits

    def validate(self) -> None:
        super().validate()
        if self.group not in ("cross_attn_kv",):
            raise ErasureInputError("parameter group", f"UCE edits the cross-attention keys and values only, got "
                                    f"{self.group!r}", "use cross_attn_kv")
        if self.rank is not None:
            raise ErasureInputError("rank", "UCE is a closed-form edit of full weights, not a LoRA",
                                    "leave the rank empty (0)")
        self.lamb = checks.real_number("λ", self.lamb, 1e-6, 1e6, "use 0.5")
        self.erase_scale = checks.weight("erase scale", self.erase_scale, 1.0)
        self.preserve_scale = checks.weight("preserve scale", self.preserve_scale, 0.1)

    def trains(self) -> bool:  # the memory plan: an edit, no training
        return False

    def cached_bytes(self, latent: int, image: int, context: int) -> int:
        # Each concept prompt's rows and its guide's (at most a whole context each), every token of the preserve
        # prompts and of "", held in fp32 and, during each layer's solve, again in fp64.
        contexts = 2 * self.n_concept_prompts() + len(set(self.preserve_prompts) | {""})
        return 3 * contexts * context


def uce_edit(weight: torch.Tensor, concept_keys: torch.Tensor, guide_keys: torch.Tensor, keep_keys: torch.Tensor,
             lamb: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """W = (λ W + s_e Σ W g cᵀ + s_p Σ W p pᵀ) (λ I + s_e Σ c cᵀ + s_p Σ p pᵀ)⁻¹   (rows of the *_keys: c, g, p)."""
    w = weight.double()
    c, g, p = concept_keys.double(), guide_keys.double(), keep_keys.double()
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    lhs = lamb * w + erase_scale * (w @ g.T) @ c + preserve_scale * (w @ p.T) @ p
    rhs = lamb * eye + erase_scale * c.T @ c + preserve_scale * p.T @ p
    return torch.linalg.solve(rhs, lhs.T).T.to(weight.dtype)  # rhs is symmetric: X rhs = lhs


def last_token_index(model: DiffusionModel, text: str) -> int:
    """Position of the last token of `text` in its encoding (0 = the start token for an empty text).

    Found from the encoder itself, so every host's model works without its tokenizer: a causal text
    encoder gives `text` and `text` + one more word equal rows up to `text`'s last token."""
    a, b = cross_attention_context(model.encode_text([text, f"{text} and"])).float()
    differs = ((a - b).abs().amax(dim=-1) > 1e-4 * a.abs().amax()).nonzero()
    return int(differs[0]) - 1 if len(differs) else len(a) - 1


def aligned_rows(model: DiffusionModel, prompt: str, end: int, guide: str, guide_end: int):
    """The rows from each prompt's `end` token to the last row, cut to one length (the paper's alignment)."""
    old, new = cross_attention_context(model.encode_text([prompt, guide])).float()
    farthest = max(end, guide_end)
    return old[end:len(old) - (farthest - end)], new[guide_end:len(new) - (farthest - guide_end)]


@guard_memory
@torch.no_grad()
def erase_uce(model: DiffusionModel, config: UCEConfig, progress: ProgressFn | None = None,
              should_cancel: CancelFn | None = None) -> ErasureResult:
    config.validate()
    config, plan = prepare(model, "uce", config)  # the memory plan (an edit's: no training parts), before any work
    started = time.time()
    concept_rows, guide_rows = [], []
    for concept, alt in zip(config.concepts, config.alternatives):
        for template in config.templates_for(concept):
            prefix = template.split("{}")[0]
            end = last_token_index(model, prefix + concept)
            if alt:
                guide, guide_end = template.format(alt), last_token_index(model, prefix + alt)
            elif config.anchor == "without concept":  # the concept's rows go to the token before it, and on
                guide, guide_end = without_concept(template), last_token_index(model, prefix.strip())
            else:
                guide, guide_end = " ", 0
            c, g = aligned_rows(model, template.format(concept), end, guide, guide_end)
            concept_rows.append(c)
            guide_rows.append(g)
    keys, guides = torch.cat(concept_rows), torch.cat(guide_rows)
    keep = cross_attention_context(model.encode_text(list(dict.fromkeys(list(config.preserve_prompts) + [""]))))
    keep = keep.float().flatten(0, 1)

    tuned, _ = make_trainable(model.unet, config.group, None)
    residual = []
    names = [name for name, _ in select_modules(model.unet, config.group)]
    for i, name in enumerate(names):
        if should_cancel is not None and should_cancel():
            raise ErasureCancelled("cancelled; nothing was changed or written")
        layer = tuned.get_submodule(name)
        new = uce_edit(layer.weight.detach().float(), keys, guides, keep, config.lamb, config.erase_scale,
                       config.preserve_scale)
        residual.append(float((keys @ new.T - guides @ layer.weight.detach().float().T).pow(2).mean()))
        layer.weight.copy_(new.to(layer.weight.dtype))
        if progress is not None:
            progress(i + 1, len(names), residual[-1])
    # One "loss": the mean squared distance of the edited concept values from their guides.
    return finish("uce", config, model.unet, tuned, [sum(residual) / len(residual)], started, plan)

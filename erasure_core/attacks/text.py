"""Prompts with free token embeddings in them: the one place the embedding-level attacks reach into the text
encoder, through the model's `TokenEmbeddingText` interface (erasure_core/model.py).

A prompt template holds `{}` where the attack's tokens go. To encode it with k free embeddings, the `{}` is
written as k copies of a marker word (one token, found in no prompt), and a forward hook on the text encoder's
token-embedding layer puts the free embeddings where the marker's token is. Everything else (position
embeddings, the transformer, padding) is the text encoder's own, so the same code serves every backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ErasureInputError
from ..model import single_token_words

SLOT = "{}"


def supports_token_embeddings(model) -> bool:
    return all(hasattr(model, name) for name in ("token_embedding_module", "token_ids", "vocabulary",
                                                 "encode_text_with_grad"))


def require_token_embeddings(model, attack: str) -> None:
    if not supports_token_embeddings(model):
        raise ErasureInputError("attack", f"the {attack} attack needs the text encoder's token embeddings, which this "
                                "host's model does not expose", "use the concept_vector attack here, or run the "
                                "audit from the command line or ComfyUI")


def require_one_context(model, what: str) -> None:
    """The attacks search one text-context tensor, the conditioning of SD1.x and SD2.x. SDXL's (two text encoders
    and a pooled embedding: a `Conditioning`) is not searched, so an SDXL model is refused before any work."""
    if not isinstance(model.encode_text([""]), torch.Tensor):
        raise ErasureInputError("model", f"{what} works on SD1.x and SD2.x models; this model's text conditioning "
                                "is SDXL's (two text encoders), which the attacks do not search",
                                "use an SD1.x or SD2.x model")


def fill(template: str, words: str) -> str:
    """The template with `words` in its slot (spaces tidied where the slot was empty)."""
    return " ".join(template.replace(SLOT, words).split())


@dataclass
class EmbeddingPrompts:
    """Templates with a slot for `tokens` free token embeddings, encoded as often as an attack needs."""

    model: object
    templates: list[str]
    tokens: int

    def __post_init__(self):
        used = {i for t in self.templates for i in self.model.token_ids(fill(t, ""))}
        words = sorted(single_token_words(self.model).items(), key=lambda kv: -kv[1])  # highest id: rarest
        free = [(w, i) for w, i in words if i not in used]
        if not free:
            raise ErasureInputError("templates", "every one-token word of the vocabulary occurs in the prompts",
                                    "use shorter prompt templates")
        self.marker, self.marker_id = free[0]
        self.texts = [fill(t, " ".join([self.marker] * self.tokens)) for t in self.templates]
        counts = [self.model.token_ids(text).count(self.marker_id) for text in self.texts]
        if any(c != self.tokens for c in counts):
            raise ErasureInputError("templates", f"a template has no single '{SLOT}' where the attack's tokens go, or "
                                    "the prompt is too long for the text encoder", "use templates with one {} "
                                    "such as 'a photo of {}'")

    def table(self) -> torch.Tensor:
        """The text encoder's token-embedding table (V, D), detached, in float."""
        return self.model.token_embedding_module().weight.detach().float()

    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Contexts (N, L, C) of the templates with `vectors` (tokens, D) in their slots; differentiable in `vectors`."""
        def put_vectors(module, inputs, output):
            mask = inputs[0] == self.marker_id
            rows = int(mask.any(-1).sum()) if mask.ndim > 1 else int(mask.any())
            if rows == 0:
                return output
            out = output.clone()
            out[mask] = vectors.to(out.device, out.dtype).repeat(rows, 1)
            return out

        handle = self.model.token_embedding_module().register_forward_hook(put_vectors)
        try:
            return self.model.encode_text_with_grad(self.texts)
        finally:
            handle.remove()

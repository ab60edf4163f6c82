"""The text encoders wait on the CPU while a method trains.

Every method encodes its prompts before training (contexts, targets, trajectories) and no training step runs a
text encoder, so on a GPU the text encoders this process loaded (the command line's, the library's and the app's
diffusers models) move to the CPU for the training loop and come back after it, on failure and cancel too:
1.5 GiB on SDXL (CLIP ViT-L and OpenCLIP bigG in fp16), 0.2 GiB on SD1.5. A host's own text encoders (ComfyUI's
CLIP, the webui's) are the host's to place and are left alone: those models have no `text_encoder` attribute.
The robust option's attacks (methods/robust.py) encode text during training: with it on, the encoders stay.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def offloadable_text_encoders(model, config=None) -> list[nn.Module]:
    """The text encoders of `model` that training moves off its device: those it holds, when it is on a GPU and
    `config`'s training steps encode no text."""
    if torch.device(model.device).type != "cuda":  # on the CPU there is nowhere to move them
        return []
    if getattr(config, "adversarial", None) is not None:  # the robust option's attacks encode text while training
        return []
    held = (getattr(model, name, None) for name in ("text_encoder", "text_encoder_2"))
    return [m for m in held if isinstance(m, nn.Module)]


@contextmanager
def text_encoders_on_cpu(model, config=None):
    """Inside: `model`'s offloadable text encoders (for training with `config`) on the CPU; after: back on the
    model's device."""
    encoders = offloadable_text_encoders(model, config)
    for encoder in encoders:
        encoder.to("cpu")
    if encoders:
        torch.cuda.empty_cache()  # hand the freed blocks back, so training's allocations can use them
    try:
        yield
    finally:
        for encoder in encoders:
            encoder.to(model.device)

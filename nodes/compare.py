"""Erasure Compare: the same prompts and seeds through the original and the erased MODEL, side by side."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.samplers
from erasure_core.backends import comfy as backend
from erasure_core.errors import ErasureInputError

from .common import CATEGORY, lines


def sample(model, clip, vae, prompt: str, negative, seed: int, steps: int, cfg: float, sampler: str,
           scheduler: str, size: int) -> torch.Tensor:
    """One image through ComfyUI's own KSampler path (so patches, sampler and scheduler all apply)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (already imported by ComfyUI)

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    factor = vae.downscale_ratio if isinstance(vae.downscale_ratio, int) else 8
    latent = {"samples": torch.zeros(1, 4, size // factor, size // factor)}
    out = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent)[0]
    images = vae.decode(out["samples"])
    return images.reshape(-1, *images.shape[-3:])[:1].float().cpu()  # video VAEs add a frame axis


def grid(rows: list[tuple[torch.Tensor, torch.Tensor]], gap: int = 4) -> torch.Tensor:
    """Rows of (before, after) images -> one IMAGE (1, H, W, 3), a white gap between cells."""
    h, w = rows[0][0].shape[1:3]
    out = torch.ones(1, len(rows) * (h + gap) - gap, 2 * w + gap, 3)
    for r, (before, after) in enumerate(rows):
        y = r * (h + gap)
        out[0, y:y + h, :w] = before[0, :, :, :3]
        out[0, y:y + h, w + gap:] = after[0, :, :, :3]
    return out


class ErasureCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_Compare", display_name="Erasure Compare", category=CATEGORY,
            description="Draw each prompt with the original and the erased MODEL from the same seed; left column "
                        "before, right column after. Include prompts that should NOT change.",
            inputs=[io.Model.Input("original"), io.Model.Input("erased"), io.Clip.Input("clip"), io.Vae.Input("vae"),
                    io.String.Input("prompts", multiline=True, default="",
                                    tooltip="One prompt per line: the concept's prompts and some that must not change."),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                                 tooltip="The same seed for both models (row i uses seed + i)."),
                    io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps per image."),
                    io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.5, tooltip="Classifier-free guidance."),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                                   tooltip="ComfyUI sampler, as in KSampler."),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                                   tooltip="ComfyUI scheduler, as in KSampler."),
                    io.Int.Input("image_size", default=512, min=32, max=2048, step=32,
                                 tooltip="Square image size in pixels.")],
            outputs=[io.Image.Output(display_name="grid", tooltip="Before (left) and after (right), one row per prompt."),
                     io.Image.Output(display_name="after", tooltip="The erased model's images only.")])

    @classmethod
    def execute(cls, original, erased, clip, vae, prompts, seed, steps, cfg, sampler_name, scheduler,
                image_size) -> io.NodeOutput:
        todo = lines(prompts)
        if not todo:
            raise ErasureInputError("prompts", "is empty", "type one prompt per line, e.g. 'a photo of a dog'")
        if image_size % 8:
            raise ErasureInputError("image_size", f"{image_size} is not a multiple of 8", "use e.g. 512")
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        if backend.is_sdxl(original):  # SDXL's "no prompt" is zeros (as the erase nodes train it): ComfyUI's own zero-out
            import nodes as comfy_nodes

            negative = comfy_nodes.ConditioningZeroOut().zero_out(negative)[0]
        rows = []
        for i, prompt in enumerate(todo):
            args = (prompt, negative, int(seed) + i, int(steps), float(cfg), sampler_name, scheduler, int(image_size))
            rows.append((sample(original, clip, vae, *args), sample(erased, clip, vae, *args)))
        after = torch.cat([a for _, a in rows])
        return io.NodeOutput(grid(rows), after)

"""Scrambled Grid Dataset: the concept's own images for Degeneration-Tuning, and a preview of what
the model will be taught to draw for the concept (the same images, scrambled)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from erasure_core.backends import comfy as backend
from erasure_core.errors import ErasureInputError
from erasure_core.methods.common import DEFAULT_TEMPLATES
from erasure_core.sampling import sample_images
from erasure_core.scrambled_grid import scramble_grid

from .common import CATEGORY, Dataset, from_comfy_images, lines, to_comfy_images


def generate(model, clip, vae, concept: str, templates: list[str], per_prompt: int, seed: int, size: int,
             steps: int) -> torch.Tensor:
    """The model's own images of the concept, `per_prompt` seeds for each template."""
    if model is None or clip is None or vae is None:
        raise ErasureInputError("image", "no images are connected and MODEL/CLIP/VAE are not all connected",
                                "connect concept images to 'image', or connect MODEL, CLIP and VAE to draw them")
    if not concept.strip():
        raise ErasureInputError("concept", "is empty", "type the concept whose images to draw, e.g. 'a dog'")
    if any("{}" not in t for t in templates) or not templates:
        raise ErasureInputError("templates", "every template must contain {}", "use templates like 'a photo of {}'")
    prompts = [t.format(concept.strip()) for t in templates for _ in range(per_prompt)]
    with torch.inference_mode(False):
        api = backend.ComfyModel(model, clip, vae, image_size=size)
        return sample_images(api, prompts, [seed + i for i in range(len(prompts))], steps=steps)


class ScrambledGridDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_ScrambledGridDataset", display_name="Scrambled Grid Dataset", category=CATEGORY,
            description="Concept images for Degeneration-Tuning: connect your own images, or let MODEL/CLIP/VAE draw "
                        "them from the concept and prompt templates. The preview shows them scrambled g×g, which is "
                        "what the erased model will draw for the concept.",
            inputs=[
                io.Int.Input("grid", default=4, min=2, max=512,
                             tooltip="g: the images are cut into g×g patches. 4 for objects; finer (up to the "
                                     "image side) for styles and textures."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for drawing the images and for the preview's shuffle."),
                io.Image.Input("image", optional=True, tooltip="Your own images of the concept (used as they are)."),
                io.Model.Input("model", optional=True, tooltip="With CLIP and VAE: draw the concept's images."),
                io.Clip.Input("clip", optional=True),
                io.Vae.Input("vae", optional=True),
                io.String.Input("concept", default="", tooltip="The concept to draw (only without 'image')."),
                io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES),
                                tooltip="Prompt templates, one per line; {} is the concept."),
                io.Int.Input("images_per_prompt", default=2, min=1, max=64, tooltip="Images drawn per template."),
                io.Int.Input("image_size", default=512, min=32, max=2048, step=32, tooltip="Size of drawn images."),
                io.Int.Input("sampling_steps", default=25, min=2, max=200, tooltip="Sampling steps per drawn image."),
            ],
            outputs=[Dataset.Output(display_name="dataset", tooltip="Connect to Erase Concept (Degeneration-Tuning)."),
                     io.Image.Output(display_name="preview", tooltip="The images, scrambled once.")])

    @classmethod
    def execute(cls, grid, seed, concept, templates, images_per_prompt, image_size, sampling_steps, image=None,
                model=None, clip=None, vae=None) -> io.NodeOutput:
        if image is not None:
            images = from_comfy_images(image)
        else:
            images = generate(model, clip, vae, concept, lines(templates), int(images_per_prompt), int(seed),
                              int(image_size), int(sampling_steps))
        scrambled = scramble_grid(images, int(grid), torch.Generator().manual_seed(int(seed)))
        return io.NodeOutput({"images": images, "grid": int(grid)}, to_comfy_images(scrambled))

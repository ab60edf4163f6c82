"""The toy world in ComfyUI: its model, its ControlNet and its control images, ready in every graph.

The toy world is a small trained text-to-image model shipped with the pack (erasure_core/toyworld),
the one every measurement in the README is made on; with these nodes an example workflow runs on a
fresh ComfyUI with nothing downloaded, and its result can be judged. Swap them for
CheckpointLoaderSimple / ControlNetLoader / LoadImage to use your own model.
"""
from __future__ import annotations

import functools

import torch
from comfy_api.latest import io

from erasure_core.toyworld.control import CONTROL_KINDS, control_image
from erasure_core.toyworld.draw import IMAGE_SIZE, Placement
from erasure_core.toyworld.world import SHAPE_NAMES

from .common import CATEGORY


@functools.lru_cache(maxsize=1)
def _toy_world():
    from erasure_core.backends.comfy_toyworld import load_toy_world

    return load_toy_world()


class ToyWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_ToyWorldLoader", display_name="Toy World Loader", category=CATEGORY,
            description="The built-in toy world: a small text-to-image model that draws 32 px images of one shape "
                        "(circle, square, triangle, cross) in one colour (red, green, blue, yellow) and fill (solid, "
                        "striped, dotted), e.g. 'a red striped circle'. Latents are 1/2 of the image side: an "
                        "EmptyLatentImage of 128x128 gives 32x32 images. Try erasures here in seconds.",
            inputs=[],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.Vae.Output(display_name="VAE")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        model, clip, vae = _toy_world()
        return io.NodeOutput(model, clip, vae)


class ToyControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_ToyControlNetLoader", display_name="Toy World ControlNet Loader", category=CATEGORY,
            description="The toy world's ControlNet (a diffusers ControlNet trained on the toy world). Its control "
                        "image is either a shape's outline (white on black: fixes the shape, not colour or fill) or a "
                        "soft blob (fixes position and size only). Use it with ControlNetApplyAdvanced.",
            inputs=[], outputs=[io.ControlNet.Output(display_name="CONTROL_NET")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from erasure_core.backends.comfy_toyworld import load_toy_controlnet

        return io.NodeOutput(load_toy_controlnet())


class ToyControlImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_ToyControlImage", display_name="Toy World Control Image", category=CATEGORY,
            description="A control image for the toy world's ControlNet: a shape's outline, or a blob that fixes only "
                        "where the shape sits and how large it is (the shape input is then ignored).",
            inputs=[io.Combo.Input("kind", options=list(CONTROL_KINDS), default="blob",
                                   tooltip="outline: fixes the shape; blob: fixes position and size only."),
                    io.Combo.Input("shape", options=SHAPE_NAMES, default="circle", tooltip="The outline's shape."),
                    io.Float.Input("x", default=16.0, min=0.0, max=IMAGE_SIZE, step=0.5, tooltip="Centre, px from the left."),
                    io.Float.Input("y", default=16.0, min=0.0, max=IMAGE_SIZE, step=0.5, tooltip="Centre, px from the top."),
                    io.Float.Input("radius", default=11.0, min=4.0, max=16.0, step=0.5,
                                   tooltip="Size: the radius of the circle around the shape, px (the toy world draws "
                                           "9.6-12.8)."),
                    io.Float.Input("angle", default=0.0, min=-0.5, max=0.5, step=0.05,
                                   tooltip="Rotation of the outline, radians.")],
            outputs=[io.Image.Output(display_name="IMAGE")])

    @classmethod
    def execute(cls, kind, shape, x, y, radius, angle) -> io.NodeOutput:
        image = control_image(kind, shape, Placement(float(x), float(y), float(radius), float(angle)))
        return io.NodeOutput(torch.from_numpy(image)[None])

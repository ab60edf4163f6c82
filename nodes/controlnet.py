"""Apply Erasure to ControlNet: the erasure on a ControlNet's copy of the UNet's encoder (erasure_core.controlnet)."""
from __future__ import annotations

from comfy_api.latest import io

from erasure_core.backends import comfy as backend

from .common import CATEGORY


class EraseControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptEraser_EraseControlNet", display_name="Apply Erasure to ControlNet", category=CATEGORY,
            description="A ControlNet's encoder is a copy of the UNet's and reads the prompt too, so it can draw part "
                        "of an erased concept back. This applies the erasure to that copy; returns a new "
                        "CONTROL_NET, the input is unchanged.",
            inputs=[io.Model.Input("model", tooltip="The model the erasure was made for (original or erased): its "
                                                    "layer names."),
                    io.ControlNet.Input("control_net"),
                    io.LoraModel.Input("erasure", tooltip="The erasure output of an Erase or Load Erasure node."),
                    io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                                   tooltip="1 = the erasure as trained; 0 = none.")],
            outputs=[io.ControlNet.Output(display_name="CONTROL_NET")])

    @classmethod
    def execute(cls, model, control_net, erasure, strength) -> io.NodeOutput:
        return io.NodeOutput(backend.erased_controlnet(control_net, dict(erasure), model, float(strength)))

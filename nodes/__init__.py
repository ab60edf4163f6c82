"""The pack's nodes (V3 schema). Imported only by ComfyUI, through the pack's top-level __init__."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .audit import AuditErasure
from .compare import ErasureCompare
from .controlnet import EraseControlNet
from .dataset import ScrambledGridDataset
from .erase import EraseConceptCG, EraseConceptDT
from .files import LoadErasure, SaveErasure
from .toyworld import ToyControlImage, ToyControlNetLoader, ToyWorldLoader

NODES: list[type[io.ComfyNode]] = [ScrambledGridDataset, EraseConceptDT, EraseConceptCG, SaveErasure, LoadErasure,
                                   ErasureCompare, ToyWorldLoader, ToyControlNetLoader, ToyControlImage, AuditErasure,
                                   EraseControlNet]


class ConceptEraserExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES

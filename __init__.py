"""ComfyUI entry point of the Concept Eraser node pack (this folder goes into ComfyUI/custom_nodes/).

Importing this file outside ComfyUI does nothing heavy: the nodes, and with them `comfy`, are
imported only when ComfyUI calls `comfy_entrypoint`. `erasure_core` never imports this file.
"""
import os
import sys

WEB_DIRECTORY = "./web"  # served as /extensions/<folder name>/: the live loss curve on the node

_HERE = os.path.dirname(os.path.abspath(__file__))


def _make_core_importable() -> None:
    """`erasure_core` lives next to this file; a plain git clone does not install it as a package.
    Appended (not prepended) so this folder's `nodes/` never shadows ComfyUI's own `nodes` module."""
    try:
        import erasure_core  # noqa: F401  (already installed, e.g. pip install -e)
    except ImportError:
        if _HERE not in sys.path:
            sys.path.append(_HERE)


async def comfy_entrypoint():
    """Called by ComfyUI's loader (V3 nodes); returns the extension that lists the nodes."""
    _make_core_importable()
    from .nodes import ConceptEraserExtension

    return ConceptEraserExtension()

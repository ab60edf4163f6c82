"""Automatic1111 / reForge / Forge: registers the Concept Eraser tab.

The webui imports every `scripts/*.py` at start-up. Outside the webui (no `modules` package)
this file does nothing. It never imports ComfyUI; heavy imports wait until the tab is built.
"""
from __future__ import annotations

import os
import sys

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_ui_tabs():
    """The webui's tab callback: [(Blocks, title, elem_id)]."""
    if EXTENSION_ROOT not in sys.path:  # so that `erasure_core` (beside scripts/) imports
        sys.path.insert(0, EXTENSION_ROOT)
    from erasure_core.backends.webui import webui_host
    from erasure_core.ui_blocks import build_blocks

    return [(build_blocks(webui_host()), "Concept Eraser", "concept_eraser")]


def register() -> bool:
    """Register the tab when running inside the webui; return whether it was registered."""
    try:
        from modules import script_callbacks
    except ImportError:  # not inside the webui (tests, ComfyUI, plain Python)
        return False
    script_callbacks.on_ui_tabs(on_ui_tabs)
    return True


register()

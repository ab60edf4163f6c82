"""Paths the ComfyUI tests share (a module of its own: `conftest` is an ambiguous name under tests/)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Default: the tree tests/comfy_setup.sh installs beside the repo (what .ci/run does).
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui"))

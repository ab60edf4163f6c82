"""Where the tests find ComfyUI, and how they import it headless (shared by tests/comfy/ and the ldm
tests; a module of its own: `conftest` is an ambiguous name under tests/)."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Default: the tree tests/comfy_setup.sh installs beside the repo (what .ci/run does).
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".comfyui"))


def import_comfy() -> str | None:
    """Make the ComfyUI at COMFYUI_DIR importable headless (CPU); returns why not, or None.

    The order matters: ComfyUI's `nodes.py` and `utils/` must win over this repo's `nodes/` package,
    so its folder goes first on sys.path and `utils` is imported before `nodes`."""
    if not (COMFYUI_DIR / "comfy" / "model_management.py").exists():
        return f"no ComfyUI at COMFYUI_DIR={COMFYUI_DIR} (run tests/comfy_setup.sh)"
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    try:
        # diffusers registers torch custom ops, whose source lookup walks sys.modules: import it
        # before ComfyUI's ~3500 modules are loaded (several times faster on a busy machine).
        import diffusers.models.unets.unet_2d_condition  # noqa: F401
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
        import utils.install_util  # noqa: F401  (before `nodes`, which shadows `utils`)
        import comfy.model_management  # noqa: F401
        import nodes  # noqa: F401  (ComfyUI's nodes.py)
    except Exception as exc:  # any import failure means "no usable ComfyUI here"
        return f"ComfyUI at {COMFYUI_DIR} is not importable: {type(exc).__name__}: {exc}"
    return None

"""Build the Concept Eraser Blocks under other gradio versions, each in its own fresh venv (no launch).

    python tests/gradio_matrix.py [3.41.2 4.40.0 ...]      # default: the webui hosts' versions

The UI module imports no torch at module level, so each venv needs only gradio. Prints the
time each install took; exits non-zero if any build fails. Set CE_GRADIO_MATRIX=1 to run it
from pytest (tests/test_app_gradio_matrix.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_VERSIONS = ("3.41.2", "4.40.0")  # A1111 1.6-1.10 and reForge; Forge (2024-08 on)
# Pins the hosts have anyway, needed because later releases broke these gradio versions' imports
# (gradio 4.40 imports huggingface_hub.HfFolder, removed in huggingface_hub 1.0).
EXTRA_PINS = {"4.40.0": ["huggingface_hub<1"]}

BUILD = r"""
import sys, gradio as gr
from pathlib import Path
from erasure_core import ui_blocks
assert "torch" not in sys.modules, "building the UI must not import torch"
blocks = ui_blocks.build_blocks(ui_blocks.Host(load_model=lambda: None, out_dir=Path("unused"), toy=True,
                                                judge_path=Path("judge.safetensors"), intro="# test"))
assert isinstance(blocks, gr.Blocks)
config = blocks.get_config_file() if hasattr(blocks, "get_config_file") else blocks.config
lr, group, steps, rank = ui_blocks.on_method_change("cg")
print("built on gradio", gr.__version__, "with", len(config["components"]), "components")
"""


def build_under(version: str, python: str = sys.executable) -> tuple[bool, float, str]:
    """(ok, seconds the install took, output) for one gradio version."""
    with tempfile.TemporaryDirectory(prefix=f"ce-gradio-{version}-") as tmp:
        venv = Path(tmp) / "venv"
        started = time.time()
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"gradio=={version}",
                              *EXTRA_PINS.get(version, [])],
                             capture_output=True, text=True)
        seconds = time.time() - started
        if pip.returncode != 0:
            return False, seconds, pip.stdout + pip.stderr
        env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
        run = subprocess.run([str(venv / "bin" / "python"), "-c", BUILD], capture_output=True, text=True, env=env,
                             cwd=tmp, timeout=300)
        return run.returncode == 0, seconds, run.stdout + run.stderr


def main(argv: list[str]) -> int:
    failed = 0
    for version in argv or HOST_VERSIONS:
        ok, seconds, output = build_under(version)
        print(f"gradio {version}: {'ok' if ok else 'FAILED'} (install {seconds:.0f} s)\n{output.strip()[-3000:]}",
              flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

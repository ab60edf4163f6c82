"""requirements.txt states the lowest versions the erasures work with; this runs them on exactly those.

The Automatic1111 environment (tests/webui/setup_webui.sh) holds the webui's own old pins, which are the
stated lower bounds of transformers, safetensors, numpy and pillow; the lowest diffusers and peft go first on
its path. tests/webui/lowest_versions_check.py checks the versions, then erases on the toy world.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from webui_process import REPO, built

pytestmark = pytest.mark.slow


def test_the_stated_lowest_versions_work(tmp_path):
    dest = built("a1111")
    if dest is None:
        pytest.skip("no a1111 webui environment built (run: tests/webui/setup_webui.sh a1111 .webui/a1111)")
    import sys

    sys.path.insert(0, str(REPO))
    from erasure_core import dependencies

    lowest = {name: req.split(">=", 1)[1] for req, name in dependencies.requirements()}
    python = str(dest / "venv/bin/python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "lowest"),
                    f"diffusers=={lowest['diffusers']}", f"peft=={lowest['peft']}", "importlib-metadata", "zipp"],
                   check=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "lowest"), OMP_NUM_THREADS="1")
    run = subprocess.run([python, str(REPO / "tests/webui/lowest_versions_check.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=1800)
    print(run.stdout, run.stderr[-3000:])
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]

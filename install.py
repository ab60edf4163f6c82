"""Run by Automatic1111 / reForge / Forge at each start: install what requirements.txt lists.

Uses the webui's own helpers (`launch.is_installed`, `launch.run_pip`), which do nothing under
--skip-install. torch is never installed or pinned here: the webui brings its own.
"""
from __future__ import annotations

import os
import re

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
NEVER_INSTALL = {"torch", "torchvision", "xformers"}  # the webui's own; a different build would break it


def requirements(path: str | None = None) -> list[tuple[str, str]]:
    """[(pip requirement, distribution name)] from a requirements file, comments and torch left out."""
    out = []
    with open(path or REQUIREMENTS, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].strip()
            if name.lower() not in NEVER_INSTALL:
                out.append((line, name))
    return out


def install(launch_module) -> list[str]:
    """Install each missing requirement with the webui's pip; returns what it asked pip for.

    A package the webui already has is left at its version (upgrading e.g. transformers under
    the webui could break it); only missing ones are installed.
    """
    asked = []
    for requirement, name in requirements():
        if not launch_module.is_installed(name):
            launch_module.run_pip(f'install "{requirement}"', f"Concept Eraser requirement: {requirement}")
            asked.append(requirement)
    return asked


try:  # the webui runs this file with its root on PYTHONPATH, so `launch` imports there
    import launch as _launch
except ImportError:  # outside the webui: nothing to do
    _launch = None
if _launch is not None and hasattr(_launch, "run_pip"):
    install(_launch)

"""Run by Automatic1111 / reForge / Forge at each start: install what requirements.txt lists and is missing.

Nothing the webui has moves: a package it has stays at its version, and pip installs the missing ones under
a constraints file that pins every installed package at its installed version (so no dependency of theirs
can upgrade or downgrade one of the webui's). Where the webui's packages are older than the newest
diffusers/peft need, an older range that imports with them is asked for (erasure_core/dependencies.py).
Then it imports what the tab needs and, if that fails, prints one line with the fix.
Uses the webui's own pip helper (`launch.run_pip`), a no-op under --skip-install. torch is never installed.
"""
from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))


def install(launch_module, deps) -> list[str]:
    """Install each missing requirement with the webui's pip; returns what it asked pip for."""
    installed = deps.installed_versions()
    asked = [deps.choose(req, name, installed) for req, name in deps.missing(deps.requirements(), installed)]
    if not asked:
        return []
    with tempfile.TemporaryDirectory() as folder:
        constraints = os.path.join(folder, "webui-packages.txt")
        with open(constraints, "w", encoding="utf-8") as f:
            f.write(deps.constraints_text(installed))
        wanted = " ".join(f'"{requirement}"' for requirement in asked)
        launch_module.run_pip(f'install -c "{constraints}" {wanted}', f"Concept Eraser requirements: {', '.join(asked)}")
    return asked


def main() -> None:
    try:  # the webui runs this file with its root on PYTHONPATH, so `launch` imports there
        import launch
    except ImportError:  # outside the webui: nothing to do
        return
    if not hasattr(launch, "run_pip"):
        return
    sys.path.insert(0, ROOT)
    from erasure_core import dependencies

    try:
        install(launch, dependencies)
    except Exception as exc:  # pip failed (no network, no release fits the webui's packages): say so, in one line
        print(f"Concept Eraser: installing its requirements failed ({str(exc).strip().splitlines()[0]}). Fix: see "
              f"pip's message above; nothing the webui has was changed.", flush=True)
    problem = dependencies.import_problem()
    if problem:
        print(problem, flush=True)


if __name__ == "__main__":
    main()

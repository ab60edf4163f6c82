"""Adding Concept Eraser's packages to a host's Python without moving anything the host has.

The webui's install.py uses this at every start (so it imports nothing beyond the standard library):
- `missing(...)`: the requirements (requirements.txt) whose package is not installed at all; a package the
  host has stays at its version, whatever it is;
- `choose(...)`: the version range to ask pip for, one that imports with the host's own packages;
- `constraints_text(...)`: every installed distribution pinned at its installed version, a pip constraints
  file: pip may then add packages, but never upgrade or downgrade one the host has;
- `import_problem()`: imports what the erasure needs; None, or one line saying what fails and the fix.
"""
from __future__ import annotations

import importlib
import re
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
NEVER_INSTALL = {"torch", "torchvision", "xformers"}  # the host's own builds; another one would break it

# Version ranges that import with older hosts, found by importing each release in Automatic1111 1.10.1's
# environment (transformers 4.30.2, accelerate 0.21.0, huggingface_hub 0.36.2): peft 0.14 imports
# `transformers.Cache` (transformers >= 4.36) and peft 0.15 on accelerate's `clear_device_cache`
# (accelerate >= 0.33), while 0.12.0-0.13.2 import there. diffusers declares the huggingface_hub it needs:
# 0.42 (hub >= 1.32) fails there with "cannot import name 'resolve_revision'", while 0.30-0.40 import.
# (package, host package, oldest host version the newest release imports with, range for older hosts)
OLDER_HOSTS = (
    ("peft", "transformers", "4.36", "peft>=0.12.0,<0.14"),
    ("peft", "accelerate", "0.33", "peft>=0.12.0,<0.14"),
    ("diffusers", "huggingface-hub", "1.0", "diffusers>=0.30.0,<0.38"),
)

# What the erasure imports from each package (the tab, the nodes and the command line alike).
NEEDED_IMPORTS = (
    ("diffusers", ("DDIMScheduler", "UNet2DConditionModel")),
    ("peft", ("LoraConfig", "inject_adapter_in_model")),
    ("safetensors.torch", ("load_file", "save_file")),
)


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): 'Huggingface_Hub' -> 'huggingface-hub'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version: '4.30.2' -> (4, 30, 2), '2.14.1+cu130' -> (2, 14, 1)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("-")[0])[:4])


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every distribution this Python sees (the first one where there are two)."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            versions.setdefault(canonical(name), dist.version)
    return versions


def requirements(path: Path | str | None = None) -> list[tuple[str, str]]:
    """[(pip requirement, distribution name)] from requirements.txt, comments and torch left out."""
    out = []
    for line in Path(path or REQUIREMENTS).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].strip()
        if canonical(name) not in NEVER_INSTALL:
            out.append((line, name))
    return out


def missing(reqs: list[tuple[str, str]], installed: dict[str, str]) -> list[tuple[str, str]]:
    """The requirements whose package is not installed at all."""
    return [(req, name) for req, name in reqs if canonical(name) not in installed]


def choose(requirement: str, name: str, installed: dict[str, str]) -> str:
    """The range to ask pip for: a narrower one where the host's packages are too old for the newest release."""
    for package, host_package, oldest, older_range in OLDER_HOSTS:
        have = installed.get(host_package)
        if canonical(name) == package and have is not None and version_tuple(have) < version_tuple(oldest):
            return older_range
    return requirement


def constraints_text(installed: dict[str, str]) -> str:
    """A pip constraints file pinning every installed distribution at its installed version."""
    pins = [f"{name}=={version}" for name, version in sorted(installed.items())
            if re.fullmatch(r"[0-9][0-9A-Za-z.+!_-]*", version)]  # a legacy version string cannot be pinned
    return "\n".join(pins) + "\n"


def import_problem() -> str | None:
    """Import what the erasure needs; None when everything imports, else one line with the cause and the fix."""
    for module, names in NEEDED_IMPORTS:
        try:
            imported = importlib.import_module(module)
            for attribute in names:
                getattr(imported, attribute)
        except Exception as exc:  # ImportError, or whatever a broken package raises while importing
            package = module.split(".")[0]
            installed = installed_versions()
            chosen = choose(package, package, installed)
            host = ", ".join(f"{n} {installed[n]}" for n in ("transformers", "accelerate", "huggingface-hub")
                             if n in installed)
            return (f"Concept Eraser: `from {module} import {', '.join(names)}` fails ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}). Fix: stop the webui and run "
                    f"\"{sys.executable}\" -m pip install \"{chosen}\" (a release that imports with {host or 'this Python'}), "
                    "then start it again.")
    return None

"""Run the erasures on exactly the lowest versions requirements.txt states (run by test_lowest_versions.py with
the Automatic1111 environment's Python, whose pins are those lowest versions, and diffusers/peft put first on the
path): every `name>=X` must be installed at X, then the toy world loads, cg trains a LoRA (peft) and dt full
weights, and the files save, load and apply."""
from __future__ import annotations

import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from erasure_core import dependencies, erasure_file  # noqa: E402
from erasure_core.methods import CGConfig, DTConfig, erase_cg, erase_dt  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import MODEL_DIR  # noqa: E402


def lowest_versions() -> dict[str, str]:
    out = {}
    for requirement, name in dependencies.requirements():
        lowest = requirement.split(">=", 1)[1].split(",")[0].strip()
        out[name] = lowest
    return out


def main() -> int:
    wrong = {name: (low, metadata.version(name)) for name, low in lowest_versions().items()
             if metadata.version(name) != low}
    if wrong:
        print(f"not the lowest versions (stated, installed): {wrong}")
        return 1
    print("versions:", ", ".join(f"{n} {v}" for n, v in lowest_versions().items()), f"torch {torch.__version__}")
    torch.set_num_threads(1)
    model = load_diffusers_model(MODEL_DIR)
    common = dict(concepts=["circle"], templates=["a red solid {}"], preserve_prompts=["a blue solid square"],
                  steps=2, sample_steps=2, guidance=1.5, batch_size=2)
    results = [erase_cg(model, CGConfig(**common, alternatives=["square"], rank=2, trajectories_per_prompt=1)),
               erase_dt(model, DTConfig(**common, images_per_prompt=1, scrambles_per_image=1,
                                        preserve_images_per_prompt=1))]
    with tempfile.TemporaryDirectory() as folder:
        for result in results:
            assert all(v == v for v in result.losses), result.losses
            path = result.save(Path(folder) / f"{result.method}.safetensors")
            tensors, meta = erasure_file.load_erasure(path)
            merged = erasure_file.apply_erasure(model.unet, tensors, metadata=meta)
            changed = sum(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(),
                                                                 model.unet.state_dict().values()))
            assert changed > 0, result.method
            print(f"{result.method}: {len(tensors)} tensors saved, loaded and applied ({changed} weights changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the erasures on exactly the lowest versions requirements.txt states (run by test_lowest_versions.py with
the Automatic1111 environment's Python, whose pins are those lowest versions, and diffusers/peft put first on the
path): every `name>=X` must be installed at X, then the toy world loads, cg trains a LoRA (peft) and dt full
weights, and the files save, load and apply.

The toy world is stored as transformers 5 writes it, which transformers 4 cannot read as it is: the tokenizer as
tokenizer.json only, the text encoder's keys without their `text_model.` prefix (transformers 4 would start
those layers from random values, with a warning). A copy of the model holds both as transformers 4 (and
standard SD1.x folders) store them: the same vocabulary and merges as vocab.json/merges.txt, checked to give the
same token ids, and the same text-encoder tensors under their prefixed names, checked to be the ones loaded.
"""
from __future__ import annotations

import json
import shutil
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


# Token ids of the toy world's tokenizer under transformers 5.24 (the shipped tokenizer.json).
EXPECTED_IDS = {"a red solid circle": [206, 54, 192, 197, 138, 207], "a blue striped cross": [206, 54, 129, 200, 144, 207]}


def model_copy_for_transformers_4(folder: Path) -> Path:
    """The toy model with its tokenizer as vocab.json + merges.txt (the same BPE data) and its text encoder's
    tensors under transformers 4's names."""
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(MODEL_DIR, folder / "model"))
    weights = model / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}, str(weights),
              metadata={"format": "pt"})
    bpe = json.loads((model / "tokenizer" / "tokenizer.json").read_text())["model"]
    (model / "tokenizer" / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in bpe["merges"]]
    (model / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return model


def main() -> int:
    wrong = {name: (low, metadata.version(name)) for name, low in lowest_versions().items()
             if metadata.version(name) != low}
    if wrong:
        print(f"not the lowest versions (stated, installed): {wrong}")
        return 1
    print("versions:", ", ".join(f"{n} {v}" for n, v in lowest_versions().items()), f"torch {torch.__version__}")
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    model = load_diffusers_model(model_copy_for_transformers_4(folder))
    for prompt, ids in EXPECTED_IDS.items():
        got = model.tokenizer([prompt]).input_ids[0]
        assert got == ids, (prompt, got, ids)
    from safetensors.torch import load_file

    stored = load_file(str(MODEL_DIR / "text_encoder" / "model.safetensors"))
    loaded = {k.removeprefix("text_model."): v for k, v in model.text_encoder.state_dict().items()}
    assert all(torch.equal(loaded[k.removeprefix("text_model.")], v) for k, v in stored.items()), \
        "the text encoder's weights did not load"
    common = dict(concepts=["circle"], templates=["a red solid {}"], preserve_prompts=["a blue solid square"],
                  steps=2, sample_steps=2, guidance=1.5, batch_size=2)
    results = [erase_cg(model, CGConfig(**common, alternatives=["square"], rank=2, trajectories_per_prompt=1)),
               erase_dt(model, DTConfig(**common, images_per_prompt=1, scrambles_per_image=1,
                                        preserve_images_per_prompt=1))]
    for result in results:
        assert all(v == v for v in result.losses), result.losses
        path = result.save(folder / f"{result.method}.safetensors")
        tensors, meta = erasure_file.load_erasure(path)
        merged = erasure_file.apply_erasure(model.unet, tensors, metadata=meta)
        changed = sum(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(),
                                                             model.unet.state_dict().values()))
        assert changed > 0, result.method
        print(f"{result.method}: {len(tensors)} tensors saved, loaded and applied ({changed} weights changed)")
    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

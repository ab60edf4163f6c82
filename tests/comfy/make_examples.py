"""Write examples/*.json (ComfyUI saved workflows) from compact specs.

    python tests/comfy/make_examples.py OBJECT_INFO.json     (GET /object_info of a ComfyUI with the pack)
    python tests/comfy/make_examples.py --attach URL BASE    (a running server from comfy_server.start: also
                                                              writes the ControlNet example's README picture)
The specs below are the single source of the examples; the server test runs these files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from workflows import build_ui

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402

CKPT = "v1-5-pruned-emaonly.safetensors"
CONCEPT, PRESERVE = "a dog", "a photo of a cat\na city street"


def loader(pos=(0, 0)):
    return {"type": "CheckpointLoaderSimple", "pos": pos, "widgets": {"ckpt_name": CKPT}}


def text(prompt, clip, pos):
    return {"type": "CLIPTextEncode", "pos": pos, "widgets": {"text": prompt}, "links": {"clip": clip},
            "size": [300, 120]}


def sampler(model, pos_cond, neg_cond, latent, pos, seed=42):
    return {"type": "KSampler", "pos": pos, "widgets": {"seed": seed, "steps": 20, "cfg": 7.0},
            "links": {"model": model, "positive": pos_cond, "negative": neg_cond, "latent_image": latent}}


def save(images, prefix, pos):
    return {"type": "SaveImage", "pos": pos, "widgets": {"filename_prefix": prefix}, "links": {"images": images}}


def decode(samples, vae, pos):
    return {"type": "VAEDecode", "pos": pos, "links": {"samples": samples, "vae": vae}, "size": [200, 60]}


# The ControlNet example runs on the built-in toy world: erase "circle", then draw "a red solid circle" from the
# erased and the original MODEL through the toy ControlNet with a blob that fixes only where the shape sits.
TOY_CONCEPT, TOY_PROMPT = "circle", "a red solid circle"
TOY_DT = dict(concept=TOY_CONCEPT, preserve="\n".join(toy_eval.preserve_prompts([TOY_CONCEPT])),
              templates="\n".join(toy_eval.concept_templates(TOY_CONCEPT)), steps=100, learning_rate=1e-3, rank=8,
              parameter_group="all", batch_size=8, sampling_steps=25, image_size=32, seed=0, grid=4,
              images_per_prompt=2, preserve_weight=4.0)
TOY_SAMPLER = {"seed": 7, "steps": 25, "cfg": toy_eval.EVAL_GUIDANCE, "sampler_name": "ddim",
               "scheduler": "ddim_uniform"}
TOY_BATCH = 8  # images per branch (one noise seed, eight draws): what the test judges


def erase_cg(pos, concept=CONCEPT, alternative="a cat"):
    return {"type": "ConceptEraser_EraseCG", "pos": pos, "size": [360, 560],
            "widgets": {"concept": concept, "alternative": alternative, "preserve": PRESERVE},
            "links": {"model": (1, 0), "clip": (1, 1)}}


EXAMPLES = {
    "erase_and_compare": ("Erase a concept (classifier guidance) and compare before/after with the same seeds", {
        1: loader(),
        2: erase_cg((380, 0)),
        3: {"type": "ConceptEraser_Compare", "pos": (800, 0), "size": [340, 420],
            "widgets": {"prompts": f"a photo of {CONCEPT}\n{PRESERVE}", "seed": 7},
            "links": {"original": (1, 0), "erased": (2, 0), "clip": (1, 1), "vae": (1, 2)}},
        4: save((3, 0), "concept_eraser/compare", (1180, 0)),
        5: {"type": "LossGraphNode", "pos": (800, 480), "links": {"loss": (2, 2)},
            "widgets": {"filename_prefix": "concept_eraser/loss"}},
    }),
    "erase_with_controlnet": ("Degeneration-Tuning erasure of 'circle' on the built-in toy world, then the erased "
                              "MODEL and the original through the same ControlNet (ControlNetApplyAdvanced, a blob "
                              "that fixes only where the shape sits) + KSampler; the erased branch's ControlNet "
                              "carries the erasure too (Apply Erasure to ControlNet)", {
        1: {"type": "ConceptEraser_ToyWorldLoader", "pos": (0, 0), "size": [320, 120]},
        2: {"type": "ConceptEraser_EraseDT", "pos": (380, 0), "size": [360, 600], "widgets": TOY_DT,
            "links": {"model": (1, 0), "clip": (1, 1), "vae": (1, 2)}},
        3: text(TOY_PROMPT, (1, 1), (380, 640)),
        4: text("", (1, 1), (380, 800)),
        5: {"type": "ConceptEraser_ToyControlNetLoader", "pos": (0, 400), "size": [320, 80]},
        6: {"type": "ConceptEraser_ToyControlImage", "pos": (0, 520), "size": [320, 220],
            "widgets": {"kind": "blob", "shape": "circle", "x": 16.0, "y": 16.0, "radius": 11.0}},
        7: {"type": "ControlNetApplyAdvanced", "pos": (780, 640), "widgets": {"strength": 1.0},
            "links": {"positive": (3, 0), "negative": (4, 0), "control_net": (5, 0), "image": (6, 0)},
            "title": "Apply ControlNet (original)"},
        # The erased branch: the ControlNet's copy of the UNet's encoder gets the erasure too, or it can draw part
        # of the erased shape back (README, "Under ControlNet").
        15: {"type": "ConceptEraser_EraseControlNet", "pos": (780, 0), "size": [320, 130],
             "links": {"model": (1, 0), "control_net": (5, 0), "erasure": (2, 1)}},
        16: {"type": "ControlNetApplyAdvanced", "pos": (780, 180), "widgets": {"strength": 1.0},
             "links": {"positive": (3, 0), "negative": (4, 0), "control_net": (15, 0), "image": (6, 0)},
             "title": "Apply ControlNet (erased)"},
        8: {"type": "EmptyLatentImage", "pos": (780, 860),
            "widgets": {"width": 128, "height": 128, "batch_size": TOY_BATCH}},  # 16x16 latents: 32 px images
        9: {**sampler((2, 0), (16, 0), (16, 1), (8, 0), (1140, 0)), "widgets": TOY_SAMPLER,
            "title": "KSampler (erased)"},
        10: {**sampler((1, 0), (7, 0), (7, 1), (8, 0), (1140, 520)), "widgets": TOY_SAMPLER,
             "title": "KSampler (original)"},
        11: decode((9, 0), (1, 2), (1500, 0)),
        12: decode((10, 0), (1, 2), (1500, 520)),
        13: save((11, 0), "concept_eraser/erased", (1740, 0)),
        14: save((12, 0), "concept_eraser/original", (1740, 520)),
    }),
    "save_erasure": ("Erase and save the erasure into the loras folder (then run load_erasure_with_lora_loader)", {
        1: loader(),
        2: erase_cg((380, 0)),
        3: {"type": "ConceptEraser_SaveErasure", "pos": (800, 0), "widgets": {"filename_prefix": "erasures/no_dog"},
            "links": {"erasure": (2, 1)}},
        4: text(f"a photo of {CONCEPT}", (1, 1), (800, 200)),
        5: text("", (1, 1), (800, 360)),
        6: {"type": "EmptyLatentImage", "pos": (800, 520), "widgets": {"width": 512, "height": 512}},
        7: sampler((2, 0), (4, 0), (5, 0), (6, 0), (1140, 200)),
        8: decode((7, 0), (1, 2), (1500, 200)),
        9: save((8, 0), "concept_eraser/erased_in_graph", (1740, 200)),
    }),
    "load_erasure_with_lora_loader": ("A fresh graph: the saved erasure through the core LoraLoader", {
        1: loader(),
        2: {"type": "LoraLoader", "pos": (380, 0),
            "widgets": {"lora_name": "erasures/no_dog_00001.safetensors", "strength_model": 1.0, "strength_clip": 1.0},
            "links": {"model": (1, 0), "clip": (1, 1)}},
        4: text(f"a photo of {CONCEPT}", (2, 1), (800, 0)),
        5: text("", (2, 1), (800, 160)),
        6: {"type": "EmptyLatentImage", "pos": (800, 320), "widgets": {"width": 512, "height": 512}},
        7: sampler((2, 0), (4, 0), (5, 0), (6, 0), (1140, 0)),
        8: decode((7, 0), (1, 2), (1500, 0)),
        9: save((8, 0), "concept_eraser/lora_loaded", (1740, 0)),
    }),
}


def main(object_info_path: str) -> None:
    info = json.loads(Path(object_info_path).read_text())
    out = REPO / "examples"
    out.mkdir(exist_ok=True)
    for name, (title, spec) in EXAMPLES.items():
        (out / f"{name}.json").write_text(json.dumps(build_ui(spec, info, title), indent=1) + "\n")
        print("wrote", out / f"{name}.json")


if __name__ == "__main__":
    main(sys.argv[1])

"""Where an erasure with an alternative misses, prompt by prompt, against what the original draws for the alternative.

    python bench/alt_by_prompt.py --erasure out/erase_red_cg.safetensors --concept red --alternative green

For each concept prompt of the toy world's evaluation set (same prompts and seeds as bench/quality.py), the judge's
reading of the attribute (colour, shape or fill) on two images: the original model asked for the alternative
itself ("a green dotted circle" for "a red dotted circle") and the erased model asked for the concept. Then the
counts of (original asked for the alternative, erased) pairs: a concept image left as the concept where the
original draws the alternative wrong too is the model's miss; where the original draws it right, the erasure's.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from erasure_core.erasure_file import apply_erasure, load_erasure  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import JUDGE_PATH, MODEL_DIR  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402


def readings(erasure: Path, concept: str, alternative: str, model_dir: Path = MODEL_DIR) -> list[tuple[str, str, str]]:
    """[(concept prompt, the original's reading asked for the alternative, the erased model's reading)]."""
    model, judge = load_diffusers_model(str(model_dir)), load_judge(JUDGE_PATH)
    eval_set = toy_eval.make_eval_set(concept)
    head = eval_set.attribute  # the judge's head for it: shape, color or style
    asked = judge.predict(toy_eval.alternative_images(model, eval_set, alternative))[head]
    state_dict, metadata = load_erasure(erasure)
    erased_unet = apply_erasure(model.unet, state_dict, metadata=metadata)
    erased = judge.predict(toy_eval.generate(model, eval_set, unet=erased_unet, paraphrases=False).concept)[head]
    return list(zip(eval_set.concept_prompts, asked, erased))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--erasure", type=Path, required=True, help="the erasure file (.safetensors) to look at")
    parser.add_argument("--concept", required=True, help="the erased concept, as the toy world names it (red)")
    parser.add_argument("--alternative", required=True, help="the alternative it was pulled to (green)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = readings(args.erasure, args.concept, args.alternative)
    print(f"{'concept prompt':32s} {'original asked ' + args.alternative:>24s} {'erased':>10s}")
    for prompt, asked, erased in rows:
        print(f"{prompt:32s} {asked:>24s} {erased:>10s}")
    print("\n(original asked for the alternative, erased): count")
    for (asked, erased), count in collections.Counter((a, e) for _, a, e in rows).most_common():
        print(f"  ({asked}, {erased}): {count}")


if __name__ == "__main__":
    main()

"""One method, several settings, one task of bench/quality.py: how the defaults are chosen.

    python bench/sweep.py --task style --method dt --row grid=4 --row grid=8 --row grid=16 [--out FILE.md]

Each --row is the method's bench/quality.py settings with comma-separated overrides
(`name=value`, values read as Python literals), scored with the same prompts, seeds and judge.
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import TASKS, method_settings  # noqa: E402

from erasure_core.methods import METHODS  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import JUDGE_PATH, MODEL_DIR  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402

COLUMNS = ("erased_rate", "preserved_acc", "divergence", "paraphrase_erased_rate")


def parse_overrides(text: str) -> dict:
    """'grid=16,lr=1e-4' -> {'grid': 16, 'lr': 0.0001}; a bare word stays a string."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            overrides[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[name.strip()] = value.strip()
    return overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="object")
    parser.add_argument("--method", default="dt", help="a row of bench/quality.py: esd, dt, cg or cg_alt")
    parser.add_argument("--row", action="append", default=[], help="overrides, e.g. grid=16,lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    method, base = method_settings(args.task)[args.method]
    concept = TASKS[args.task][0]
    model, judge = load_diffusers_model(MODEL_DIR), load_judge(JUDGE_PATH)
    eval_set = toy_eval.make_eval_set(concept)
    original = toy_eval.generate(model, eval_set)
    before = toy_eval.score(judge, eval_set, original)
    lines = [f"`python bench/sweep.py --task {args.task} --method {args.method} "
             + " ".join(f"--row {r}" for r in args.row) + "`", "",
             f"Erase {concept!r} ({args.task} task); original: erased {before['erased_rate']:.3f}, "
             f"preserved {before['preserved_acc']:.3f}.", "",
             "| overrides | " + " | ".join(COLUMNS) + " | train s |", "|" + "---|" * (len(COLUMNS) + 2)]
    for row in args.row or [""]:
        config_cls, erase = METHODS[method]
        started = time.time()
        result = erase(model, config_cls(**{**base, **parse_overrides(row)}))
        score = toy_eval.score(judge, eval_set, toy_eval.generate(model, eval_set, unet=result.tuned_unet),
                               before=original)
        lines.append(f"| {row or '(bench settings)'} | " + " | ".join(f"{score[c]:.3f}" for c in COLUMNS)
                     + f" | {result.seconds:.0f} |")
        print(lines[-1], f"({time.time() - started:.0f} s with scoring)", flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One row of bench/quality.py, several settings, one tuning concept: how the defaults are chosen.

    python bench/sweep.py --concept circle --row dt --set group=cross_attn,lr=5e-4 --set rank=8,lr=1e-3 [--out FILE.md]

Each --set is the row's bench/quality.py settings (the defaults for the concept's kind) with comma-separated
overrides (`name=value`, values read as Python literals), scored with the same prompts, seeds and judge. Only the
tuning concepts (erasure_core/toyworld/splits.py) may be swept: settings chosen on a held-out concept would make
the quality table's held-out columns measure the concepts they were fitted on.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import ROWS, ConceptRun, Row, fmt, measure, misses  # noqa: E402

from erasure_core.errors import ErasureInputError  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import JUDGE_PATH, MODEL_DIR  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402
from erasure_core.toyworld.splits import require_tuning  # noqa: E402

# The table's rows, and Concept Ablation without its alternative (the table's `ca` row is anchored on it): what
# the anchor option (methods/common.py) does to it.
SWEEP_ROWS = ROWS + [Row("ca_no_alt", "ca")]

COLUMNS = ("erased_rate", "paraphrase_erased_rate", "preserved_acc", "preserved_drop", "kept_rate", "alt_hit_rate",
           "alt_ceiling", "divergence")


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
    parser.add_argument("--concept", default="circle", help="a tuning concept: circle, striped or green")
    parser.add_argument("--row", default="dt", choices=[r.name for r in SWEEP_ROWS], metavar="ROW",
                        help=f"a row of bench/quality.py: {', '.join(r.name for r in SWEEP_ROWS)}")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="overrides, e.g. grid=16,lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="also write the table to this markdown file (rewritten after every setting)")
    parser.add_argument("--images", help="keep every drawn image set in this folder and reuse it when there: run the "
                        "same sweep again to score it with another judge without training again")
    args = parser.parse_args(argv)
    try:
        concept = toy_eval.parse_concept(args.concept)[1]
        require_tuning([concept])
    except ErasureInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    row = next(r for r in SWEEP_ROWS if r.name == args.row)
    model, judge = load_diffusers_model(MODEL_DIR), load_judge(JUDGE_PATH)
    run = ConceptRun(concept, toy_eval.make_eval_set(concept), Path(args.images) if args.images else None)
    lines = [f"`python bench/sweep.py --concept {concept} --row {row.name} "
             + " ".join(f"--set {s}" for s in args.sets) + "`", "",
             "| overrides | " + " | ".join(COLUMNS) + " | train s | misses |", "|" + "---|" * (len(COLUMNS) + 3)]
    for text in args.sets or [""]:
        record = measure(model, judge, run, row, tuple(parse_overrides(text).items()))
        lines.append(f"| {text or '(defaults)'} | " + " | ".join(fmt(record[c]) for c in COLUMNS)
                     + f" | {record['seconds']:.0f} | {', '.join(misses(record)) or '-'} |")
        print(lines[-1], record["becomes"], flush=True)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One command, one table: every method on the toy world, same prompts, seeds and judge.

    python bench/quality.py [--out DIR] [--tasks object,style]

Writes DIR/quality.json (one record per task and row) and DIR/quality.md (default DIR:
bench/results). Rows: the original model, the negative prompt at sampling time, ESD, DT,
classifier guidance without and with an alternative.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure_core.__main__ import demo_dt_options  # noqa: E402
from erasure_core.jobs import write_json  # noqa: E402
from erasure_core.methods import METHODS  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import JUDGE_PATH, MODEL_DIR  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402

# task -> (concept, alternative, ESD's parameter group as its paper prescribes for that kind)
TASKS = {
    "object": ("circle", "square", "no_cross_attn"),  # ESD-u for objects
    "style": ("striped", "dotted", "cross_attn"),  # ESD-x for styles
}


def method_settings(task: str) -> dict[str, tuple[str, dict]]:
    """Row -> (method, options). The settings each method ships with (chosen on this toy world)."""
    concept, alternative, esd_group = TASKS[task]
    common = dict(concepts=[concept], **toy_eval.toy_options([concept]), seed=0)
    return {
        "esd": ("esd", dict(common, group=esd_group, steps=300, lr=1e-4, eta=1.0, batch_size=16)),
        "dt": ("dt", demo_dt_options(concept)),  # the demo's settings
        "cg": ("cg", dict(common, steps=300, batch_size=16)),
        "cg_alt": ("cg", dict(common, alternatives=[alternative], steps=300, batch_size=16)),
    }


def run_task(model, judge, task: str, log) -> list[dict]:
    concept, alternative, _ = TASKS[task]
    eval_set = toy_eval.make_eval_set(concept)
    records = []

    def record(row, images, before, seconds, steps, alt=alternative):
        s = toy_eval.score(judge, eval_set, images, before=before, alternative=alt)
        rec = {"task": task, "method": row, "concept": concept, "alternative": alternative,
               **{k: (round(v, 4) if v is not None else None) for k, v in s.items()},
               "seconds": round(seconds, 1), "steps": steps}
        log(json.dumps(rec))
        records.append(rec)

    t0 = time.time()
    original = toy_eval.generate(model, eval_set)
    record("original", original, original, 0.0, 0)
    negative = toy_eval.generate(model, eval_set, negative_prompt=concept)
    record("negative_prompt", negative, original, 0.0, 0)
    for row, (method, options) in method_settings(task).items():
        config_cls, erase = METHODS[method]
        result = erase(model, config_cls(**options))
        images = toy_eval.generate(model, eval_set, unet=result.tuned_unet)
        record(row, images, original, result.seconds, result.steps)
    log(f"task {task} done in {time.time() - t0:.0f}s")
    return records


def markdown(records: list[dict], header: str) -> str:
    cols = ["method", "erased_rate", "preserved_acc", "divergence", "alt_hit_rate", "paraphrase_erased_rate",
            "seconds", "steps"]
    lines = [header, ""]
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        lines += [f"### Task: {task} (erase '{rows[0]['concept']}', alternative '{rows[0]['alternative']}')", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [("—" if r[c] is None else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--tasks", default="object,style")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, judge = load_diffusers_model(MODEL_DIR), load_judge(JUDGE_PATH)
    started = time.time()
    records = [r for task in args.tasks.split(",") for r in run_task(model, judge, task, print)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quality.json", {"records": records, "command": "python bench/quality.py",
                                      "device": f"cpu {platform.machine()}, {torch.get_num_threads()} threads",
                                      "seconds": round(time.time() - started, 1)})
    header = (f"Measured by `python bench/quality.py` on the toy world ({platform.machine()} CPU, "
              f"{torch.get_num_threads()} threads, {time.time() - started:.0f} s in all). Judge: the toy world's "
              "classifier; eval sampler DDIM 25 steps, CFG 1.5.")
    (out / "quality.md").write_text(markdown(records, header))
    print(markdown(records, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())

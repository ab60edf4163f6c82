"""One command, one table: every method on the toy world, same prompts, seeds and judge.

    python bench/quality.py [--out DIR] [--tasks object,style] [--xl]

Writes DIR/quality.json (one record per task and row) and DIR/quality.md (default DIR:
bench/results). Rows: the original model, the negative prompt at sampling time, ESD, DT,
classifier guidance without and with an alternative; then the same rows again with the toy
world's ControlNet driving the original and each erased UNet (the same prompts and seeds, each
with its control image), plus "original, empty prompt": what the control alone draws.
With --xl: the same tasks, methods and settings on the XL (SDXL-architecture) toy world, into
DIR/quality_xl.{json,md}, without the ControlNet rows (the toy world's ControlNet is an SD1 one).
"""
from __future__ import annotations

import argparse
import functools
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
from erasure_core.controlnet import load_controlnet  # noqa: E402
from erasure_core.toyworld import CONTROLNET_DIR, JUDGE_PATH, MODEL_DIR, XL_MODEL_DIR  # noqa: E402
from erasure_core.toyworld import control as toy_control  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402

# task -> (concept, alternative, ESD's parameter group as its paper prescribes for that kind)
TASKS = {
    "object": ("circle", "square", "no_cross_attn"),  # ESD-u for objects
    "style": ("striped", "dotted", "cross_attn"),  # ESD-x for styles
}
# task -> the control images the ControlNet rows use (toyworld/control.py). The blob fixes position and size only,
# so it forces neither a shape nor a fill; the outline draws the prompt's own shape, so on the object task it draws
# the erased circle itself for every circle prompt.
CONTROL_KINDS = {"object": ("blob", "outline"), "style": ("outline",)}


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


def shipped_controlnet(log):
    """The toy world's ControlNet, loaded when the first ControlNet row needs it (its build logged)."""
    info = json.loads((CONTROLNET_DIR / "build_info.json").read_text())
    log(f"ControlNet: {CONTROLNET_DIR} ({info['command']}, trained {info['seconds']} s)")
    return load_controlnet(CONTROLNET_DIR)


def run_task(model, judge, task: str, log, controlnet=None) -> list[dict]:
    """The task's rows; `controlnet`: a ControlNet, or a function that returns one when first needed."""
    concept, alternative, _ = TASKS[task]
    eval_set = toy_eval.make_eval_set(concept)
    records = []

    def record(row, images, before, seconds, steps, alt=alternative, control=None):
        s = toy_eval.score(judge, eval_set, images, before=before, alternative=alt)
        rec = {"task": task, "method": row, "concept": concept, "alternative": alternative, "control": control,
               **{k: (round(v, 4) if v is not None else None) for k, v in s.items()},
               "seconds": round(seconds, 1), "steps": steps}
        log(json.dumps(rec))
        records.append(rec)

    t0 = time.time()
    original = toy_eval.generate(model, eval_set)
    record("original", original, original, 0.0, 0)
    negative = toy_eval.generate(model, eval_set, negative_prompt=concept)
    record("negative_prompt", negative, original, 0.0, 0)
    tuned = {}  # row -> (erased UNet, seconds, steps), for the ControlNet rows
    for row, (method, options) in method_settings(task).items():
        config_cls, erase = METHODS[method]
        result = erase(model, config_cls(**options))
        images = toy_eval.generate(model, eval_set, unet=result.tuned_unet)
        record(row, images, original, result.seconds, result.steps)
        tuned[row] = (result.tuned_unet, result.seconds, result.steps)
    log(f"task {task} done in {time.time() - t0:.0f}s")
    if callable(controlnet):
        controlnet = controlnet()
    for kind in CONTROL_KINDS[task] if controlnet is not None else ():
        t1 = time.time()

        def controlled(**kwargs):
            return toy_control.generate_under_control(model, eval_set, controlnet, kind, **kwargs)

        base = controlled()
        record("original", base, base, 0.0, 0, control=kind)
        alone = controlled(prompt="", concept_only=True)
        seen = judge.predict(alone.concept)[eval_set.attribute]
        alone_rec = {"task": task, "method": "original_empty_prompt", "concept": concept, "alternative": alternative,
                     "control": kind, "erased_rate": round(sum(p == concept for p in seen) / len(seen), 4),
                     "preserved_acc": None, "divergence": None, "alt_hit_rate": None,
                     "paraphrase_erased_rate": None, "seconds": 0.0, "steps": 0}
        log(json.dumps(alone_rec))
        records.append(alone_rec)
        record("negative_prompt", controlled(negative_prompt=concept), base, 0.0, 0, control=kind)
        for row, (unet, seconds, steps) in tuned.items():
            record(row, controlled(unet=unet), base, seconds, steps, control=kind)
        log(f"task {task} under ControlNet ({kind}) done in {time.time() - t1:.0f}s")
    return records


CONTROL_NOTES = {"blob": "fixes position and size only", "outline": "the prompt's own shape's outline"}


def markdown(records: list[dict], header: str) -> str:
    cols = ["method", "erased_rate", "preserved_acc", "divergence", "alt_hit_rate", "paraphrase_erased_rate",
            "seconds", "steps"]
    lines = [header, ""]
    for task, control in dict.fromkeys((r["task"], r.get("control")) for r in records):
        rows = [r for r in records if r["task"] == task and r.get("control") == control]
        title = f"### Task: {task} (erase '{rows[0]['concept']}', alternative '{rows[0]['alternative']}')"
        if control:
            title += f" under ControlNet: {control} ({CONTROL_NOTES[control]})"
        lines += [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [("—" if r[c] is None else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--tasks", default="object,style")
    parser.add_argument("--xl", action="store_true", help="the XL toy world (SDXL architecture)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, judge = load_diffusers_model(XL_MODEL_DIR if args.xl else MODEL_DIR), load_judge(JUDGE_PATH)
    name, world, command = ("quality_xl", "the XL toy world (SDXL architecture)", "python bench/quality.py --xl") \
        if args.xl else ("quality", "the toy world", "python bench/quality.py")
    # the toy world's ControlNet is an SD1 one: the XL table has no rows under control
    controlnet = None if args.xl else functools.lru_cache(maxsize=1)(lambda: shipped_controlnet(print))
    started = time.time()
    records = [r for task in args.tasks.split(",") for r in run_task(model, judge, task, print, controlnet)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", {"records": records, "command": command,
                                      "device": f"cpu {platform.machine()}, {torch.get_num_threads()} threads",
                                      "seconds": round(time.time() - started, 1)})
    header = (f"Measured by `{command}` on {world} ({platform.machine()} CPU, "
              f"{torch.get_num_threads()} threads, {time.time() - started:.0f} s in all). Judge: the toy world's "
              "classifier; eval sampler DDIM 25 steps, CFG 1.5."
              + ("" if args.xl else " Rows \"under ControlNet\": the same prompts and seeds, each with its control "
                 "image, through the toy world's ControlNet (strength 1) on both guidance branches; divergence "
                 "there is against the original under the same control."))
    (out / f"{name}.md").write_text(markdown(records, header))
    print(markdown(records, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())

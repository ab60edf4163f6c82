"""Every method on every concept of the toy world, one command, one table: same prompts, seeds and judge.

    python bench/quality.py [--out DIR] [--concepts circle,red] [--rows dt,cg_alt] [--quick] [--xl]

Concepts: the toy world's 4 shapes, 4 colours and 3 fills, each erased on its own with every row's settings (the
defaults for its kind, `erasure_core/defaults.py`, chosen on the tuning concepts only). Writes DIR/quality.jsonl
record by record as it goes (a rerun skips what is there: delete it to start over), then DIR/quality.json and
DIR/quality.md: the held-out concepts' mean and worst per method and kind against the targets, the tuning
concepts apart, and every concept's own row. `--quick` is the CI subset: held-out concepts only, fewer steps, one
seed per prompt (tests/test_quality_quick.py asserts on it). With --xl: the same concepts, rows and settings on
the XL (SDXL-architecture) toy world, into DIR/quality_xl.*, without the ControlNet rows (the toy world's
ControlNet is an SD1 one).

A row is a method with its settings under a condition: how the evaluation images are drawn. Conditions are a
registry (CONDITIONS); rows that share an erasure train it once per concept. Besides the prompt alone and the
negative prompt, the rows "...@controlnet_blob" and "...@controlnet_outline" draw the same prompts and seeds, each
with its control image, through the toy world's ControlNet (strength 1, both guidance branches), for the original
and each erased UNet; their "before" and divergence are the original's under the same control, and they have no
paraphrases. (What the control alone draws, with the empty prompt, is `python -m erasure_core
toyworld-eval-controlnet`'s table.)
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure_core import defaults  # noqa: E402
from erasure_core.controlnet import erase_controlnet, load_controlnet  # noqa: E402
from erasure_core.jobs import write_json  # noqa: E402
from erasure_core.methods import METHODS  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import CONTROLNET_DIR, JUDGE_PATH, MODEL_DIR, XL_MODEL_DIR  # noqa: E402
from erasure_core.toyworld import control as toy_control  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402
from erasure_core.toyworld.splits import KINDS, TUNING, is_tuning, kind_of_attribute  # noqa: E402

CONCEPTS = [name for _, names in KINDS.values() for name in names]

# The alternative each concept is erased towards in the rows that take one. Chosen before any result of this bench
# was seen, and not changed after: a cycle through each kind, so every concept is erased once and is an alternative
# once (circle -> square and striped -> dotted are the pairs the first tables used).
ALTERNATIVES = {
    "circle": "square", "square": "triangle", "triangle": "cross", "cross": "circle",
    "red": "green", "green": "blue", "blue": "yellow", "yellow": "red",
    "striped": "dotted", "dotted": "solid", "solid": "striped",
}

# The targets on held-out concepts (scores of the erased model; "preserved" is the drop from the original's).
TARGETS = {"erased_rate": 0.05, "paraphrase_erased_rate": 0.05, "preserved_drop": 0.03, "kept_rate": 0.90,
           "alt_hit_rate": 0.80}
KEPT_TARGET_KINDS = ("style", "color")  # an object erasure has no kept target: what it becomes is counted


@dataclass(frozen=True)
class Row:
    """One line of the table per concept: a method (None: the model as it is) with its settings, drawn under a
    condition. `overrides` go over the defaults for the concept's kind."""

    name: str
    method: str | None = None
    alternative: bool = False
    overrides: tuple = ()
    kinds: tuple = tuple(KINDS)
    condition: str = "prompt"

    def erasure_key(self) -> tuple:
        return (self.method, self.alternative, self.overrides)


PLAIN_ROWS = [
    Row("original"),
    Row("negative_prompt", condition="negative_prompt"),
    Row("esd", "esd"),
    Row("ca", "ca", alternative=True),  # Concept Ablation needs an anchor: the same alternative as cg_alt
    Row("uce", "uce"),
    Row("uce_alt", "uce", alternative=True),
    Row("dt", "dt"),
    # The whole UNet at full rank, DT's former object default: ~14 GB of weights, gradients and AdamW states on
    # SD1.5, more than an 8 GB GPU; kept so the cost of the default that fits shows.
    Row("dt_full", "dt", overrides=(("group", "all"), ("rank", None), ("lr", 1e-4)), kinds=("object",)),
    Row("cg", "cg"),
    Row("cg_alt", "cg", alternative=True),
]
# control image -> the kinds of concept its rows are drawn for (toyworld/control.py). The blob fixes position and
# size only, so it forces neither a shape nor a fill; the outline draws the prompt's own shape, so on an object
# erasure it draws the erased shape itself for every concept prompt.
CONTROL_KINDS = {"blob": ("object",), "outline": ("object", "style")}
CONTROLLED_ROWS = ("original", "negative_prompt", "esd", "dt", "cg", "cg_alt")
# Rows "...@erased_controlnet_<control>": the same, with the erasure applied to the ControlNet too
# (controlnet.erase_controlnet), as the command line samples an erased model under control by default.
ERASED_CONTROLNET_ROWS = ("dt", "cg", "cg_alt")
ROWS = PLAIN_ROWS + [
    Row(f"{row.name}@{prefix}_{control}", row.method, row.alternative, row.overrides,
        tuple(k for k in row.kinds if k in kinds),
        f"{prefix}_{control}" + ("_negative" if row.condition == "negative_prompt" else ""))
    for prefix, names in (("controlnet", CONTROLLED_ROWS), ("erased_controlnet", ERASED_CONTROLNET_ROWS))
    for control, kinds in CONTROL_KINDS.items() for row in PLAIN_ROWS if row.name in names]


def draw_plain(model, eval_set, unet, concept, erasure):
    return toy_eval.generate(model, eval_set, unet=unet)


def draw_negative(model, eval_set, unet, concept, erasure):
    """The concept as the negative prompt at sampling time (the inference-time baseline)."""
    return toy_eval.generate(model, eval_set, unet=unet, negative_prompt=concept)


@functools.cache
def shipped_controlnet():
    """The toy world's ControlNet, loaded when the first ControlNet row needs it (its build logged)."""
    info = json.loads((CONTROLNET_DIR / "build_info.json").read_text())
    print(f"ControlNet: {CONTROLNET_DIR} ({info['command']}, trained {info['seconds']} s)")
    return load_controlnet(CONTROLNET_DIR)


def draw_controlled(control: str, negative: bool = False, erased_controlnet: bool = False) -> Callable:
    """A drawing function: the eval set under the ControlNet with `control` images (and the concept as the negative
    prompt; and the erasure applied to the ControlNet too)."""
    def draw(model, eval_set, unet, concept, erasure):
        kwargs = {"negative_prompt": concept} if negative else {}
        controlnet = erase_controlnet(shipped_controlnet(), erasure) if erased_controlnet else shipped_controlnet()
        return toy_control.generate_under_control(model, eval_set, controlnet, control, unet=unet, **kwargs)
    return draw


# condition -> (how to draw a model's evaluation images, the condition its "before" images are drawn under)
CONDITIONS: dict[str, tuple[Callable, str]] = {
    "prompt": (draw_plain, "prompt"),
    "negative_prompt": (draw_negative, "prompt"),
    **{f"controlnet_{c}": (draw_controlled(c), f"controlnet_{c}") for c in CONTROL_KINDS},
    **{f"controlnet_{c}_negative": (draw_controlled(c, True), f"controlnet_{c}") for c in CONTROL_KINDS},
    **{f"erased_controlnet_{c}": (draw_controlled(c, erased_controlnet=True), f"controlnet_{c}")
       for c in CONTROL_KINDS},
}

# The CI subset (tests/test_quality_quick.py, `--quick`): one held-out concept of each kind, one seed per prompt,
# the trained rows shorter. Every kind gets the edit that takes seconds (UCE with the alternative), the fill also
# UCE without one (its anchor: the prompt without the fill); the trained methods run on the shape only, to keep CI
# short (and DT does not erase a colour: it says so).
QUICK = dict(rows={"triangle": ["original", "uce_alt", "cg_alt", "dt"], "dotted": ["original", "uce_alt", "uce"],
                   "red": ["original", "uce_alt"]},
             overrides=(("steps", 150), ("batch_size", 8)), seeds_per_prompt=1)


def bench_plan(concepts: list[str], names: list[str] | None = None, xl: bool = False) -> dict[str, list[Row]]:
    """concept -> the rows to measure on it: `names` (default: every row) of the rows drawn for its kind; on the XL
    toy world no ControlNet row (its ControlNet is an SD1 one)."""
    plan = {}
    for concept in concepts:
        kind = kind_of_attribute(toy_eval.parse_concept(concept)[0])
        plan[concept] = [row for row in ROWS if (names is None or row.name in names) and kind in row.kinds
                         and not (xl and row.condition.startswith("controlnet"))]
    return plan


def quick_plan(xl: bool = False) -> dict[str, list[Row]]:
    """The CI subset's concepts, each with its own rows."""
    return {concept: bench_plan([concept], names, xl)[concept] for concept, names in QUICK["rows"].items()}


def row_options(row: Row, concept: str, extra: tuple = ()) -> dict:
    """The config options of a row for a concept: the defaults for its kind, the toy world's prompts, the row's own
    overrides, then `extra` (a sweep's or the quick run's)."""
    options = dict(defaults.options_for(row.method, [concept], toy=True), concepts=[concept], seed=0)
    if row.alternative:
        options["alternatives"] = [ALTERNATIVES[concept]]
    options.update(dict(row.overrides))
    options.update({k: v for k, v in dict(extra).items() if k in METHODS[row.method][0].__dataclass_fields__})
    return options


def shown_settings(options: dict) -> dict:
    """The settings worth printing (not the prompt lists)."""
    return {k: v for k, v in options.items() if k not in ("templates", "preserve_prompts", "concepts")}


@dataclass
class ConceptRun:
    """One concept's evaluation set, its original images per condition and the erasures trained so far. With
    `cache`, every drawn image set is kept there (torch files) and drawn again only when missing, so that a run
    can be scored again by another judge without training again."""

    concept: str
    eval_set: toy_eval.EvalSet
    cache: Path | None = None
    originals: dict = field(default_factory=dict)
    erasures: dict = field(default_factory=dict)

    def cached(self, name: str, make: Callable[[], dict]) -> dict:
        if self.cache is None:
            return make()
        path = self.cache / f"{self.concept}_{name}.pt"
        if not path.exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            torch.save(make(), path)
        return torch.load(path, weights_only=False)

    def alternative_ceiling(self, model, judge, alternative: str) -> float | None:
        """The original model's hit rate when asked for the alternative itself (toy_eval.alternative_images)."""
        drawn = self.cached(f"original_asked_{alternative}", lambda: {
            "images": toy_eval.alternative_images(model, self.eval_set, alternative)})["images"]
        return None if drawn is None else toy_eval.alternative_hit_rate(judge.predict(drawn), alternative)

    def original(self, model, condition: str):
        if condition not in self.originals:
            draw, _ = CONDITIONS[condition]
            self.originals[condition] = self.cached(f"original_{condition}", lambda: {
                "images": draw(model, self.eval_set, None, self.concept, None)})["images"]
        return self.originals[condition]


def measure(model, judge, run: ConceptRun, row: Row, extra: tuple = ()) -> dict:
    """Train (or reuse) the row's erasure, draw under its condition, and score against the original."""
    concept, kind = run.concept, kind_of_attribute(run.eval_set.attribute)
    draw, before_condition = CONDITIONS[row.condition]
    before = run.original(model, before_condition)
    options = row_options(row, concept, extra) if row.method is not None else {}

    def erase_and_draw() -> dict:
        unet, erasure, seconds, steps = None, None, 0.0, 0
        if row.method is not None:
            key = (row.erasure_key(), extra)
            if key not in run.erasures:
                config_cls, erase = METHODS[row.method]
                result = erase(model, config_cls(**options))
                run.erasures[key] = (result.tuned_unet, result.state_dict, result.seconds, result.steps)
            unet, erasure, seconds, steps = run.erasures[key]
        plain = row.method is None and row.condition == before_condition
        return {"images": before if plain else draw(model, run.eval_set, unet, concept, erasure), "seconds": seconds,
                "steps": steps}

    name = "_".join([row.name] + [f"{k}={v}" for k, v in extra]).replace("/", "-")
    drawn = run.cached(name, erase_and_draw)
    alternative = ALTERNATIVES[concept] if row.alternative else None
    scores = toy_eval.score(judge, run.eval_set, drawn["images"], before=before, alternative=alternative)
    original = toy_eval.score(judge, run.eval_set, before)
    scores["preserved_drop"] = original["preserved_acc"] - scores["preserved_acc"]
    scores["alt_ceiling"] = run.alternative_ceiling(model, judge, alternative) if alternative else None
    return {"concept": concept, "kind": kind, "split": "tuning" if is_tuning(concept) else "held_out",
            "row": row.name, "method": row.method, "condition": row.condition, "alternative": alternative,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
            "original_preserved_acc": round(original["preserved_acc"], 4),
            "seconds": round(drawn["seconds"], 1), "steps": drawn["steps"], "settings": shown_settings(options)}


def misses(record: dict) -> list[str]:
    """The targets a record misses (on any concept; the summary judges held-out ones)."""
    out = []
    for key, bound in TARGETS.items():
        value = record.get(key)
        if value is None or (key == "kept_rate" and record["kind"] not in KEPT_TARGET_KINDS):
            continue
        if (key in ("kept_rate", "alt_hit_rate") and value < bound) or \
                (key not in ("kept_rate", "alt_hit_rate") and value > bound):
            out.append(key)
    return out


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_bench(out: Path, plan: dict[str, list[Row]], extra: tuple = (), seeds_per_prompt: int = 2,
              records_name: str = "quality.jsonl", log=print, images: Path | None = None,
              model_dir: Path = MODEL_DIR) -> list[dict]:
    """Measure every (concept, row) of `plan` (bench_plan) not yet in out/records_name, appending each record as
    soon as it is done."""
    model, judge = load_diffusers_model(model_dir), load_judge(JUDGE_PATH)
    out.mkdir(parents=True, exist_ok=True)
    path = out / records_name
    records = load_records(path)
    for concept, rows in plan.items():
        # read again before each concept: another process may be measuring other concepts into the same file
        done = {(r["concept"], r["row"]) for r in load_records(path)}
        todo = [row for row in rows if (concept, row.name) not in done]
        if not todo:
            continue
        run = ConceptRun(concept, toy_eval.make_eval_set(concept, seeds_per_prompt=seeds_per_prompt), images)
        for row in todo:
            started = time.time()
            record = measure(model, judge, run, row, extra)
            record["wall_seconds"] = round(time.time() - started, 1)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            records.append(record)
            log(f"{concept:9s} {row.name:16s} erased {record['erased_rate']:.3f} para "
                f"{fmt(record['paraphrase_erased_rate'])} preserved {record['preserved_acc']:.3f} "
                f"(drop {record['preserved_drop']:+.3f}) kept {fmt(record['kept_rate'])} "
                f"alt {fmt(record['alt_hit_rate'])} (ceiling {fmt(record['alt_ceiling'])}) "
                f"div {fmt(record['divergence'])} {record['seconds']} s  misses: {', '.join(misses(record)) or '-'}")
    return records


# ---------------------------------------------------------------- tables

COLUMNS = [("erased", "erased_rate"), ("paraphrases", "paraphrase_erased_rate"), ("preserved drop", "preserved_drop"),
           ("kept", "kept_rate"), ("alt hit", "alt_hit_rate"), ("alt ceiling", "alt_ceiling"),
           ("divergence", "divergence")]
WORST = {"erased_rate": max, "paraphrase_erased_rate": max, "preserved_drop": max, "kept_rate": min,
         "alt_hit_rate": min, "alt_ceiling": min, "divergence": max}


def fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_rows(records: list[dict], split: str) -> list[dict]:
    """Per kind and row: the mean and the worst of each score over the split's concepts, and the targets missed."""
    out = []
    for kind in KINDS:
        for row in dict.fromkeys(r["row"] for r in records):
            group = [r for r in records if r["kind"] == kind and r["row"] == row and r["split"] == split]
            if not group:
                continue
            line = {"kind": kind, "row": row, "concepts": [r["concept"] for r in group],
                    "seconds": float(np.mean([r["seconds"] for r in group]))}
            for _, key in COLUMNS:
                values = [r[key] for r in group if r.get(key) is not None]
                line[f"{key}_mean"] = float(np.mean(values)) if values else None
                line[f"{key}_worst"] = WORST[key](values) if values else None
            line["misses"] = sorted({m for r in group for m in misses(r)}) if not row.startswith("original") else []
            out.append(line)
    return out


def summary_markdown(lines: list[dict]) -> list[str]:
    head = ["kind", "method"] + [f"{label} mean / worst" for label, _ in COLUMNS] + ["train s", "targets missed"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in lines:
        cells = [line["kind"], line["row"]]
        cells += [f"{fmt(line[f'{key}_mean'])} / {fmt(line[f'{key}_worst'])}" if line[f"{key}_mean"] is not None
                  else "—" for _, key in COLUMNS]
        cells += [f"{line['seconds']:.0f}", ", ".join(m.replace("_rate", "").replace("_", " ")
                                                        for m in line["misses"]) or "none"]
        md.append("| " + " | ".join(cells) + " |")
    return md


def becomes_text(record: dict) -> str:
    counts = record.get("becomes") or {}
    return " / ".join(str(counts.get(k, 0)) for k in ("same_shape", "other_shape", "texture", "empty"))


def concept_markdown(records: list[dict]) -> list[str]:
    head = ["concept", "split", "method", "alternative"] + [label for label, _ in COLUMNS] + \
           ["shape kept / other / texture / empty", "train s", "steps"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [r["concept"], r["split"].replace("_", "-"), r["row"], r["alternative"] or ""]
        cells += [fmt(r.get(key)) for _, key in COLUMNS] + [becomes_text(r), f"{r['seconds']:.1f}", str(r["steps"])]
        md.append("| " + " | ".join(cells) + " |")
    return md


def markdown(records: list[dict], header: str) -> str:
    order = {name: i for i, name in enumerate(CONCEPTS)}
    records = sorted(records, key=lambda r: (order[r["concept"]], [row.name for row in ROWS].index(r["row"])
                                             if r["row"] in [row.name for row in ROWS] else 99))
    tuning = ", ".join(n for names in TUNING.values() for n in names)
    parts = [header, "",
             f"### Held-out concepts: mean / worst per kind (every concept but the tuning ones: {tuning})", "",
             *summary_markdown(summary_rows(records, "held_out")), "",
             "### Tuning concepts (the settings were chosen on these)", "",
             *summary_markdown(summary_rows(records, "tuning")), "",
             "### Every concept", "",
             *concept_markdown(records), ""]
    return "\n".join(parts)


def header_text(command: str, records: list[dict], world: str = "the toy world") -> str:
    minutes = sum(r.get("wall_seconds", 0) for r in records) / 60
    return (f"Measured by `{command}` on {world} ({platform.machine()} CPU, {torch.get_num_threads()} torch "
            f"threads; {minutes:.0f} min of training, drawing and judging in all). Judge: the toy world's classifier; "
            f"eval sampler DDIM {toy_eval.EVAL_STEPS} steps, CFG {toy_eval.EVAL_GUIDANCE}. Targets on held-out "
            f"concepts: erased and paraphrases ≤ {TARGETS['erased_rate']}, preserved drop ≤ "
            f"{TARGETS['preserved_drop']}, kept attributes ≥ {TARGETS['kept_rate']} (fills and colours), "
            f"alternative hit ≥ {TARGETS['alt_hit_rate']}. Alt ceiling: the original's hit rate when the concept "
            "prompts ask for the alternative itself (same seeds). Shape kept / other / texture / empty: what the "
            "concept prompts' images show, as counts. Rows \"@controlnet_…\": the same prompts and seeds through the "
            "toy world's ControlNet, each with its control image (strength 1, both guidance branches); divergence and "
            "preserved drop there are against the original under the same control.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--concepts", help="comma-separated (default: every concept of the toy world)")
    parser.add_argument("--rows", help="comma-separated row names (default: every row)")
    parser.add_argument("--quick", action="store_true", help="the CI subset (held-out concepts, fewer steps)")
    parser.add_argument("--xl", action="store_true", help="the XL toy world (SDXL architecture); no ControlNet rows")
    parser.add_argument("--images", help="keep the drawn images in this folder, and reuse them when there (to score "
                        "a run again with another judge: delete the .jsonl, keep the folder)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    quick = args.quick
    if quick and not (args.concepts or args.rows):
        plan = quick_plan(args.xl)
    else:
        concepts = args.concepts.split(",") if args.concepts else list(QUICK["rows"]) if quick else CONCEPTS
        plan = bench_plan(concepts, args.rows.split(",") if args.rows else None, args.xl)
    stem = ("quality_quick" if quick else "quality") + ("_xl" if args.xl else "")
    run_bench(out, plan, QUICK["overrides"] if quick else (), QUICK["seeds_per_prompt"] if quick else 2,
              f"{stem}.jsonl", images=Path(args.images) if args.images else None,
              model_dir=XL_MODEL_DIR if args.xl else MODEL_DIR)
    # Every record in the file, also those another invocation (e.g. one on other concepts, at the same time) added.
    records = load_records(out / f"{stem}.jsonl")
    shown = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python bench/quality.py", *shown])  # as run, so a partial table says what it covers
    write_json(out / f"{stem}.json", {"records": records, "command": command,
                                      "device": f"cpu {platform.machine()}, {torch.get_num_threads()} threads",
                                      "targets": TARGETS, "alternatives": ALTERNATIVES,
                                      "summary_held_out": summary_rows(records, "held_out"),
                                      "summary_tuning": summary_rows(records, "tuning")})
    world = "the XL toy world (SDXL architecture)" if args.xl else "the toy world"
    text = markdown(records, header_text(command, records, world))
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

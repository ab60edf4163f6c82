"""One command, one table: every method on the toy world under every attack, with preserved accuracy beside it.

    python bench/robustness.py [--out DIR] [--concepts triangle] [--rows original,dt,...] [--threads 1]

For each concept (default: triangle, a held-out object; the robust option's settings were not chosen on it), each
of bench/quality.py's rows drawn from the prompt alone (original, negative prompt, and every method with its
defaults for the concept's kind) is erased with its bench/quality.py settings, and the robust rows with the same
settings and the robust option; then each is attacked by every shipped attack with its default budget on the same
images of the original model. Each attack's images are drawn on seeds the attack never saw and read by the toy
world's judge (ASR: the share read as the concept) and, to check the judge for users' own models, by the original
model as a diffusion classifier (its ASR and its agreement with the judge). Writes DIR/robustness.{md,json} and
docs/robustness.png (the strongest attack images of every row and attack).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import PLAIN_ROWS, Row, row_options  # noqa: E402

from erasure_core import figures  # noqa: E402
from erasure_core.attacks import ATTACKS  # noqa: E402
from erasure_core.attacks.common import concept_latents  # noqa: E402
from erasure_core.audit import attack_config, classifier_reader, run_audit, toy_audit_options, toy_reader  # noqa: E402
from erasure_core.diffusion_judge import DiffusionClassifier  # noqa: E402
from erasure_core.jobs import write_json  # noqa: E402
from erasure_core.methods import METHODS  # noqa: E402
from erasure_core.model import load_diffusers_model  # noqa: E402
from erasure_core.toyworld import JUDGE_PATH, MODEL_DIR  # noqa: E402
from erasure_core.toyworld import evaluate as toy_eval  # noqa: E402
from erasure_core.toyworld.judge import load_judge  # noqa: E402
from erasure_core.toyworld.splits import kind_of_attribute  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROBUST = {"dt_robust": "dt", "cg_robust": "cg"}  # robust rows: the base row's settings with the robust option


def method_rows(concept: str) -> list[tuple[str, Row]]:
    """(row name, bench/quality.py row) of the table for `concept`: quality's rows drawn from the prompt alone
    for the concept's kind (the original and the negative prompt first), then the robust rows."""
    kind = kind_of_attribute(toy_eval.parse_concept(concept)[0])
    rows = [(row.name, row) for row in PLAIN_ROWS if kind in row.kinds]
    by_name = dict(rows)
    return rows + [(robust, by_name[base]) for robust, base in ROBUST.items() if base in by_name]


def table_rows(concept: str, only: list[str] | None = None) -> list[tuple[str, str | None, dict]]:
    """(row, method, options) of the table; `only` keeps the named rows (an unknown name is refused before any
    work)."""
    rows = method_rows(concept)
    unknown = sorted(set(only or []) - {name for name, _ in rows})
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; the rows are {', '.join(n for n, _ in rows)}")
    out = []
    for name, row in rows:
        if only and name not in only:
            continue
        options = row_options(row, concept) if row.method is not None else {}
        if name in ROBUST:
            options["adversarial"] = True
        out.append((name, row.method, options))
    return out


def run_concept(model, judge, concept: str, log, only: list[str] | None = None) -> tuple[list[dict], list]:
    toy, neutral = toy_audit_options(concept)
    configs = {a: attack_config(a, concept, **{k: v for k, v in toy.items() if k in ATTACKS[a][0].__dataclass_fields__})
               for a in ATTACKS}
    first = next(iter(configs.values()))
    pool = concept_latents(model, first)  # the original model's images every attack learns from
    judge_reader = toy_reader(judge, concept)
    classifier = classifier_reader(DiffusionClassifier(model, concept, first.templates, neutral, seed=first.seed))
    eval_set = toy_eval.make_eval_set(concept)
    original_images = toy_eval.generate(model, eval_set, paraphrases=False)
    records, pictures = [], []
    for row, method, options in table_rows(concept, only):
        started = time.time()
        negative, erased, seconds, adversarial_seconds = "", model, 0.0, 0.0
        if method is not None:
            config_cls, erase = METHODS[method]
            result = erase(model, config_cls(**options))
            erased = model.with_unet(result.tuned_unet)
            seconds, adversarial_seconds = result.seconds, result.adversarial_seconds
        elif row == "negative_prompt":
            negative = concept
        images = (original_images if row == "original" else
                  toy_eval.generate(erased, eval_set, negative_prompt=negative, paraphrases=False))
        quality = toy_eval.score(judge, eval_set, images, before=original_images)
        record = {"method": row, "concept": concept, "erased_rate": quality["erased_rate"],
                  "preserved_acc": quality["preserved_acc"], "divergence": quality["divergence"],
                  "erase_seconds": round(seconds, 1), "robust_seconds": round(adversarial_seconds, 1)}
        for attack, config in configs.items():
            out = run_audit(model, erased, attack, config, judge_reader, negative_prompt=negative, pool=pool,
                            second_reader=classifier, log=lambda m: None)
            r = out.report
            record[attack] = {k: r[k] for k in ("asr", "second_asr", "agreement", "found", "budget", "images",
                                                "attack_seconds")}
            record[attack]["agree_count"] = int(round(r["agreement"] * r["images"]))
            pictures.append((f"{row}\n{attack} {r['asr']:.2f}", out.strongest))
        record["seconds"] = round(time.time() - started, 1)
        log(json.dumps(record))
        records.append(record)
    return records, pictures


def markdown(records: list[dict], header: str) -> str:
    attacks = list(ATTACKS)
    lines = [header, ""]
    for concept in dict.fromkeys(r["concept"] for r in records):
        rows = [r for r in records if r["concept"] == concept]
        lines += [f"### Erasing '{concept}'", "",
                  "| method | erased rate | preserved acc | " + " | ".join(f"ASR {a}" for a in attacks)
                  + " | erase s (robust part) |", "|" + "---|" * (4 + len(attacks))]
        for r in rows:
            cells = [r["method"], f"{r['erased_rate']:.3f}", f"{r['preserved_acc']:.3f}",
                     *(f"{r[a]['asr']:.3f}" for a in attacks),
                     f"{r['erase_seconds']:.0f} ({r['robust_seconds']:.0f})" if r["erase_seconds"] else "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "What each attack found (budget: " + "; ".join(f"{a} {rows[0][a]['budget']}" for a in attacks)
                  + "):", "", "| method | " + " | ".join(attacks) + " |", "|" + "---|" * (1 + len(attacks))]
        for r in rows:
            lines.append("| " + " | ".join([r["method"], *(r[a]["found"] for a in attacks)]) + " |")
        agree = sum(r[a]["agree_count"] for r in rows for a in attacks)
        total = sum(r[a]["images"] for r in rows for a in attacks)
        lines += ["", f"Diffusion classifier (the original model, no judge) against the toy judge on these "
                  f"{total} attack images: agreement {agree / total:.3f}. Its ASR per cell:", "",
                  "| method | " + " | ".join(attacks) + " |", "|" + "---|" * (1 + len(attacks))]
        for r in rows:
            lines.append("| " + " | ".join([r["method"], *(f"{r[a]['second_asr']:.3f}" for a in attacks)]) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--concepts", default="triangle", help="comma-separated toy-world concepts")
    parser.add_argument("--rows", help="comma-separated rows to run (default: all)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--picture", default=str(ROOT / "docs" / "robustness.png"))
    args = parser.parse_args(argv)
    only = args.rows.split(",") if args.rows else None
    concepts = args.concepts.split(",")
    for concept in concepts:
        toy_eval.parse_concept(concept)
        table_rows(concept, only)  # names checked before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, judge = load_diffusers_model(MODEL_DIR), load_judge(JUDGE_PATH)
    started = time.time()
    records, pictures = [], []
    for concept in concepts:
        concept_records, concept_pictures = run_concept(model, judge, concept, print, only)
        records += concept_records
        pictures += concept_pictures
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/robustness.py" + (f" --concepts {args.concepts}" if args.concepts != "triangle" else "") + (
        f" --rows {args.rows}" if args.rows else "") + (f" --threads {args.threads}" if args.threads else "")
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    write_json(out / "robustness.json", {"records": records, "command": command, "device": machine,
                                         "seconds": round(time.time() - started, 1)})
    header = (f"Measured by `{command}` on the toy world ({machine}, {time.time() - started:.0f} s in all). ASR: share "
              "of attack images on held-out seeds the toy world's judge reads as the concept; attack images drawn "
              "and quality measured with DDIM 25 steps, CFG 1.5.")
    (out / "robustness.md").write_text(markdown(records, header))
    figures.save_png(figures.labelled_rows(pictures), Path(args.picture))
    print(markdown(records, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())

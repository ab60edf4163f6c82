"""Command line: `python -m erasure_core {demo,erase,sample,audit,toyworld-eval,toyworld-train,toyworld-train-controlnet} ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import checks
from .errors import ErasureError, ErasureInputError


def _toy_judge():
    from .toyworld import JUDGE_PATH
    from .toyworld.judge import load_judge

    return load_judge(JUDGE_PATH)


DTYPES = {"auto": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _load_model(path: str | None, config: str | None, device: str, dtype: str = "auto"):
    import torch

    from .model import load_diffusers_model
    from .toyworld import MODEL_DIR, XL_MODEL_DIR

    model_path = Path(path) if path else MODEL_DIR
    is_toy = model_path.resolve() in (MODEL_DIR.resolve(), XL_MODEL_DIR.resolve())  # both are judged by the judge
    weights = getattr(torch, DTYPES[dtype]) if DTYPES[dtype] else None
    return load_diffusers_model(model_path, device=device, config=config, dtype=weights), is_toy


REPORT_ROWS = (("erased rate (concept still seen)", "erased_rate"), ("erased rate on paraphrases", "paraphrase_erased_rate"),
               ("preserved accuracy (without any)", "preserved_acc"), ("kept attributes", "kept_rate"),
               ("alternative hit rate", "alt_hit_rate"))


def print_report(report: dict) -> None:
    """The before/after table: one block per concept of the run."""
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    for concept, scores in (report.get("per_concept") or {report["concept"]: report}).items():
        print(f"\n{concept!r:36s} {'before':>8s} {'after':>8s}")
        for label, key in REPORT_ROWS:
            b, a = scores.get(f"{key}_before"), scores.get(f"{key}_after")
            if a is not None:
                print(f"{label:36s} {b if b is not None else float('nan'):8.3f} {a:8.3f}")
        if scores.get("divergence") is not None:
            print(f"{'divergence (mean |after-before|)':36s} {'':>8s} {scores['divergence']:8.4f}")
        if scores.get("becomes_after"):
            print(f"{'concept prompts now show':36s} " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                                  for k, v in scores["becomes_after"].items()))
    print(f"{'training':36s} {report['steps']} steps, {report['seconds']} s (whole job {report['total_seconds']} s)\n")


def cmd_erase(args) -> int:
    from .defaults import options_for
    from .jobs import run_erasure
    from .methods import METHODS

    control = _load_control(args)  # checked before any work
    model, is_toy = _load_model(args.model, args.config, args.device, args.dtype)
    config_cls = METHODS[args.method][0]
    # The defaults for the concepts' kind (on the toy world also its own prompts), then the flags given.
    options = options_for(args.method, args.concept, args.kind, toy=is_toy)
    options.update({k: v for k, v in vars(args).items() if v is not None and k in config_cls.__dataclass_fields__})
    if args.checkpointing is not None:
        options["checkpointing"] = {"auto": "auto", "on": True, "off": False}[args.checkpointing]
    if args.rank == 0:
        options["rank"] = None  # full weights of the group
    options["concepts"] = args.concept
    if args.alternative:
        options["alternatives"] = args.alternative
    config = config_cls(**options)
    if args.plan_only:
        from .memory import plan_memory

        config.validate()
        print(plan_memory(model, args.method, config).describe())
        return 0
    if args.save_merged:  # checked with everything else, before any work
        merged = Path(args.save_merged)
        need = sum(p.numel() * 4 for m in (model.unet, model.vae, model.text_encoder) for p in m.parameters())
        if merged.exists() and not merged.is_dir():
            raise ErasureInputError("save merged", f"{merged} is a file, not a folder", "choose a new folder name")
        checks.output_folder(merged.parent if not merged.exists() else merged, need, "save merged")
    out = run_erasure(model, args.method, config, args.out, judge=_toy_judge() if is_toy else None,
                      progress=_progress_printer(), log=lambda m: print(m, flush=True), control=control)
    print_report(out.report)
    if args.out:
        print(f"wrote {out.erasure_path}\nwrote {out.grid_path}\nwrote {out.report_path}")
        if out.control_grid_path:
            print(f"wrote {out.control_grid_path}")
    if args.save_merged:
        # A whole diffusers model with the erasure merged in: the form to distribute (a LoRA can be removed).
        from .erasure_file import apply_erasure

        merged = apply_erasure(model.unet, out.result.state_dict, metadata=out.result.metadata)
        folder = model.with_unet(merged).save_pretrained(Path(args.save_merged))
        print(f"wrote {folder} (merged model)")
    return 0


def _load_control(args):
    """A Control from --controlnet/--control-image/--control-scale, or None; both files or neither."""
    from .errors import ErasureInputError

    if not args.controlnet and not args.control_image:
        return None
    if not (args.controlnet and args.control_image):
        raise ErasureInputError("controlnet", "--controlnet and --control-image go together; got only one",
                                "give both, or neither")
    from .controlnet import Control, load_control_image, load_controlnet

    return Control(load_controlnet(args.controlnet, device=args.device), load_control_image(args.control_image),
                   args.control_scale, erase_controlnet=not args.keep_controlnet)


def cmd_sample(args) -> int:
    """Images of the prompts (one seed each) from a model, with an erasure file merged in or not, and with a
    ControlNet or not: a user checks their own erased model the way the toy world's tables do."""
    from . import figures
    from .erasure_file import apply_erasure, load_erasure
    from .sampling import sample_images

    from .checks import output_folder, whole_number

    whole_number("steps", args.steps, 1, 1000, "use e.g. 25")
    out = Path(args.out)
    output_folder(out.parent, field="out")  # before any work
    control = _load_control(args)
    erasure = load_erasure(args.erasure) if args.erasure else None
    model, is_toy = _load_model(args.model, args.config, args.device)
    if args.guidance is None:
        from .toyworld.evaluate import EVAL_GUIDANCE

        args.guidance = EVAL_GUIDANCE if is_toy else 7.5
    seeds = [args.seed + i for i in range(len(args.prompt))]
    kw = dict(steps=args.steps, guidance=args.guidance)
    if control:
        kw.update(control.sampling_kwargs())
    rows = [("original", sample_images(model, args.prompt, seeds, **kw))]
    if erasure:
        unet = apply_erasure(model.unet, erasure[0], metadata=erasure[1])
        if control:
            kw.update(control.for_erasure(erasure[0]).sampling_kwargs())
        rows.append(("erased", sample_images(model, args.prompt, seeds, unet=unet, **kw)))
    if is_toy:
        judge = _toy_judge()
        for label, images in rows:
            seen = judge.predict(images)
            for prompt, shape, color, style in zip(args.prompt, seen["shape"], seen["color"], seen["style"]):
                print(f"{label:9s} {prompt!r}: judge reads shape {shape}, colour {color}, fill {style}")
    path = figures.save_png(figures.labelled_rows(rows), out)
    print(f"wrote {path} (rows: {', '.join(label for label, _ in rows)}; columns: the prompts in order)")
    return 0


def _progress_printer():
    def progress(step, total, loss):
        if step == 1 or step == total or step % max(1, total // 10) == 0:
            print(f"  step {step}/{total} loss {loss:.4f}", flush=True)
    return progress


def cmd_demo(args) -> int:
    from .jobs import run_erasure
    from .methods.dt import DTConfig

    model, _ = _load_model(None, None, "cpu")
    config = DTConfig(**demo_dt_options())
    out = run_erasure(model, "dt", config, args.out, judge=_toy_judge(), progress=_progress_printer(),
                      log=lambda m: print(m, flush=True))
    print_report(out.report)
    print(f"wrote {out.erasure_path}\nwrote {out.grid_path}\nwrote {out.report_path}")
    return 0


def demo_dt_options(concept: str = "circle", steps: int | None = None) -> dict:
    """The demo's DT erasure on the toy world: the defaults for the concept's kind, seed 0."""
    from .defaults import options_for

    options = dict(concepts=[concept], **options_for("dt", [concept], toy=True), seed=0)
    if steps:
        options["steps"] = steps
    return options


def cmd_toy_eval(args) -> int:
    from . import figures
    from .jobs import write_json
    from .toyworld.evaluate import EVAL_GUIDANCE, EVAL_STEPS, generation_accuracy, sample_grid
    from .toyworld.judge import heldout_accuracy, negative_accuracy

    from .toyworld import XL_MODEL_DIR

    model, _ = _load_model(str(XL_MODEL_DIR) if args.xl else None, None, "cpu")
    judge = _toy_judge()
    judge_acc = heldout_accuracy(judge)
    negatives = negative_accuracy(judge)
    gen = generation_accuracy(model, judge, seeds_per_scene=args.seeds_per_scene)
    images, scenes = gen.pop("images"), gen.pop("scenes")
    del gen["prompts"]
    table = {"judge_acc": min(judge_acc.values()), "judge_acc_by_head": judge_acc, "judge_negatives": negatives,
             **gen, "sampler": f"DDIM {EVAL_STEPS} steps, CFG {EVAL_GUIDANCE}", "model": "xl" if args.xl else "sd1"}
    print(f"{'judge accuracy (held-out, worst head)':40s} {table['judge_acc']:.3f}  {judge_acc}")
    for key, value in negatives.items():
        print(f"{'judge: ' + key.replace('_', ' ') + ' (worst case)':40s} {value:.3f}")
    for key in ("gen_shape_acc", "gen_color_acc", "gen_style_acc"):
        print(f"{key:40s} {table[key]:.3f}")
    print(f"{'samples':40s} {table['samples']}")
    out = Path(args.out)
    write_json(out, table)
    rows, colours = sample_grid(images, scenes)
    figures.save_png(figures.labelled_rows(rows, column_labels=colours), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_toy_eval_controlnet(args) -> int:
    from . import figures
    from .controlnet import load_controlnet
    from .jobs import write_json
    from .toyworld import CONTROLNET_DIR
    from .toyworld.control import controlnet_accuracy

    model, _ = _load_model(None, None, "cpu")
    controlnet = load_controlnet(args.controlnet or CONTROLNET_DIR)
    started = time.time()
    table = controlnet_accuracy(model, controlnet, _toy_judge(), seeds_per_scene=args.seeds_per_scene)
    rows = table.pop("picture")
    table["seconds"] = round(time.time() - started, 1)
    for key, value in table.items():
        print(f"{key:28s} {value}")
    out = Path(args.out)
    write_json(out, table)
    figures.save_png(figures.labelled_rows(rows), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def cmd_toy_train(args) -> int:
    from .toyworld import ASSETS, XL_ASSETS

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # the build is deterministic for one machine and thread count
    log = lambda m: print(m, flush=True)  # noqa: E731
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    steps = {"diffusion_steps": args.steps} if args.steps else {}  # else the build's own default
    if args.judge_only:
        from .toyworld.build import build_judge

        info = build_judge(Path(args.out) if args.out else ASSETS, judge_steps=args.judge_steps, log=log)
    elif args.xl:
        from .toyworld.build_xl import build_xl

        info = build_xl(Path(args.out) if args.out else XL_ASSETS, **steps,
                        schedule_steps=args.schedule_steps, checkpoint_dir=checkpoints, log=log)
    else:
        from .toyworld.build import build

        info = build(Path(args.out) if args.out else ASSETS, vae_steps=args.vae_steps, **steps,
                     judge_steps=args.judge_steps, schedule_steps=args.schedule_steps, checkpoint_dir=checkpoints,
                     log=log)
    print(json.dumps(info, indent=2))
    return 0


def cmd_toy_train_controlnet(args) -> int:
    import torch

    from .toyworld import CONTROLNET_DIR
    from .toyworld.build_controlnet import build_controlnet

    if args.threads:
        torch.set_num_threads(args.threads)  # the build is deterministic for one machine and thread count
    model, _ = _load_model(None, None, "cpu")
    info = build_controlnet(model, Path(args.out) if args.out else CONTROLNET_DIR, steps=args.steps, batch=args.batch,
                            lr=args.lr, log=lambda m: print(m, flush=True),
                            checkpoint_dir=Path(args.checkpoints) if args.checkpoints else None,
                            schedule_steps=args.schedule_steps)
    print(json.dumps(info, indent=2))
    return 0


def _control_arguments(parser) -> None:
    parser.add_argument("--controlnet", help="a diffusers ControlNet folder (the toy world's: "
                        "erasure_core/toyworld/assets/controlnet)")
    parser.add_argument("--control-image", dest="control_image", help="the control image (PNG) for every prompt")
    parser.add_argument("--control-scale", dest="control_scale", type=float, default=1.0,
                        help="ControlNet strength (ComfyUI's 'strength')")
    parser.add_argument("--keep-controlnet", dest="keep_controlnet", action="store_true",
                        help="sample the erased model with the ControlNet as it is (default: the erasure is applied "
                        "to the ControlNet's copy of the UNet's layers too, so its own reading of the prompt does not "
                        "bring the concept back; README, 'Under ControlNet')")


def erased_unet_of(model, erasure: str | None, erased_model: str | None, config: str | None):
    """The UNet to attack: the original with an erasure file merged in, another model's UNet, or the original."""
    from .erasure_file import apply_erasure, load_erasure
    from .model import load_diffusers_model

    if erasure and erased_model:
        raise ErasureInputError("erasure", "both an erasure file and an erased model were given", "give one of them")
    if erasure:
        state_dict, metadata = load_erasure(erasure)
        return apply_erasure(model.unet, state_dict, metadata=metadata)
    if erased_model:
        other = load_diffusers_model(erased_model, device=model.device, config=config)
        if other.latent_shape != model.latent_shape:
            raise ErasureInputError("erased model", "its UNet does not match the original model's",
                                    "give the erased version of the same model")
        return other.unet
    return model.unet


def cmd_audit(args) -> int:
    from .audit import attack_config, classifier_reader, run_audit, toy_audit_options, toy_reader
    from .attacks import ATTACKS
    from .attacks.common import concept_latents
    from .diffusion_judge import DiffusionClassifier

    attacks = list(ATTACKS) if args.attack == "all" else [args.attack]
    model, is_toy = _load_model(args.model, args.config, args.device)
    toy, toy_neutral = toy_audit_options(args.concept) if is_toy else ({}, [])
    options = dict(toy, steps=args.steps, tokens=args.tokens, seed=args.seed,
                   templates=args.templates or toy.get("templates"))
    configs = {a: attack_config(a, args.concept, **{k: v for k, v in options.items() if
                                                    k in ATTACKS[a][0].__dataclass_fields__}) for a in attacks}
    folder = checks.output_folder(args.out) if args.out else None  # checked before any work
    unet = erased_unet_of(model, args.erasure, args.erased_model, args.config)
    first = next(iter(configs.values()))
    classifier = DiffusionClassifier(model, args.concept, first.templates, args.neutral or toy_neutral or [""],
                                     seed=first.seed)
    reader, second = classifier_reader(classifier), None
    if is_toy and args.judge != "classifier":
        reader, second = toy_reader(_toy_judge(), args.concept), reader
    print(f"\n{'attack':16s} {'budget':34s} {'ASR':>6s}  found")
    print(f"drawing the original model's images of {args.concept!r} ({len(first.templates)} prompts × "
          f"{first.images_per_template})", flush=True)
    pool = concept_latents(model, first)  # every attack learns from the same images (same prompts and seeds)
    for attack, config in configs.items():
        out = run_audit(model, model.with_unet(unet), attack, config, reader, args.images_per_template,
                        args.negative_prompt or "", pool=pool, out_dir=folder, second_reader=second,
                        progress=_progress_printer(), log=lambda m: print(m, flush=True))
        r = out.report
        extra = f"  (diffusion classifier {r['second_asr']:.3f}, agreement {r['agreement']:.3f})" if second else ""
        print(f"{attack:16s} {r['budget']:34s} {r['asr']:6.3f}  {r['found']}{extra}", flush=True)
        if folder is not None:
            print("wrote " + ", ".join(str(folder / f) for f in out.files.values()))
    print(f"judge: {reader.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m erasure_core", description="Erase concepts from a Stable "
                                     "Diffusion model's weights.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="DT erasure of 'circle' on the built-in toy model, with figures")
    demo.add_argument("--out", default="demo_out")
    demo.set_defaults(fn=cmd_demo)

    erase = sub.add_parser("erase", help="erase one or more concepts from a model")
    erase.add_argument("--method", choices=["dt", "cg", "esd", "ca", "uce"], required=True,
                       help="dt, cg, or a baseline: esd, ca (Concept Ablation), uce (closed-form edit)")
    erase.add_argument("--concept", action="append", required=True, help="concept to erase (repeat for several)")
    erase.add_argument("--alternative", action="append", help="what each concept turns into (repeatable)")
    erase.add_argument("--kind", choices=["object", "style", "color"],
                       help="what the concept is; picks the defaults (default: as the words tell, else object)")
    erase.add_argument("--anchor", choices=["empty", "without concept"],
                       help="cg, ca, uce without an alternative: what the concept's prompts become; 'without concept' "
                       "takes the concept's words out of each prompt (an attribute or style goes, the object stays), "
                       "'empty' sends them to the empty prompt (an object goes). Default: the kind's")
    erase.add_argument("--degeneration", choices=["scramble", "desaturate"],
                       help="DT: what the concept's images become (desaturate: for a colour)")
    erase.add_argument("--model", help="SD1.x or SDXL diffusers folder, or single-file .safetensors with --config "
                       "(default: the toy world; the XL toy world, where built: erasure_core/toyworld/assets/xl/model)")
    erase.add_argument("--config", help="local diffusers folder describing a single-file checkpoint")
    erase.add_argument("--out", default="erase_out")
    erase.add_argument("--steps", type=int)
    erase.add_argument("--lr", type=float)
    erase.add_argument("--group", help="cross_attn, cross_attn_kv, no_cross_attn or all")
    erase.add_argument("--rank", type=int, help="LoRA rank; 0 trains the full weights of the group (default: the method's: dt 8, cg and esd 0)")
    erase.add_argument("--grid", type=int, help="DT: scrambled grid size")
    erase.add_argument("--drift-weight", dest="drift_weight", type=float, help="CG: λ on the unconditional drift")
    erase.add_argument("--eta", type=float, help="ESD: negative-guidance strength")
    erase.add_argument("--robust", dest="adversarial", action="store_const", const=True,
                       help="dt, cg: also erase what a soft-prompt attack finds during training (slower; see the "
                       "README's robustness section)")
    erase.add_argument("--preserve-weight", dest="preserve_weight", type=float,
                       help="DT, CG, CA: weight of the preservation term")
    erase.add_argument("--batch-size", dest="batch_size", type=int)
    erase.add_argument("--seed", type=int)
    erase.add_argument("--preserve", dest="preserve_prompts", action="append", help="prompt to preserve (repeatable)")
    erase.add_argument("--template", dest="templates", action="append", help="concept prompt template with {}")
    erase.add_argument("--micro-batch", dest="micro_batch", type=int,
                       help="rows of the batch per UNet call (same update, less memory; default: the whole batch)")
    erase.add_argument("--split-rows", dest="split_rows", action="store_true", default=None,
                       help="back-propagate each UNet call's row groups (concept, unconditional, preserve) one at a "
                            "time: less memory for one more forward pass per step, the same update")
    erase.add_argument("--checkpointing", choices=["auto", "on", "off"],
                       help="gradient checkpointing (default auto: on for CUDA)")
    erase.add_argument("--memory", choices=["auto", "check", "off"],
                       help="when the memory plan does not fit: auto = change settings until it does (default), "
                            "check = refuse, naming the changes; off = no plan")
    erase.add_argument("--plan-only", dest="plan_only", action="store_true",
                       help="print the memory plan for these settings and exit without erasing")
    erase.add_argument("--device", default="cpu")
    erase.add_argument("--dtype", choices=list(DTYPES), default="auto",
                       help="how the frozen weights are kept: auto = fp16 on CUDA, fp32 on the CPU (the trained "
                            "weights always have fp32 masters)")
    erase.add_argument("--save-merged", dest="save_merged", metavar="DIR",
                       help="also write a diffusers model folder with the erasure merged into its UNet")
    _control_arguments(erase)
    erase.set_defaults(fn=cmd_erase)

    sample = sub.add_parser("sample", help="sample a model (with an erasure, with a ControlNet) and save a grid")
    sample.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    sample.add_argument("--model", help="diffusers folder or single-file .safetensors (default: the toy world)")
    sample.add_argument("--config", help="local diffusers folder describing a single-file checkpoint")
    sample.add_argument("--erasure", help="an erasure .safetensors file: adds a row sampled with it merged in")
    sample.add_argument("--seed", type=int, default=0, help="seed of the first prompt (the next get +1, +2, ...)")
    sample.add_argument("--steps", type=int, default=25)
    sample.add_argument("--guidance", type=float, help="CFG scale (default: 1.5 on the toy world, else 7.5)")
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--out", default="samples.png")
    _control_arguments(sample)
    sample.set_defaults(fn=cmd_sample)

    audit = sub.add_parser("audit", help="attack an erasure and report the attack success rate (ASR)")
    audit.add_argument("--concept", required=True, help="the erased concept")
    audit.add_argument("--erasure", help="erasure file (.safetensors) to merge into --model; without it and "
                       "--erased-model, the original model itself is attacked")
    audit.add_argument("--erased-model", dest="erased_model", help="an erased model (diffusers folder or .safetensors)")
    audit.add_argument("--attack", choices=["soft_prompt", "discrete_prompt", "concept_vector", "all"], default="all")
    audit.add_argument("--steps", type=int, help="the attack's optimisation steps (its budget)")
    audit.add_argument("--tokens", type=int, help="tokens the attack may use (soft prompt, discrete prompt)")
    audit.add_argument("--seed", type=int)
    audit.add_argument("--images-per-template", dest="images_per_template", type=int, default=2,
                       help="attack images per prompt, on seeds the attack never saw")
    audit.add_argument("--template", dest="templates", action="append", help="concept prompt template with {}")
    audit.add_argument("--neutral", action="append", help="diffusion classifier: a word in the concept's place for a "
                       "neutral prompt (repeatable; default: the concept left out)")
    audit.add_argument("--negative-prompt", dest="negative_prompt", help="sample the attack images with this "
                       "negative prompt (to audit the negative-prompt baseline)")
    audit.add_argument("--judge", choices=["auto", "classifier"], default="auto",
                       help="auto: the toy world's judge on the toy world, else the diffusion classifier")
    audit.add_argument("--model", help="the original model (default: the toy world)")
    audit.add_argument("--config", help="local diffusers folder describing a single-file checkpoint")
    audit.add_argument("--out", help="folder for the report, the strongest images and a soft prompt's embedding")
    audit.add_argument("--device", default="cpu")
    audit.set_defaults(fn=cmd_audit)

    ev = sub.add_parser("toyworld-eval", help="judge and generation accuracy of the toy world")
    ev.add_argument("--out", required=True, help="JSON file to write (a PNG of samples is written beside it)")
    ev.add_argument("--seeds-per-scene", type=int, default=4)
    ev.add_argument("--xl", action="store_true", help="the SDXL-architecture toy (assets/xl/model)")
    ev.set_defaults(fn=cmd_toy_eval)

    evc = sub.add_parser("toyworld-eval-controlnet", help="how well the toy world's ControlNet follows its control")
    evc.add_argument("--out", required=True, help="JSON file to write (a PNG of samples is written beside it)")
    evc.add_argument("--seeds-per-scene", type=int, default=2)
    evc.add_argument("--controlnet", help="a ControlNet folder (default: the shipped one)")
    evc.set_defaults(fn=cmd_toy_eval_controlnet)

    tr = sub.add_parser("toyworld-train", help="rebuild the toy world from scratch (deterministic for one machine "
                        "and thread count)")
    tr.add_argument("--out", help="folder (default: the shipped assets folder)")
    tr.add_argument("--steps", type=int, help="diffusion steps (default: what the shipped build ran: 7000, --xl 4000)")
    tr.add_argument("--vae-steps", type=int, default=600)
    tr.add_argument("--judge-steps", type=int, default=1200)
    tr.add_argument("--schedule-steps", type=int, help="learning-rate horizon if longer than --steps")
    tr.add_argument("--xl", action="store_true", help="the SDXL-architecture toy (its UNet and two text encoders, "
                    "on the SD1 toy's VAE; default folder assets/xl)")
    tr.add_argument("--threads", type=int, help="CPU threads (default: torch's); build_info.json records them")
    tr.add_argument("--checkpoints", help="folder for a diffusers checkpoint of the EMA weights every 1000 steps")
    tr.add_argument("--judge-only", dest="judge_only", action="store_true",
                    help="retrain only the judge, on the VAE already in the folder")
    tr.set_defaults(fn=cmd_toy_train)

    cn = sub.add_parser("toyworld-train-controlnet", help="rebuild the toy world's ControlNet (deterministic)")
    cn.add_argument("--out", help="folder (default: the shipped assets/controlnet folder)")
    cn.add_argument("--steps", type=int, default=4000)
    cn.add_argument("--batch", type=int, default=16)
    cn.add_argument("--lr", type=float, default=2e-4)
    cn.add_argument("--threads", type=int, default=1, help="torch threads (the result depends on the count)")
    cn.add_argument("--checkpoints", help="folder for a checkpoint every 100 steps")
    cn.add_argument("--schedule-steps", type=int, help="learning-rate horizon if longer than --steps")
    cn.set_defaults(fn=cmd_toy_train_controlnet)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ErasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: one line, and the traceback where it helps
        if os.environ.get("CONCEPT_ERASER_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}\n(run again with CONCEPT_ERASER_DEBUG=1 to see "
              "where it happened, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

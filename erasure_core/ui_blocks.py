"""The Concept Eraser UI: one Gradio Blocks builder for the webui tab and the standalone app.

The logic lives in plain functions and the `EraseRunner` class, testable without a browser;
`build_blocks` only lays out widgets and wires them to those. torch and the core's heavy
modules are imported inside the callbacks, so building the Blocks needs nothing but gradio
(the multi-version build check relies on that). Written for gradio 3.41.2 (A1111, reForge),
4.40.0 (Forge) and the current release: `gr.update(...)` only, no `gr.Box`, no `.style()`.
"""
from __future__ import annotations

import re
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from . import defaults
from .errors import ErasureCancelled, ErasureError, ErasureInputError, NonFiniteLoss

# The one source of defaults (erasure_core/defaults.py, torch-free like this module). The form starts from the
# object settings; choosing a kind of concept or a method sets that method's settings for the kind.
GROUPS = ("cross_attn", "cross_attn_kv", "no_cross_attn", "all")  # tests check it matches trainable.GROUPS
METHOD_DEFAULTS = {method: defaults.settings(method) for method in defaults.SETTINGS}
METHOD_HELP = (
    "**dt**: Degeneration-Tuning (the concept's prompt draws meaningless texture) · "
    "**cg**: classifier-guidance erasure, surgical, can turn the concept into an alternative · "
    "**esd**, **ca** (Concept Ablation), **uce** (a closed-form edit, seconds): baselines"
)
GALLERY_CONCEPT_PROMPTS = 4  # how many prompts with the concept the before/after gallery shows
GALLERY_OTHER_PROMPTS = 2  # and how many without it
DISPLAY_MIN_SIDE = 128  # small images (the toy world's are 32 px) are enlarged for display
SAMPLE_STEPS = 25  # EraseConfig.sample_steps (a test checks they match)


@dataclass
class Host:
    """What the UI needs from where it runs: the standalone app or the webui.

    `load_model()` returns the model to erase from (a `DiffusionModel`); `out_dir` receives one
    folder per run (report and before/after grid; the erasure too unless `save` puts it elsewhere);
    `save(result)` writes the erasure file where the host keeps them (the webui's Lora folder) and
    returns its path; `should_cancel()` adds a host's own interrupt (the webui's) to the Cancel
    button; `job()` is the context a run happens in (the webui's queue and job state) and yields a
    callable `(desc, done, total)` that shows progress the host's own way, or None.
    `image_size` is the size the original model draws its training images at by default, and the
    report's before/after images default to `report_size` px (None: the model's own size) and
    `report_steps` DDIM steps (few: fast). `log_hint` says where the full error is logged.
    """

    load_model: Callable[[], object]
    out_dir: Path
    toy: bool = False  # the toy world: use its own prompts, and its judge if `judge_path` is set
    judge_path: Path | None = None
    save: Callable[[object], Path] | None = None
    should_cancel: Callable[[], bool] = lambda: False
    title: str = "Concept Eraser"
    intro: str = ""
    log: Callable[[str], None] = print
    job: Callable[[], ContextManager] = nullcontext
    image_size: int | None = None
    report_size: int | None = None
    report_steps: int = 10
    log_hint: str = "the terminal this app was started from"


# ---------------------------------------------------------------- parsing the form


def split_list(text: str | None) -> list[str]:
    """'a, b\\nc' -> ['a', 'b', 'c']: comma- or newline-separated entries, blanks dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text or "") if part.strip()]


def split_lines(text: str | None) -> list[str]:
    """Prompts one per line (prompts may contain commas)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def whole_number(field_name: str, value, minimum: int, fix: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ErasureInputError(field_name, f"{value!r} is not a number", fix) from None
    if number != int(number) or number < minimum:
        raise ErasureInputError(field_name, f"must be a whole number ≥ {minimum}, got {value!r}", fix)
    return int(number)


def method_defaults(method: str, kind: str = "object") -> dict:
    if method not in METHOD_DEFAULTS:
        raise ErasureInputError("method", f"unknown method {method!r}", f"choose one of {', '.join(METHOD_DEFAULTS)}")
    return defaults.settings(method, kind if kind in defaults.KINDS else "object")


def toy_kind(concepts: list[str]) -> str:
    """The kind of the toy world's concepts; one kind per run (its defaults differ by kind)."""
    from .toyworld import evaluate as toy_eval

    kinds = {toy_eval.parse_concept(c)[0] for c in concepts}  # raises a clear error for unknown words
    if len(kinds) > 1:
        raise ErasureInputError("concept", f"the toy world erases concepts of one kind at a time, got {sorted(kinds)}",
                                "erase shapes, colours and styles in separate runs")
    return defaults.guess_kind(concepts)


def build_config(method, concepts_text, alternative_text, preserve_text, steps, lr, group, rank, seed, toy=False,
                 grid=None, sample_steps=None, batch_size=None, kind=None):
    """The method's config from the form's raw values; ErasureInputError names the field at fault.

    The defaults for the concept's kind (`kind`, or on the toy world the kind its words name) under the form's
    values. `grid` (DT only): empty or 0 keeps the default. gradio shows an unset Number as 0, hence 0 = default,
    as for the LoRA rank.
    `sample_steps`: DDIM steps of the original model's own images/trajectories (empty: the default).
    `batch_size`: rows per training step (empty or 0: the kind's default; lower needs less memory).
    """
    from .methods import METHODS

    method_defaults(method)
    concepts = split_list(concepts_text)
    if not concepts:
        raise ErasureInputError("concept", "is empty", "type the concept to erase, e.g. 'circle'")
    alternatives = split_list(alternative_text)
    if len(alternatives) == 1 and len(concepts) > 1:
        alternatives = alternatives * len(concepts)  # one alternative for every concept
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ErasureInputError("learning rate", f"{lr!r} is not a number", "use e.g. 1e-4") from None
    if toy:
        toy_kind(concepts)  # one kind per run on the toy world
    kind = kind if kind in defaults.KINDS else None
    options = defaults.options_for(method, concepts, kind, toy=toy)
    options.update(concepts=concepts, alternatives=alternatives, lr=lr, group=group,
                   steps=whole_number("steps", steps, 1, "use e.g. 300"),
                   rank=whole_number("LoRA rank", rank or 0, 0, "use 0 for full weights, or e.g. 4") or None,
                   seed=whole_number("seed", seed if seed not in (None, "") else 0, 0, "use e.g. 0"))
    preserve = split_lines(preserve_text)
    if preserve:
        options["preserve_prompts"] = preserve
    if sample_steps not in (None, ""):
        options["sample_steps"] = whole_number("sampling steps", sample_steps, 1, "use e.g. 25 (fewer is faster)")
    if batch_size not in (None, "", 0):
        options["batch_size"] = whole_number("batch size", batch_size, 1, "use e.g. 8 (lower needs less memory)")
    if method == "dt" and grid not in (None, "", 0):
        options["grid"] = whole_number("grid size", grid, 2, "use e.g. 4 for objects, finer for styles")
    config = METHODS[method][0](**{k: v for k, v in options.items() if k in METHODS[method][0].__dataclass_fields__})
    config.validate()
    return config


def gallery_prompts(config, toy: bool) -> tuple[list[str], int]:
    """Prompts for the before/after gallery (a spread of the concept's, then some without it).

    Returns the prompts and how many of them show the concept.
    """
    from .jobs import GENERIC_PRESERVE

    others = list(config.preserve_prompts) or GENERIC_PRESERVE
    step = max(1, len(others) // GALLERY_OTHER_PROMPTS)
    without = others[::step][:GALLERY_OTHER_PROMPTS]
    wanted = GALLERY_CONCEPT_PROMPTS + GALLERY_OTHER_PROMPTS - len(without)  # keep the gallery's rows full
    concept_prompts = [p for c in config.concepts for p in config.concept_prompts(c)]
    step = max(1, len(concept_prompts) // wanted)
    with_concept = concept_prompts[::step][:wanted]
    return with_concept + without, len(with_concept)


# ---------------------------------------------------------------- pictures


def loss_plot(losses: list[float], size: tuple[int, int] = (560, 260)):
    """The loss per step as a PIL image (portable across every gradio version, unlike plot widgets)."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 64, 16, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    # Centred, measured: gradio covers the image's top left with its label and the top right with its buttons.
    title = "training loss per step"
    draw.text(((w - draw.textlength(title)) / 2, 8), title, fill="black")
    draw.rectangle([left, top, w - right, h - bottom], outline="#888888")
    values = [v for v in losses if v == v]
    if not values:
        draw.text((left + 10, top + 10), "no steps yet", fill="#666666")
        return image
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = len(values)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (w - right - left) * (i / max(1, n - 1))
        y = top + (h - bottom - top) * (1 - (v - lo) / span)
        return x, y

    if n == 1:
        x, y = point(0, values[0])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#1f6feb")
    else:
        draw.line([point(i, v) for i, v in enumerate(values)], fill="#9ec1f7", width=1)
        k = max(1, n // 20)  # a moving average shows the trend through the noise
        smooth = [sum(values[max(0, i - k):i + 1]) / len(values[max(0, i - k):i + 1]) for i in range(n)]
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill="#1f6feb", width=2)
    draw.text((4, top - 4), f"{hi:.4g}", fill="black")
    draw.text((4, h - bottom - 8), f"{lo:.4g}", fill="black")
    draw.text((left, h - bottom + 6), "1", fill="black")
    draw.text((w - right - 40, h - bottom + 6), f"{n} steps", fill="black")
    return image


def to_display(images) -> list:
    """(N, 3, H, W) tensor in [0, 1] -> PIL images, small ones enlarged with sharp pixels."""
    from PIL import Image

    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    out = []
    for a in arr:
        img = Image.fromarray(a)
        scale = max(1, -(-DISPLAY_MIN_SIDE // min(img.size)))
        out.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img)
    return out


def gallery_items(before, after, prompts: list[str]) -> list[tuple]:
    """Before row then after row (same prompts, same seeds), each image captioned."""
    items = [(img, f"before · {p}") for img, p in zip(to_display(before), prompts)]
    items += [(img, f"after · {p}") for img, p in zip(to_display(after), prompts)]
    return items


def spread_index(count: int, wanted: int) -> list[int]:
    """`wanted` indices evenly spread over `count` items (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return [round(i * (count - 1) / (wanted - 1)) for i in range(wanted)] if wanted > 1 else [0]


def report_gallery(images) -> list[tuple]:
    """The gallery of a job's report images (erasure_core.jobs.ReportImages): a spread of the prompts
    with the concept, then of those without it, each before and after."""
    if images is None or images.concept_after is None:
        return []
    import torch

    o = spread_index(len(images.other_prompts), GALLERY_OTHER_PROMPTS)
    c = spread_index(len(images.concept_prompts), GALLERY_CONCEPT_PROMPTS + GALLERY_OTHER_PROMPTS - len(o))
    before = torch.cat([images.concept_before[c], images.other_before[o]])
    after = torch.cat([images.concept_after[c], images.other_after[o]])
    prompts = [images.concept_prompts[i] for i in c] + [images.other_prompts[i] for i in o]
    return gallery_items(before, after, prompts)


# ---------------------------------------------------------------- messages


def error_message(exc: BaseException, log_hint: str = "the terminal this app was started from") -> str:
    """The status text of a failed run: what went wrong and what to do (or where to look)."""
    if isinstance(exc, ErasureInputError):
        return f"Error in {exc.field}: {exc.problem}.\nFix: {exc.fix}."
    if isinstance(exc, ErasureCancelled):
        return f"Cancelled: {exc}"
    if isinstance(exc, NonFiniteLoss):
        return f"Training diverged: {exc}"
    if isinstance(exc, ErasureError):
        return f"Error: {exc}"
    text = f"Error: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, ImportError):
        from .dependencies import import_problem

        text += f"\n{import_problem() or ''}".rstrip()
    return f"{text}\nWhere to look: the full traceback is in {log_hint}."


def summary(report: dict, saved: Path | None) -> str:
    lines = [f"Done: erased {report['concept']!r} with {report['method']} in {report['steps']} steps "
             f"({report['seconds']} s training, {report['total_seconds']} s in all); final loss {report['final_loss']}."]
    lines += [f"Warning: {w}" for w in report.get("warnings", [])]
    labels = (("erased rate (judge still sees the concept)", "erased_rate"), ("preserved accuracy", "preserved_acc"),
              ("kept attributes", "kept_rate"), ("alternative hit rate", "alt_hit_rate"))
    per_concept = report.get("per_concept") or {report["concept"]: report}
    for concept, scores in per_concept.items():
        prefix = f"{concept}: " if len(per_concept) > 1 else ""
        for label, key in labels:
            if scores.get(f"{key}_after") is not None:
                before = scores.get(f"{key}_before")
                lines.append(f"{prefix}{label}: {'–' if before is None else f'{before:.3f}'} → "
                             f"{scores[f'{key}_after']:.3f}")
        if scores.get("divergence") is not None:
            lines.append(f"{prefix}divergence on prompts without the concept: {scores['divergence']:.4f}")
    plan = report.get("memory_plan")
    if plan:
        lines.append(f"Memory: {plan['total_bytes'] / 2**30:.2f} GiB planned on {plan['device']} ({plan['settings']})"
                     + "".join(f"; changed to fit: {c}" for c in plan["changed_to_fit"]))
    if saved is not None:
        lines.append(f"Saved: {saved}")
    return "\n".join(lines)


# ---------------------------------------------------------------- running an erasure


def run_folder(out_dir: Path, method: str, concepts: list[str]) -> Path:
    """A fresh folder per run, so runs never overwrite each other's files."""
    from .naming import path_inside, safe_stem

    base = path_inside(out_dir, f"{time.strftime('%Y%m%d-%H%M%S')}_{method}_{safe_stem('_'.join(concepts), 48)}",
                       "concept")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}_{n}")
    return folder


@dataclass
class RunOutcome:
    status: str
    loss_image: object = None
    gallery: list = field(default_factory=list)
    saved_path: str = ""
    job: object = None  # the core's JobOutput when the run finished

    def as_outputs(self) -> tuple:
        return self.status, self.loss_image, self.gallery, self.saved_path


def size_or_default(field_name: str, value, default: int | None) -> int | None:
    """A pixel size from the form (empty or 0: the default; None: the model's own)."""
    if value in (None, "", 0):
        return default
    return whole_number(field_name, value, 8, f"use e.g. {default}")


class HostRunner:
    """One run at a time for a host; Cancel sets an event the run checks each step (with the host's own)."""

    def __init__(self, host: Host):
        self.host = host
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> str:
        self.cancel_event.set()
        return "Cancelling after the current step…"

    def _should_cancel(self) -> bool:
        return self.cancel_event.is_set() or bool(self.host.should_cancel())


class EraseRunner(HostRunner):
    """One erasure at a time for a host; Cancel sets an event checked at every training step and at every
    step of the sampling before it (erasure_core.progress)."""

    def run(self, method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure=False,
            progress: Callable | None = None, grid=None, image_size=None, sample_steps=None, report_size=None,
            report_steps=None, batch_size=None, kind=None) -> RunOutcome:
        """Run an erasure from the form's values; every failure comes back as the status text."""
        if not self._lock.acquire(blocking=False):
            return RunOutcome("An erasure is already running: wait for it to finish, or press Cancel.")
        self.cancel_event.clear()
        try:
            sampling = dict(image_size=image_size, sample_steps=sample_steps, report_size=report_size,
                            report_steps=report_steps, batch_size=batch_size)
            return self._run(method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure,
                             progress if progress is not None else (lambda *a, **k: None), grid,  # Progress is falsy
                             kind=kind, **sampling)
        except ErasureError as exc:  # input errors, cancel, divergence: the message says what to do
            return RunOutcome(error_message(exc, self.host.log_hint))
        except Exception as exc:  # anything else: its text here, its traceback in the host's log
            self.host.log(f"Concept Eraser: the erasure failed\n{traceback.format_exc()}")
            return RunOutcome(error_message(exc, self.host.log_hint))
        finally:
            self._lock.release()

    def plan(self, method, concepts, alternative, preserve, steps, lr, group, rank, seed, grid=None,
             image_size=None, sample_steps=None, batch_size=None, kind=None) -> str:
        """The memory plan of the form's settings on the host's model, without running anything."""
        from .memory import plan_memory
        from .sampling import at_image_size

        try:
            config = build_config(method, concepts, alternative, preserve, steps, lr, group, rank, seed,
                                  toy=self.host.toy, grid=grid, sample_steps=sample_steps, batch_size=batch_size,
                                  kind=kind)
            model = at_image_size(self.host.load_model(), size_or_default("image size", image_size,
                                                                           self.host.image_size))
            return plan_memory(model, method, config).describe()
        except ErasureError as exc:
            return error_message(exc)

    def _run(self, method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure, progress, grid,
             image_size, sample_steps, report_size, report_steps, batch_size, kind=None):
        from .jobs import ReportSettings, run_erasure
        from .methods.common import prepare
        from .progress import listen
        from .sampling import at_image_size, latent_shape_for

        host = self.host
        config = build_config(method, concepts, alternative, preserve, steps, lr, group, rank, seed, toy=host.toy,
                              grid=grid, sample_steps=sample_steps, batch_size=batch_size, kind=kind)
        for warning in config.warnings():  # before any work, so the user can stop and change the settings
            progress((0, 1), desc=f"warning: {warning}")  # run_erasure writes it to the host's log
        image_size = size_or_default("image size", image_size, host.image_size)
        report = ReportSettings(steps=host.report_steps if report_steps in (None, "") else whole_number(
            "report steps", report_steps, 0, "use e.g. 10, or 0 for no before/after images"),
            image_size=size_or_default("report image size", report_size, host.report_size))
        prompts, with_concept = gallery_prompts(config, host.toy)
        report.concept_prompts, report.other_prompts = prompts[:with_concept], prompts[with_concept:]
        progress((0, 1), desc="waiting for the running job to finish")  # the webui's queue: a generation may run
        with host.job() as host_progress:
            def show(desc: str, done: int, total: int) -> None:
                if self._should_cancel():
                    raise ErasureCancelled(f"cancelled while {desc}; nothing was changed or written")
                progress((done, total), desc=f"{desc}: {done}/{total}")
                if host_progress is not None:
                    host_progress(desc, done, total)

            def on_step(step: int, total: int, loss: float) -> None:
                progress((step, total), desc=f"erasing: step {step}/{total}, loss {loss:.4f}")
                if host_progress is not None:
                    host_progress(f"erasing (loss {loss:.4f})", step, total)

            with listen(show):
                show("loading the model", 0, 1)
                model = at_image_size(host.load_model(), image_size)
                latent_shape_for(model, report.image_size, "report image size")  # a bad size fails now, not after
                config, plan = prepare(model, method, config)  # the memory plan: refused, or fitted, before any work
                if plan is not None:
                    progress(0.0, desc=plan.summary())
                judge = None
                if measure and host.toy and host.judge_path is not None:
                    from .toyworld.judge import load_judge

                    judge = load_judge(host.judge_path)
                job = run_erasure(model, method, config, run_folder(host.out_dir, method, config.concepts),
                                  judge=judge, progress=on_step, should_cancel=self._should_cancel, log=host.log,
                                  report_settings=report, save=host.save)
        return RunOutcome(summary(job.report, job.erasure_path), loss_plot(job.result.losses),
                          report_gallery(job.images), str(job.erasure_path), job)


def on_method_change(method: str, kind: str = "object"):
    """The chosen method's own defaults for the kind of concept: learning rate, parameter group, steps and LoRA rank
    (0: full weights; the grid field's 0 already means the kind's grid)."""
    import gradio as gr

    chosen = method_defaults(method, kind)
    lr = gr.update(value=chosen["lr"]) if "lr" in chosen else gr.update()  # UCE, an edit, has no learning rate
    return lr, gr.update(value=chosen["group"]), gr.update(value=chosen["steps"]), gr.update(value=chosen.get("rank") or 0)


def on_concepts_change(concepts: str, kind: str):
    """The kind the concepts' words name (the toy world's words, colour words), else the kind chosen so far."""
    import gradio as gr

    told = defaults.kind_from_words(split_list(concepts))
    # No update when the kind stays: its change event would reset the steps the user may have typed meanwhile.
    return gr.update(value=told) if told and told != kind else gr.update()


# ---------------------------------------------------------------- the Blocks


def build_blocks(host: Host, runner: EraseRunner | None = None):
    """The UI as a `gr.Blocks`; the webui tab and the standalone app both call this."""
    import gradio as gr

    runner = runner or EraseRunner(host)
    first = METHOD_DEFAULTS["dt"]
    with gr.Blocks(title=host.title, analytics_enabled=False) as blocks:
        if host.intro:
            gr.Markdown(host.intro)
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(list(METHOD_DEFAULTS), value="dt", label="Method", elem_id="ce_method")
                gr.Markdown(METHOD_HELP)
                concepts = gr.Textbox(label="Concept(s) to erase (comma or newline separated)", lines=2,
                                      placeholder="circle" if host.toy else "van gogh", elem_id="ce_concepts")
                kind = gr.Radio(list(defaults.KINDS), value="object", elem_id="ce_kind",
                                label="Kind of concept (picks the defaults: an object, a style or texture, a colour; "
                                      "without an alternative, cg, ca and uce send a style to its prompts without "
                                      "it, so the objects stay, and an object or colour to the empty prompt)")
                alternative = gr.Textbox(label="Alternative (what the concept becomes; cg, ca, uce; optional)",
                                         elem_id="ce_alternative")
                preserve = gr.Textbox(label="Prompts to preserve (one per line; empty = defaults)", lines=3,
                                      elem_id="ce_preserve")
                with gr.Row():
                    steps = gr.Number(value=first["steps"], precision=0, label="Steps", elem_id="ce_steps")
                    lr = gr.Number(value=first["lr"], label="Learning rate", elem_id="ce_lr")
                with gr.Row():
                    group = gr.Dropdown(list(GROUPS), value=first["group"], label="Parameter group",
                                        elem_id="ce_group")
                    rank = gr.Number(value=first.get("rank") or 0, precision=0, label="LoRA rank (0 = full weights)",
                                     elem_id="ce_rank")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="ce_seed")
                    batch_size = gr.Number(value=0, precision=0, elem_id="ce_batch_size",
                                           label="Batch size (0 = default; lower needs less memory)")
                grid = gr.Number(value=0, precision=0, elem_id="ce_grid",
                                 label="Grid (dt only; 0 = the kind's default: 4 for objects; for a style, finer "
                                       "than its texture)")
                with gr.Row():  # the original model's sampling: for training, and for the before/after report
                    image_size = gr.Number(value=host.image_size or 0, precision=0, elem_id="ce_image_size",
                                           label="Image size for training (px; 0 = the model's own, the best; "
                                                 "smaller is faster)")
                    sample_steps = gr.Number(value=SAMPLE_STEPS, precision=0, elem_id="ce_sample_steps",
                                             label="Sampling steps for training")
                with gr.Row():
                    report_size = gr.Number(value=host.report_size or 0, precision=0, elem_id="ce_report_size",
                                            label="Before/after images: size (px; 0 = the model's own)")
                    report_steps = gr.Number(value=host.report_steps, precision=0, elem_id="ce_report_steps",
                                             label="Before/after images: sampling steps (0 = none)")
                measure = gr.Checkbox(value=False, visible=host.toy and host.judge_path is not None,
                                      label="Score before/after with the toy world's judge (slower)",
                                      elem_id="ce_measure")
                with gr.Row():
                    run_button = gr.Button("Erase", variant="primary", elem_id="ce_run")
                    plan_button = gr.Button("Memory plan", elem_id="ce_plan")
                    cancel_button = gr.Button("Cancel", elem_id="ce_cancel")
            with gr.Column(scale=1):
                status = gr.Textbox(label="Status", lines=5, interactive=False, elem_id="ce_status")
                saved = gr.Textbox(label="Saved erasure file", interactive=False, elem_id="ce_saved")
                loss = gr.Image(label="Loss curve", type="pil", interactive=False, elem_id="ce_loss")
                gallery = gr.Gallery(label="Before / after (same seeds)",
                                     columns=GALLERY_CONCEPT_PROMPTS + GALLERY_OTHER_PROMPTS, elem_id="ce_gallery")

        def run(method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure, grid, image_size,
                sample_steps, report_size, report_steps, batch_size, kind, progress=gr.Progress(track_tqdm=False)):
            return runner.run(method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure,
                              progress=progress, grid=grid, image_size=image_size, sample_steps=sample_steps,
                              report_size=report_size, report_steps=report_steps,
                              batch_size=batch_size, kind=kind).as_outputs()

        def plan(method, concepts, alternative, preserve, steps, lr, group, rank, seed, grid, image_size, sample_steps,
                 batch_size, kind):
            return runner.plan(method, concepts, alternative, preserve, steps, lr, group, rank, seed, grid,
                               image_size, sample_steps, batch_size, kind)

        method.change(on_method_change, inputs=[method, kind], outputs=[lr, group, steps, rank])
        kind.change(on_method_change, inputs=[method, kind], outputs=[lr, group, steps, rank])
        concepts.change(on_concepts_change, inputs=[concepts, kind], outputs=kind)
        plan_button.click(plan, inputs=[method, concepts, alternative, preserve, steps, lr, group, rank, seed, grid,
                                        image_size, sample_steps, batch_size, kind], outputs=status)
        run_button.click(run, inputs=[method, concepts, alternative, preserve, steps, lr, group, rank, seed, measure, grid,
                                      image_size, sample_steps, report_size, report_steps, batch_size, kind],
                         outputs=[status, loss, gallery, saved])
        # Not queued: it must get through while the erasure itself occupies the queue.
        cancel_button.click(runner.cancel, inputs=None, outputs=None, queue=False)
        from .ui_audit import build_audit_section

        blocks.ce_audit_runner = build_audit_section(host, saved)
    blocks.ce_runner = runner  # for tests and hosts
    return blocks
